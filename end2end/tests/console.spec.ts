// The owner's console in a real browser: a client connected by the official
// TypeScript SDK shows up, its tool call is in Activity, revoking it from the console
// makes the SDK's next call get 401; an article edited in the console reads back
// through MCP; reading and revoking work with JavaScript off; a cross-site POST to a
// console action is refused; a confirmation another site opens is not shown, and the
// confirm buttons hold still while their window is away.
import { test as base, expect, type Page } from '@playwright/test';
import { createServer, type Server } from 'node:http';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
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

/** Signs in on the page it lands on, if it asks. */
async function signInIfAsked(page: Page) {
  const password = page.getByLabel('Password');
  if (await password.isVisible()) {
    await password.fill(OWNER_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
  }
}

/** Connects the SDK: the OAuth flow with consent in `page`. */
async function connectSdk(page: Page, gatehouse: Gatehouse, callback: Callback, scope?: string) {
  const mcpUrl = new URL(`${gatehouse.url}/mcp`);
  const provider = new InMemoryOAuthProvider(callback.url);
  const seen: Seen[] = [];
  const transport = () =>
    new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider, fetch: recordingFetch(seen) });
  const first = transport();
  await new Client({ name: 'console-e2e', version: '1.0.0' }).connect(first).catch(() => undefined);
  const url = provider.authorizationUrl!;
  if (scope) url.searchParams.set('scope', scope);
  await page.goto(url.toString());
  await signInIfAsked(page);
  await page.getByTestId('approve').click();
  await expect(page.getByText('Callback received')).toBeVisible();
  await first.finishAuth(new URL(page.url()).searchParams.get('code')!);
  const client = new Client({ name: 'console-e2e', version: '1.0.0' });
  await client.connect(transport());
  return { client, provider, seen };
}

async function hydrated(page: Page) {
  await expect(page.locator('body[data-hydrated="true"]')).toHaveCount(1);
}

test('the owner sees an SDK client and its tool call, revokes it, and the SDK gets 401', async ({
  page,
  gatehouse,
  callback,
}) => {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const { client, seen } = await connectSdk(page, gatehouse, callback);
  const listed = await client.callTool({ name: 'list_articles', arguments: {} });
  expect(listed.isError).toBeFalsy();

  // The home page links the console once signed in.
  await page.goto(`${gatehouse.url}/`);
  await page.getByTestId('open-console').click();
  await expect(page).toHaveURL(`${gatehouse.url}/console`);
  await hydrated(page);
  const row = page.getByTestId('app');
  await expect(row).toHaveCount(1);
  await expect(row.getByTestId('app-name')).toHaveText('MCP SDK end-to-end test');
  await expect(row.getByTestId('app-identity')).toHaveText('self-registered');
  await expect(row.getByTestId('app-scopes')).toHaveText('read:articles');
  await expect(row.getByTestId('app-calls')).toHaveText('1');

  // Activity: the tool call, with its tool and outcome.
  await page.getByRole('link', { name: 'Activity' }).click();
  await expect(page).toHaveURL(/\/console\/activity$/);
  const call = page.locator('[data-testid="event"][data-kind="tool_call"]');
  await expect(call).toHaveCount(1);
  await expect(call.getByTestId('event-detail')).toContainText('tool list_articles');
  await expect(call.getByTestId('event-detail')).toContainText('ok');
  await expect(page.locator('[data-testid="event"][data-kind="consent_approved"]')).toHaveCount(1);
  // Filtering by kind, client-side.
  await page.getByTestId('filter-kind').selectOption('tool_call');
  await page.getByRole('button', { name: 'Filter' }).click();
  await expect(page).toHaveURL(/kind=tool_call/);
  await expect(page.getByTestId('event')).toHaveCount(1);

  // Revoke, with a confirmation.
  await page.getByRole('link', { name: 'Connected apps' }).click();
  await page.getByTestId('revoke').click();
  await expect(page.getByTestId('confirm-revoke')).toBeVisible();
  await page.getByTestId('confirm').click();
  await expect(page.getByTestId('no-apps')).toBeVisible();
  await expect(page).toHaveURL(`${gatehouse.url}/console`);

  // The SDK's next call is refused: 401, and its refresh token is dead too (400).
  seen.length = 0;
  await expect(client.callTool({ name: 'list_articles', arguments: {} })).rejects.toThrow();
  expect(seen[0].status).toBe(401);
  expect(seen.map((s) => s.status)).toContain(400);
  expect(errors).toEqual([]);
});

