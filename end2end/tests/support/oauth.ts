// Helpers for driving the OAuth flow the way a client application does: a local
// callback server, PKCE, registration and token requests over plain HTTP.
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { Page } from '@playwright/test';
import type { Gatehouse } from './server';

export const OWNER_PASSWORD = 'a long and proper owner password';

/** Completes first-run setup with the link the server logged. */
export async function setOwnerPassword(gatehouse: Gatehouse, password = OWNER_PASSWORD): Promise<void> {
  const link = await setupLink(gatehouse);
  const token = new URL(link).searchParams.get('token') ?? '';
  const response = await fetch(`${gatehouse.url}/setup`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token, password, confirm: password }),
    redirect: 'manual',
  });
  if (response.status !== 303) throw new Error(`setup failed: ${response.status} ${await response.text()}`);
}

/**
 * The one-time setup URL from the server's log. The server logs it before it
 * serves, but Node may hand us the answer to the health check before the log
 * line, so this waits for it a little.
 */
export async function setupLink(gatehouse: Gatehouse): Promise<string> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const match = gatehouse.output().match(/(http:\/\/\S+\/setup\?token=[A-Za-z0-9_-]+)/);
    if (match) return match[1];
    if (Date.now() > deadline) throw new Error(`no setup link in the log:\n${gatehouse.output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface Callback {
  url: string;
  close(): Promise<void>;
}

/** A client's redirect target: answers every GET with a small page. */
export async function startCallbackServer(): Promise<Callback> {
  const server: Server = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>callback</title><p>Callback received</p>');
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}/callback`,
    close: () => new Promise((ok) => server.close(() => ok())),
  };
}

export function pkce(): { verifier: string; challenge: string } {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}

export async function registerClient(gatehouse: Gatehouse, redirectUri: string, name: string): Promise<string> {
  const response = await fetch(`${gatehouse.url}/oauth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      client_name: name,
      redirect_uris: [redirectUri],
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    }),
  });
  if (response.status !== 201) throw new Error(`registration failed: ${response.status}`);
  return (await response.json()).client_id;
}

export function authorizeUrl(
  gatehouse: Gatehouse,
  params: { clientId: string; redirectUri: string; challenge: string; state: string; scope?: string },
): string {
  const query = new URLSearchParams({
    client_id: params.clientId,
    redirect_uri: params.redirectUri,
    response_type: 'code',
    code_challenge: params.challenge,
    code_challenge_method: 'S256',
    scope: params.scope ?? 'read:articles write:articles',
    state: params.state,
    resource: `${gatehouse.url}/mcp`,
  });
  return `${gatehouse.url}/oauth/authorize?${query}`;
}

export async function tokenRequest(
  gatehouse: Gatehouse,
  form: Record<string, string>,
): Promise<{ status: number; body: any; headers: Headers }> {
  const response = await fetch(`${gatehouse.url}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form),
  });
  return { status: response.status, body: await response.json(), headers: response.headers };
}

/**
 * What a person does with an authorization URL: open it, sign in if asked, approve.
 * The browser then follows the redirect to the client's callback.
 */
export async function approve(page: Page, url: string): Promise<void> {
  await page.goto(url);
  const password = page.getByLabel('Password');
  if (await password.isVisible()) {
    await password.fill(OWNER_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
  }
  await page.getByTestId('approve').click();
}
