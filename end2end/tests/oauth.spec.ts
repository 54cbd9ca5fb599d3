import { test as base, expect, type Page } from '@playwright/test';
import { startGatehouse, type Gatehouse } from './support/server';
import {
  OWNER_PASSWORD,
  authorizeUrl,
  pkce,
  registerClient,
  setOwnerPassword,
  setupLink,
  startCallbackServer,
  tokenRequest,
  type Callback,
} from './support/oauth';

// Each test gets its own server (fresh store, first run) and callback server.
const test = base.extend<{ gatehouse: Gatehouse; callback: Callback }>({
  gatehouse: async ({}, use) => {
    const server = await startGatehouse(['--refresh-grace', '2s']);
    await use(server);
    await server.stop();
  },
  callback: async ({}, use) => {
    const callback = await startCallbackServer();
    await use(callback);
    await callback.close();
  },
});

async function signIn(page: Page) {
  await page.getByLabel('Password').fill(OWNER_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

/** Opens an authorization request, signs in, and returns at the consent page. */
async function reachConsent(page: Page, gatehouse: Gatehouse, callback: Callback, name = 'Playwright client') {
  const clientId = await registerClient(gatehouse, callback.url, name);
  const { verifier, challenge } = pkce();
  const state = `state-${Math.random().toString(36).slice(2)}`;
  await page.goto(authorizeUrl(gatehouse, { clientId, redirectUri: callback.url, challenge, state }));
  await expect(page.getByRole('heading', { name: 'Sign in' })).toBeVisible();
  await signIn(page);
  await expect(page.getByTestId('approve')).toBeVisible();
  return { clientId, verifier, state };
}

/** The form a client posts to redeem `code`. */
function codeGrant(code: string, verifier: string, clientId: string, callback: Callback, extra: Record<string, string> = {}) {
  return {
    grant_type: 'authorization_code',
    code,
    redirect_uri: callback.url,
    code_verifier: verifier,
    client_id: clientId,
    ...extra,
  };
}

/** Rotates a refresh token of `clientId`. */
function refresher(gatehouse: Gatehouse, clientId: string) {
  return (token: string) =>
    tokenRequest(gatehouse, { grant_type: 'refresh_token', refresh_token: token, client_id: clientId });
}

/** Consent, approve, and redeem the code: a client with its first tokens. */
async function approvedClient(page: Page, gatehouse: Gatehouse, callback: Callback) {
  const { clientId, verifier } = await reachConsent(page, gatehouse, callback);
  await page.getByTestId('approve').click();
  await expect(page.getByText('Callback received')).toBeVisible();
  const code = new URL(page.url()).searchParams.get('code')!;
  const tokens = await tokenRequest(gatehouse, codeGrant(code, verifier, clientId, callback));
  return { clientId, tokens };
}

test('first-run setup, then sign in', async ({ page, gatehouse }) => {
  await page.goto(await setupLink(gatehouse));
  await expect(page.getByRole('heading', { name: 'Set the owner password' })).toBeVisible();
  await page.getByLabel('New password').fill(OWNER_PASSWORD);
  await page.getByLabel('Repeat it').fill(OWNER_PASSWORD);
  await page.getByRole('button', { name: 'Set password' }).click();
  await expect(page.getByTestId('notice')).toContainText('Your password is set');

  await page.getByLabel('Password').fill('not the password at all');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByTestId('error')).toContainText('not right');
  await signIn(page);
  await expect(page).toHaveURL(`${gatehouse.url}/`);

  // The setup link works once.
  const again = await page.goto(await setupLink(gatehouse));
  expect(again?.status()).toBe(400);
});

test('consent shows the client, the host and the scopes; approve leads to tokens that rotate', async ({
  page,
  gatehouse,
  callback,
}) => {
  await setOwnerPassword(gatehouse);
  const { clientId, verifier, state } = await reachConsent(page, gatehouse, callback);

  await expect(page.getByTestId('client-name')).toHaveText('Playwright client');
  await expect(page.getByTestId('unverified')).toBeVisible();
  await expect(page.getByTestId('redirect-host')).toHaveText(new URL(callback.url).host);
  await expect(page.getByTestId('loopback-warning')).toBeVisible();
  await expect(page.getByTestId('scopes')).toContainText('Read your articles');
  await expect(page.getByTestId('scopes')).toContainText('Create, edit, publish and delete your articles');

  await page.getByTestId('approve').click();
  await expect(page.getByText('Callback received')).toBeVisible();
  const landed = new URL(page.url());
  expect(landed.origin + landed.pathname).toBe(callback.url);
  expect(landed.searchParams.get('state')).toBe(state);
  expect(landed.searchParams.get('iss')).toBe(gatehouse.url);
  const code = landed.searchParams.get('code')!;
  expect(code).toBeTruthy();

  const redeemed = await tokenRequest(
    gatehouse,
    codeGrant(code, verifier, clientId, callback, { resource: `${gatehouse.url}/mcp` }),
  );
  expect(redeemed.status).toBe(200);
  expect(redeemed.headers.get('cache-control')).toBe('no-store');
  expect(redeemed.body.token_type).toBe('Bearer');
  expect(redeemed.body.scope).toBe('read:articles write:articles');

  const refresh = refresher(gatehouse, clientId);
  const rotated = await refresh(redeemed.body.refresh_token);
  expect(rotated.status).toBe(200);
  expect(rotated.body.refresh_token).not.toBe(redeemed.body.refresh_token);
  // Within the grace window the old token repeats the same successor.
  const repeated = await refresh(redeemed.body.refresh_token);
  expect(repeated.body).toEqual(rotated.body);

  // The code works once.
  const replay = await tokenRequest(gatehouse, codeGrant(code, verifier, clientId, callback));
  expect(replay.status).toBe(400);
  expect(replay.body.error).toBe('invalid_grant');
});

test('the old refresh token fails after the grace window', async ({ page, gatehouse, callback }) => {
  await setOwnerPassword(gatehouse);
  const { clientId, tokens } = await approvedClient(page, gatehouse, callback);
  const refresh = refresher(gatehouse, clientId);
  const rotated = await refresh(tokens.body.refresh_token);
  expect(rotated.status).toBe(200);

  await new Promise((r) => setTimeout(r, 3500));
  const late = await refresh(tokens.body.refresh_token);
  expect(late.status).toBe(400);
  expect(late.body.error).toBe('invalid_grant');
});

test('deny lands on the callback with access_denied', async ({ page, gatehouse, callback }) => {
  await setOwnerPassword(gatehouse);
  const { state } = await reachConsent(page, gatehouse, callback);
  await page.getByTestId('deny').click();
  await expect(page.getByText('Callback received')).toBeVisible();
  const landed = new URL(page.url());
  expect(landed.searchParams.get('error')).toBe('access_denied');
  expect(landed.searchParams.get('state')).toBe(state);
  expect(landed.searchParams.get('iss')).toBe(gatehouse.url);
  expect(landed.searchParams.get('code')).toBeNull();
});

test('an approve link opened in another browser session approves nothing', async ({
  page,
  browser,
  gatehouse,
  callback,
}) => {
  await setOwnerPassword(gatehouse);
  await reachConsent(page, gatehouse, callback);
  const approveHref = await page.getByTestId('approve').getAttribute('href');
  const link = new URL(approveHref!, gatehouse.url).toString();

  const other = await browser.newContext();
  const otherPage = await other.newPage();
  // Not signed in at all.
  const anonymous = await otherPage.goto(link);
  expect(anonymous?.status()).toBe(400);
  await expect(otherPage.getByTestId('error-title')).toHaveText('This link is not valid');
  // Signed in as the owner, but in another session.
  await otherPage.goto(`${gatehouse.url}/oauth/login`);
  await signIn(otherPage);
  const foreign = await otherPage.goto(link);
  expect(foreign?.status()).toBe(400);
  expect(otherPage.url().startsWith(callback.url)).toBe(false);
  await other.close();

  // The owner's own session still approves with it.
  await page.getByTestId('approve').click();
  await expect(page.getByText('Callback received')).toBeVisible();
  expect(new URL(page.url()).searchParams.get('code')).toBeTruthy();
});

// Double-clickjacking: a page that sends the person here between the two clicks of a
// double-click must not get the second click on Approve. The links take no click for
// their first 0.8 s; the test holds that time still instead of racing it.
test('approve takes no click in its first moments on the page', async ({ page, gatehouse, callback }) => {
  await setOwnerPassword(gatehouse);
  await reachConsent(page, gatehouse, callback);
  const consentUrl = page.url();
  const approve = page.getByTestId('approve');
  await approve.scrollIntoViewIfNeeded();
  const box = (await approve.boundingBox())!;
  const [x, y] = [box.x + box.width / 2, box.y + box.height / 2];
  // Holds the links' animation at `ms` and says what a click at (x, y) would hit.
  const at = (ms: number) =>
    approve.evaluate(
      (link, [ms, x, y]) => {
        for (const animation of link.getAnimations()) {
          animation.pause();
          animation.currentTime = ms;
        }
        return document.elementFromPoint(x, y)?.getAttribute('data-testid') ?? 'something else';
      },
      [ms, x, y],
    );
  // Every approval the page sends: a held click must send none, even a slow one.
  const approvals: string[] = [];
  page.on('request', (request) => {
    if (request.url().includes('/oauth/authorize/approve')) approvals.push(request.url());
  });
  expect(await at(100)).toBe('something else');
  await page.mouse.click(x, y);
  await page.waitForTimeout(300);
  expect(page.url()).toBe(consentUrl);
  expect(approvals).toHaveLength(0);
  // The script's hold (next test) ends 0.6 s after load; only the CSS is tested here.
  await expect(page.locator('html')).not.toHaveClass(/held/);
  expect(await at(800)).toBe('approve');
  await page.mouse.click(x, y);
  await expect(page.getByText('Callback received')).toBeVisible();
  expect(new URL(page.url()).searchParams.get('code')).toBeTruthy();
  expect(approvals).toHaveLength(1);
});

// A page can wait out those 0.8 s by opening this one behind a window of its own,
// then closing that window under the person's double-click. So the links are held
// while the window is not in front, and for a moment after it is again.
test('approve takes no click while its window is away, nor just after it is back', async ({
  page,
  gatehouse,
  callback,
}) => {
  await setOwnerPassword(gatehouse);
  await reachConsent(page, gatehouse, callback);
  const consentUrl = page.url();
  const approve = page.getByTestId('approve');
  const approvals: string[] = [];
  page.on('request', (request) => {
    if (request.url().includes('/oauth/authorize/approve')) approvals.push(request.url());
  });
  await expect(page.locator('html')).not.toHaveClass(/held/);
  await page.waitForTimeout(900);
  await approve.scrollIntoViewIfNeeded();
  const box = (await approve.boundingBox())!;
  const [x, y] = [box.x + box.width / 2, box.y + box.height / 2];
  await page.evaluate(() => window.dispatchEvent(new Event('blur')));
  await expect(page.locator('html')).toHaveClass(/held/);
  await page.mouse.click(x, y);
  await approve.focus();
  await page.keyboard.press('Enter');
  await page.evaluate(() => window.dispatchEvent(new Event('focus')));
  await page.mouse.click(x, y);
  await page.waitForTimeout(300);
  expect(page.url()).toBe(consentUrl);
  expect(approvals).toHaveLength(0);
  await expect(page.locator('html')).not.toHaveClass(/held/);
  await page.mouse.click(x, y);
  await expect(page.getByText('Callback received')).toBeVisible();
  expect(new URL(page.url()).searchParams.get('code')).toBeTruthy();
  expect(approvals).toHaveLength(1);
});

test('script in a client name or scope is shown as text', async ({ page, gatehouse, callback }) => {
  await setOwnerPassword(gatehouse);
  let dialogs = 0;
  page.on('dialog', async (dialog) => {
    dialogs += 1;
    await dialog.dismiss();
  });
  const clientId = await registerClient(gatehouse, callback.url, '<script>alert(1)</script>');
  const { challenge } = pkce();
  await page.goto(
    authorizeUrl(gatehouse, {
      clientId,
      redirectUri: callback.url,
      challenge,
      state: 's',
      scope: 'read:articles <script>alert(1)</script>',
    }),
  );
  await signIn(page);
  await expect(page.getByTestId('client-name')).toHaveText('<script>alert(1)</script>');
  await expect(page.getByTestId('ignored-scopes')).toContainText('<script>alert(1)</script>');
  expect(dialogs).toBe(0);
});

test('a refresh token issued before a restart still works after it', async ({ page, gatehouse, callback }) => {
  await setOwnerPassword(gatehouse);
  const { clientId, tokens } = await approvedClient(page, gatehouse, callback);
  expect(tokens.status).toBe(200);

  await gatehouse.restart();
  const refreshed = await refresher(gatehouse, clientId)(tokens.body.refresh_token);
  expect(refreshed.status).toBe(200);
  expect(refreshed.body.access_token).toBeTruthy();
});
