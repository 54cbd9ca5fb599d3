// Real MCP clients against the real server: mcp-remote (the stdio proxy Claude Desktop
// and CLI setups use) and the official Python SDK. Each runs its own OAuth code; the
// browser (Playwright) only does what a person does: sign in and approve.
import { test as base, expect } from '@playwright/test';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { startGatehouse, type Gatehouse } from './support/server';
import { approve, setOwnerPassword } from './support/oauth';
import { Lines, McpRemote } from './support/clients';

const ACCESS_TTL_SECONDS = 4;

const test = base.extend<{ gatehouse: Gatehouse }>({
  gatehouse: async ({}, use) => {
    // Short-lived access tokens, so a second client run must refresh.
    const server = await startGatehouse(['--access-token-ttl', `${ACCESS_TTL_SECONDS}s`]);
    await setOwnerPassword(server);
    await use(server);
    await server.stop();
  },
});

function storedAccessToken(configDir: string): string | undefined {
  const walk = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)],
    );
  const file = walk(configDir).find((f) => f.endsWith('_tokens.json'));
  return file ? JSON.parse(readFileSync(file, 'utf8')).access_token : undefined;
}

test('mcp-remote signs in once, reuses its cached tokens, and refreshes them', async ({ page, gatehouse }) => {
  test.setTimeout(90_000);
  const configDir = mkdtempSync(join(tmpdir(), 'mcp-remote-'));
  try {
    // First run: consent in the browser; mcp-remote's own callback receives the code.
    const first = new McpRemote(`${gatehouse.url}/mcp`, configDir);
    await approve(page, await first.authorizationUrl());
    const init = await first.session();
    expect(init.serverInfo.name).toBe('gatehouse');
    const { tools } = await first.request('tools/list');
    expect(tools.map((t: { name: string }) => t.name)).toContain('list_articles');
    const listed = await first.request('tools/call', { name: 'list_articles', arguments: {} });
    expect(listed.isError).toBeFalsy();
    expect(listed.structuredContent).toEqual({ articles: [] });
    first.stop();
    const firstToken = storedAccessToken(configDir);
    expect(firstToken).toBeTruthy();

    // Second run, after the access token expired: no consent, a refresh instead.
    await new Promise((r) => setTimeout(r, (ACCESS_TTL_SECONDS + 1) * 1000));
    const second = new McpRemote(`${gatehouse.url}/mcp`, configDir);
    await second.session();
    const again = await second.request('tools/call', { name: 'list_articles', arguments: {} });
    expect(again.isError).toBeFalsy();
    expect(second.stderr.all().some((l) => l.includes('/oauth/authorize?'))).toBe(false);
    const secondToken = storedAccessToken(configDir);
    expect(secondToken).toBeTruthy();
    expect(secondToken).not.toBe(firstToken);
    second.stop();
  } finally {
    rmSync(configDir, { recursive: true, force: true });
  }
});

test('the official Python SDK runs the OAuth flow, lists tools and calls one', async ({ page, gatehouse }) => {
  test.setTimeout(120_000);
  const python = process.env.GATEHOUSE_PYTHON ?? resolve(__dirname, '../.venv/bin/python');
  const child = spawn(python, [resolve(__dirname, '../python/oauth_client.py'), `${gatehouse.url}/mcp`]);
  const stdout = new Lines(child.stdout);
  const stderr = new Lines(child.stderr);
  try {
    // A fresh virtual environment's first run can be slow on a busy 2-core machine
    // (CI has twice timed out here at 30 s, with nothing on stdout).
    const authorize = await stdout
      .waitFor((l) => l.includes('"authorize"'), 'the authorization URL', 60_000)
      .catch((e) => {
        throw new Error(`${e}\nstderr:\n${stderr.all().join('\n')}`);
      });
    await approve(page, JSON.parse(authorize).authorize);
    await expect(page.getByText('Callback received')).toBeVisible();
    const done = await stdout
      .waitFor((l) => l.includes('"tools"'), 'the result', 30_000)
      .catch((e) => {
        throw new Error(`${e}\nstderr:\n${stderr.all().join('\n')}`);
      });
    const result = JSON.parse(done);
    expect(result.tools).toContain('list_articles');
    expect(result.tools).toContain('create_article');
    expect(result.is_error).toBe(false);
    expect(result.structured).toEqual({ articles: [] });
  } finally {
    child.kill();
  }
});

test('the MCP Inspector CLI runs its own OAuth flow and calls a tool', async ({ page, gatehouse }) => {
  test.setTimeout(90_000);
  const bin = resolve(__dirname, '../node_modules/.bin/mcp-inspector');
  const run = (args: string[]) => {
    const child = spawn(bin, ['--cli', `${gatehouse.url}/mcp`, '--transport', 'http', ...args], {
      env: {
        ...process.env,
        // Print the authorization URL (we follow it in Playwright) instead of opening a browser.
        MCP_AUTO_OPEN_ENABLED: 'true',
        BROWSER: 'true',
        DISPLAY: '',
        MCP_INSPECTOR_SECRET_STORE: 'memory',
      },
    });
    const output = new Lines(child.stdout);
    const errors = new Lines(child.stderr);
    const exited = new Promise<number | null>((done) => child.on('exit', done));
    return { child, output, errors, exited };
  };

  const inspector = run(['--method', 'tools/call', '--tool-name', 'list_articles']);
  try {
    const line = await inspector.errors
      .waitFor((l) => l.includes('/oauth/authorize?'), 'the authorization URL', 30_000)
      .catch(async () => inspector.output.waitFor((l) => l.includes('/oauth/authorize?'), 'the authorization URL', 1_000));
    const url = /(https?:\/\/\S+\/oauth\/authorize\?\S+)/.exec(line)![1];
    expect(new URL(url).searchParams.get('code_challenge_method')).toBe('S256');
    await approve(page, url);
    const code = await inspector.exited;
    const out = inspector.output.all().join('\n');
    expect(code, `${out}\n${inspector.errors.all().join('\n')}`).toBe(0);
    expect(out).toContain('"articles"');
  } finally {
    inspector.child.kill();
  }
});
