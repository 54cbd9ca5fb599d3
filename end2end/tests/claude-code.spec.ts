// Claude Code (the CLI, npm `@anthropic-ai/claude-code`) connects to Gatehouse: to the
// built-in /mcp and to an upstream behind the gateway (server-everything over stdio,
// given with the short `--upstream NAME=stdio:…` form).
//
// Offline, Claude Code cannot identify itself with its client-ID metadata document
// (https://claude.ai/oauth/claude-code-client-metadata: Gatehouse would have to fetch
// it from claude.ai), so it uses a pre-registered client: Gatehouse's static client,
// `claude mcp add --client-id … --client-secret --callback-port …` with the secret in
// MCP_CLIENT_SECRET. `claude mcp login NAME --no-browser` prints the authorization URL
// and asks for the redirect URL on its terminal (it refuses to run without one, so it
// runs under `script`, which gives it a pty). The browser signs in and approves; the
// redirect to Claude Code's callback is caught and pasted into the terminal, as a person
// whose browser runs on another machine would. Then `claude mcp list` and
// `claude mcp get` must report each server "✔ Connected": Claude Code connects, and
// its tools/list goes through the guard with the token it obtained.
//
// Claude Code runs with a private HOME and with auto-update, telemetry and other
// non-essential traffic off: these commands make no connection but to Gatehouse.
import { test as base, expect, type Page } from '@playwright/test';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { freePort, startGatehouse, type Gatehouse } from './support/server';
import { approve, setOwnerPassword } from './support/oauth';
import { EVERYTHING_JS } from './support/upstreams';

// The native binary of the platform package npm picked (install scripts may be skipped).
const CLAUDE = resolve(
  __dirname,
  `../node_modules/@anthropic-ai/claude-code-${process.platform}-${process.arch}/claude`,
);
const CLIENT_ID = 'claude-code-e2e';
const CLIENT_SECRET = randomBytes(32).toString('base64url');

interface Setup {
  gatehouse: Gatehouse;
  callbackPort: number;
  home: string;
  project: string;
}

const test = base.extend<{ setup: Setup }>({
  setup: async ({}, use) => {
    const callbackPort = await freePort();
    const gatehouse = await startGatehouse([
      '--upstream',
      `everything=stdio:${process.execPath} ${EVERYTHING_JS} stdio`,
      '--static-client-id',
      CLIENT_ID,
      '--static-client-secret',
      CLIENT_SECRET,
      // Claude Code's callback: http://localhost:PORT/callback (PORT from --callback-port).
      '--static-client-redirect-uris',
      `http://localhost:${callbackPort}/callback`,
    ]);
    await setOwnerPassword(gatehouse);
    const home = mkdtempSync(join(tmpdir(), 'claude-code-home-'));
    const project = join(home, 'project');
    mkdirSync(project);
    await use({ gatehouse, callbackPort, home, project });
    await gatehouse.stop();
    rmSync(home, { recursive: true, force: true });
  },
});

/** Claude Code's environment: nothing from ours but PATH; no traffic to Anthropic. */
function claudeEnv(home: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: home,
    TERM: 'xterm',
    DISABLE_AUTOUPDATER: '1',
    DISABLE_TELEMETRY: '1',
    DISABLE_ERROR_REPORTING: '1',
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
    MCP_CLIENT_SECRET: CLIENT_SECRET,
  };
}

async function claude(setup: Setup, args: string[]): Promise<string> {
  const { stdout, stderr } = await promisify(execFile)(CLAUDE, args, {
    cwd: setup.project,
    env: claudeEnv(setup.home),
    timeout: 30_000,
  });
  return stdout + stderr;
}

/** The terminal's text without colours and hyperlink escapes. */
function plain(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\]8;;[^\x07]*\x07/g, '').replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
}

/**
 * `claude mcp login NAME --no-browser` on a pty: approve its authorization URL in the
 * browser, catch the redirect to its callback, and paste that URL into its prompt.
 */
async function login(page: Page, setup: Setup, name: string, resource: string) {
  const child = spawn('script', ['--quiet', '--flush', '--return', '--command', `${CLAUDE} mcp login ${name} --no-browser`, '/dev/null'], {
    cwd: setup.project,
    env: claudeEnv(setup.home),
  });
  // Its prompt for the redirect URL ends no line: watch the whole screen.
  let screen = '';
  child.stdout.on('data', (d) => (screen += d));
  const shown = async (pattern: RegExp, what: string): Promise<RegExpExecArray> => {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const found = pattern.exec(plain(screen));
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; the terminal shows:\n${plain(screen)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const exited = new Promise<number | null>((done) => child.on('exit', done));
  try {
    const url = new URL((await shown(/(http:\/\/\S+?\/oauth\/authorize\?\S+)/, 'the authorization URL'))[1]);
    expect(url.searchParams.get('client_id')).toBe(CLIENT_ID);
    expect(url.searchParams.get('redirect_uri')).toBe(`http://localhost:${setup.callbackPort}/callback`);
    expect(url.searchParams.get('resource')).toBe(resource);
    expect(url.searchParams.get('code_challenge_method')).toBe('S256');
    await shown(/paste the redirect URL here/, 'the prompt for the redirect URL');

    // The approval's redirect, caught before the browser follows it to the callback.
    let redirect = '';
    await page.route('**/oauth/authorize/approve?**', async (route) => {
      const response = await route.fetch({ maxRedirects: 0 });
      redirect = response.headers()['location'] ?? '';
      await route.fulfill({ status: 200, contentType: 'text/html', body: '<p>Copied into Claude Code</p>' });
    });
    await approve(page, url.toString());
    await expect(page.getByText('Copied into Claude Code')).toBeVisible();
    await page.unroute('**/oauth/authorize/approve?**');
    const back = new URL(redirect);
    expect(back.origin + back.pathname).toBe(`http://localhost:${setup.callbackPort}/callback`);
    expect(back.searchParams.get('iss')).toBe(setup.gatehouse.url);

    child.stdin.write(`${redirect}\r`);
    expect(await exited, plain(screen)).toBe(0);
    expect(plain(screen)).toContain(`Authenticated with "${name}"`);
  } finally {
    child.kill();
  }
}

test('Claude Code signs in with a pre-registered client and reports /mcp and a gateway upstream connected', async ({
  page,
  setup,
}) => {
  test.setTimeout(90_000);
  const { gatehouse, callbackPort } = setup;
  const servers = [
    { name: 'gatehouse', url: `${gatehouse.url}/mcp` },
    { name: 'everything', url: `${gatehouse.url}/mcp/everything` },
  ];
  for (const { name, url } of servers) {
    const added = await claude(setup, [
      'mcp', 'add', '--transport', 'http',
      '--client-id', CLIENT_ID, '--client-secret', '--callback-port', String(callbackPort),
      name, url,
    ]);
    expect(added).toContain(`Added HTTP MCP server ${name} with URL: ${url}`);
  }

  // Before signing in, Claude Code sees the 401 and says so.
  expect(plain(await claude(setup, ['mcp', 'get', 'everything']))).toContain('Status: ! Needs authentication');

  for (const { name, url } of servers) {
    await login(page, setup, name, url);
  }

  const listed = plain(await claude(setup, ['mcp', 'list']));
  for (const { name, url } of servers) {
    expect(listed).toContain(`${name}: ${url} (HTTP) - ✔ Connected`);
  }
  const got = plain(await claude(setup, ['mcp', 'get', 'everything']));
  expect(got).toContain('Status: ✔ Connected');
  expect(got).toContain(`OAuth: client_id configured, client_secret configured, callback_port ${callbackPort}`);
});