test('an article edited in the console reads back through MCP', async ({ page, gatehouse, callback }) => {
  const { client } = await connectSdk(page, gatehouse, callback);

  await page.goto(`${gatehouse.url}/console/articles`);
  await hydrated(page);
  await page.getByTestId('new-article').click();
  await page.getByLabel('Title', { exact: true }).fill('Notes from the console');
  await page.getByTestId('article-body').fill('First words.');
  await page.getByTestId('save').click();
  await expect(page).toHaveURL(/\/console\/articles\/notes-from-the-console/);
  await expect(page.getByTestId('saved')).toBeVisible();

  await page.getByTestId('article-body').fill('Corrected by the owner.');
  // "Saved." still shows from the first save: wait for this one's answer, or the
  // publish below can run first and this save then meets a newer version.
  const saved = page.waitForResponse((r) => r.url().endsWith('/api/console/save_article'));
  await page.getByTestId('save').click();
  expect((await saved).ok()).toBe(true);
  await page.getByTestId('publish').click();
  await expect(page.getByTestId('article-status')).toHaveText('Published');

  const got = await client.callTool({ name: 'get_article', arguments: { slug: 'notes-from-the-console' } });
  expect(got.structuredContent).toMatchObject({
    title: 'Notes from the console',
    body: 'Corrected by the owner.',
    status: 'published',
  });

  // Deleting asks first.
  await page.getByTestId('delete').click();
  await page.getByTestId('confirm-delete').click();
  await expect(page).toHaveURL(`${gatehouse.url}/console/articles`);
  const gone = await client.callTool({ name: 'get_article', arguments: { slug: 'notes-from-the-console' } });
  expect(gone.isError).toBe(true);
});

test('with JavaScript off the console still lists and revokes', async ({ browser, gatehouse, callback, page }) => {
  const { client, seen } = await connectSdk(page, gatehouse, callback);
  const context = await browser.newContext({ javaScriptEnabled: false });
  const bare = await context.newPage();
  await bare.goto(`${gatehouse.url}/console`);
  await signInIfAsked(bare);
  await expect(bare).toHaveURL(`${gatehouse.url}/console`);
  await expect(bare.getByTestId('app-name')).toHaveText('MCP SDK end-to-end test');
  await bare.getByTestId('revoke').click();
  await bare.getByTestId('confirm').click();
  await expect(bare).toHaveURL(`${gatehouse.url}/console`);
  await expect(bare.getByTestId('no-apps')).toBeVisible();
  seen.length = 0;
  await expect(client.callTool({ name: 'list_articles', arguments: {} })).rejects.toThrow();
  expect(seen[0].status).toBe(401);
  await context.close();
});

