import { test as base, expect, type Page } from '@playwright/test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { UnauthorizedError, auth } from '@modelcontextprotocol/sdk/client/auth.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { startGatehouse, type Gatehouse } from './support/server';
import { OWNER_PASSWORD, setOwnerPassword, startCallbackServer, type Callback } from './support/oauth';
import { InMemoryOAuthProvider, recordingFetch, type Seen } from './support/mcpClient';

const test = base.extend<{ gatehouse: Gatehouse; callback: Callback }>({
  gatehouse: async ({}, use) => {
    const server = await startGatehouse();
    await setOwnerPassword(server);
    await use(server);
    await server.stop();
  },
  callback: async ({}, use) => {
    const callback = await startCallbackServer();
    await use(callback);
    await callback.close();
  },
});

/** Follows the SDK's authorization URL in the browser, approves, returns the code. */
async function consent(page: Page, authorizationUrl: URL | undefined, callback: Callback): Promise<string> {
  return (await consentParams(page, authorizationUrl, callback)).get('code')!;
}

/** The same, returning the whole callback query (`code`, `state`, `iss`). */
async function consentParams(
  page: Page,
  authorizationUrl: URL | undefined,
  callback: Callback,
): Promise<URLSearchParams> {
  expect(authorizationUrl, 'the SDK asked for authorization').toBeDefined();
  await page.goto(authorizationUrl!.toString());
  const password = page.getByLabel('Password');
  if (await password.isVisible()) {
    await password.fill(OWNER_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
  }
  await page.getByTestId('approve').click();
  await expect(page.getByText('Callback received')).toBeVisible();
  const landed = new URL(page.url());
  expect(landed.origin + landed.pathname).toBe(callback.url);
  return landed.searchParams;
}

test('the official TypeScript SDK signs in, reads, steps up to write, and writes', async ({
  page,
  gatehouse,
  callback,
}) => {
  const mcpUrl = new URL(`${gatehouse.url}/mcp`);
  const provider = new InMemoryOAuthProvider(callback.url);
  const seen: Seen[] = [];
  const transport = () =>
    new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider, fetch: recordingFetch(seen) });

  // 1. The real OAuth flow: 401, discovery, registration, consent in the browser.
  const first = transport();
  await expect(new Client({ name: 'e2e', version: '1.0.0' }).connect(first)).rejects.toThrow(UnauthorizedError);
  expect(seen.map((s) => s.status)).toContain(401);
  expect(provider.authorizationUrl!.searchParams.get('scope')).toBe('read:articles');
  expect(provider.authorizationUrl!.searchParams.get('resource')).toBe(mcpUrl.toString());
  await first.finishAuth(await consent(page, provider.authorizationUrl, callback));
  expect(provider.tokens()?.scope).toBe('read:articles');

  // 2. initialize, tools/list, list_articles.
  const client = new Client({ name: 'e2e', version: '1.0.0' });
  const connected = transport();
  await client.connect(connected);
  const { tools } = await client.listTools();
  expect(tools.map((t) => t.name)).toEqual([
    'list_articles',
    'get_article',
    'search_articles',
    'create_article',
    'update_article',
    'publish_article',
    'delete_article',
  ]);
  const listed = await client.callTool({ name: 'list_articles', arguments: {} });
  expect(listed.isError).toBeFalsy();
  expect(listed.structuredContent).toEqual({ articles: [] });

  // 3. A write under the read-only grant: 403 insufficient_scope naming the scopes needed.
  seen.length = 0;
  const article = { title: 'Written through the SDK', body: 'Stepped up to write:articles.' };
  const refused = await client.callTool({ name: 'create_article', arguments: article }).catch((e) => e);
  // SDK 1.x tries a refresh first, which by RFC 6749 §6 cannot widen scope, and then
  // gives up (modelcontextprotocol/typescript-sdk#2255); the application steps up itself.
  expect(refused).toBeInstanceOf(StreamableHTTPError);
  expect((refused as StreamableHTTPError).code).toBe(403);
  const challenge = seen.find((s) => s.status === 403)?.wwwAuthenticate ?? '';
  expect(challenge).toContain('error="insufficient_scope"');
  const needed = /scope="([^"]+)"/.exec(challenge)?.[1];
  expect(needed).toBe('read:articles write:articles');
  const metadata = /resource_metadata="([^"]+)"/.exec(challenge)?.[1];
  expect(metadata).toBe(`${gatehouse.url}/.well-known/oauth-protected-resource/mcp`);

  // 4. Step up with the SDK's own auth(): a new authorization for the wider scope,
  // which the owner (still signed in) approves.
  provider.forgetRefreshToken();
  provider.authorizationUrl = undefined;
  const started = await auth(provider, { serverUrl: mcpUrl, scope: needed, resourceMetadataUrl: new URL(metadata!) });
  expect(started).toBe('REDIRECT');
  expect(provider.authorizationUrl!.searchParams.get('scope')).toBe('read:articles write:articles');
  await connected.finishAuth(await consent(page, provider.authorizationUrl, callback));
  expect(provider.tokens()?.scope).toBe('read:articles write:articles');

  // 5. create_article, then get_article returns it.
  const created = await client.callTool({ name: 'create_article', arguments: article });
  expect(created.isError).toBeFalsy();
  const slug = (created.structuredContent as { slug: string }).slug;
  expect(slug).toBe('written-through-the-sdk');
  const got = await client.callTool({ name: 'get_article', arguments: { slug } });
  expect(got.structuredContent).toMatchObject({ slug, title: article.title, body: article.body, status: 'draft' });
  await client.close();
});

test('the v2 TypeScript client (SEP-2350) steps up on 403 insufficient_scope by itself', async ({
  page,
  gatehouse,
  callback,
}) => {
  const v2 = await import('@modelcontextprotocol/client');
  const mcpUrl = new URL(`${gatehouse.url}/mcp`);
  const provider = new InMemoryOAuthProvider(callback.url);
  const seen: Seen[] = [];
  const transport = () =>
    new v2.StreamableHTTPClientTransport(mcpUrl, { authProvider: provider as any, fetch: recordingFetch(seen) });

  const first = transport();
  await expect(new v2.Client({ name: 'e2e-v2', version: '1.0.0' }).connect(first)).rejects.toThrow(v2.UnauthorizedError);
  expect(provider.authorizationUrl!.searchParams.get('scope')).toBe('read:articles');
  // v2 checks the authorization response's `iss` (RFC 9207) before redeeming the code.
  await first.finishAuth(await consentParams(page, provider.authorizationUrl, callback));

  const client = new v2.Client({ name: 'e2e-v2', version: '1.0.0' });
  const connected = transport();
  await client.connect(connected);
  const listed = await client.callTool({ name: 'list_articles', arguments: {} });
  expect(listed.isError).toBeFalsy();

  // The write is refused with 403; the client goes straight to a new authorization
  // for the union of its scopes, without a refresh that could not widen them.
  provider.authorizationUrl = undefined;
  seen.length = 0;
  const article = { title: 'Stepped up by the SDK', body: 'No application code for this.' };
  await expect(client.callTool({ name: 'create_article', arguments: article })).rejects.toThrow();
  expect(seen.map((s) => s.status)).toContain(403);
  expect(provider.authorizationUrl!.searchParams.get('scope')).toBe('read:articles write:articles');
  await connected.finishAuth(await consentParams(page, provider.authorizationUrl, callback));

  const created = await client.callTool({ name: 'create_article', arguments: article });
  expect(created.isError).toBeFalsy();
  expect((created.structuredContent as { slug: string }).slug).toBe('stepped-up-by-the-sdk');
  await client.close();
});