test('a cross-site POST to a console action is refused', async ({ page, gatehouse, callback }) => {
  const { client } = await connectSdk(page, gatehouse, callback);
  await page.goto(`${gatehouse.url}/console`);
  const grant = await page.getByTestId('app').getAttribute('data-grant');
  // The strongest attacker: it even knows the session's CSRF token.
  await page.goto(`${gatehouse.url}/console?revoke=${grant}`);
  const csrf = await page.locator('input[name="csrf"]').first().getAttribute('value');

  // Another origin on the same host: the browser sends the Lax session cookie along
  // (cookies ignore ports), so only the origin check stands in the way.
  const attacker: Server = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<!doctype html><form id="f" method="post" action="${gatehouse.url}/api/console/revoke_grant">
      <input name="csrf" value="${csrf}"><input name="grant" value="${grant}"></form>
      <script>document.getElementById('f').submit()</script>`);
  });
  await new Promise<void>((ok) => attacker.listen(0, '127.0.0.1', ok));
  const address = attacker.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  try {
    const refused = page.waitForResponse((r) => r.url().endsWith('/api/console/revoke_grant'));
    await page.goto(`http://127.0.0.1:${port}/`);
    expect((await refused).status()).toBe(403);
    await expect(page.getByTestId('error-title')).toHaveText('Request refused');
  } finally {
    await new Promise<void>((ok) => attacker.close(() => ok()));
  }
  // Nothing was revoked: the app is listed and the client still works.
  await page.goto(`${gatehouse.url}/console`);
  await expect(page.getByTestId('app')).toHaveCount(1);
  const listed = await client.callTool({ name: 'list_articles', arguments: {} });
  expect(listed.isError).toBeFalsy();
});

// Double-clickjacking: another site could open a confirmation under the person's
// double-click, for its second click to land on the button. Such a navigation gets
// the page without the confirmation; and the button holds still while its window is
// away, and for a moment after it is back.
test('a confirmation opened from another site is not shown, and its button holds while away', async ({
  page,
  gatehouse,
  callback,
}) => {
  const { client } = await connectSdk(page, gatehouse, callback);
  await page.goto(`${gatehouse.url}/console`);
  const grant = await page.getByTestId('app').getAttribute('data-grant');
  const confirmUrl = `${gatehouse.url}/console?revoke=${grant}`;

  const attacker: Server = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<!doctype html><a id="go" href="${confirmUrl}">go</a>`);
  });
  await new Promise<void>((ok) => attacker.listen(0, '127.0.0.1', ok));
  const address = attacker.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  try {
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.locator('#go').click();
    await expect(page).toHaveURL(`${gatehouse.url}/console`);
    await expect(page.getByTestId('app')).toHaveCount(1);
    await expect(page.getByTestId('confirm-revoke')).toHaveCount(0);
  } finally {
    await new Promise<void>((ok) => attacker.close(() => ok()));
  }

  // Typed (or from the console's own link) it opens.
  await page.goto(confirmUrl);
  await hydrated(page);
  const confirm = page.getByTestId('confirm');
  await expect(confirm).toBeVisible();
  // Every revocation the page sends: a held click must send none, even a slow one.
  const revocations: string[] = [];
  page.on('request', (request) => {
    if (request.url().includes('/api/console/revoke')) revocations.push(request.url());
  });
  await expect(page.locator('html')).not.toHaveClass(/held/);
  await page.waitForTimeout(900);
  await confirm.scrollIntoViewIfNeeded();
  const box = (await confirm.boundingBox())!;
  const [x, y] = [box.x + box.width / 2, box.y + box.height / 2];
  await page.evaluate(() => window.dispatchEvent(new Event('blur')));
  await expect(page.locator('html')).toHaveClass(/held/);
  await page.mouse.click(x, y);
  await confirm.focus();
  await page.keyboard.press('Enter');
  await page.evaluate(() => window.dispatchEvent(new Event('focus')));
  await page.mouse.click(x, y);
  await page.waitForTimeout(300);
  await expect(page.getByTestId('confirm-revoke')).toBeVisible();
  expect(revocations).toHaveLength(0);
  const listed = await client.callTool({ name: 'list_articles', arguments: {} });
  expect(listed.isError).toBeFalsy();
  await expect(page.locator('html')).not.toHaveClass(/held/);
  await page.mouse.click(x, y);
  await expect(page.getByTestId('no-apps')).toBeVisible();
  expect(revocations).toHaveLength(1);
});
