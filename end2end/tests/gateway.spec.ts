// The gateway end to end: upstream MCP servers nobody here wrote, behind Gatehouse at
// /mcp/NAME, used by real clients through the real OAuth flow. The browser
// (Playwright) only signs in and approves.
//
// Upstreams, from one --config file: @modelcontextprotocol/server-everything over stdio
// (`everything`, one process per session, started by Gatehouse) and over Streamable
// HTTP (`everything-http`, started here), and a FastMCP server written with the
// official Python SDK (`notes`, python/fastmcp_server.py, over stdio). Each config
// denies one tool.
import { test as base, expect, type Page } from '@playwright/test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { UnauthorizedError, auth } from '@modelcontextprotocol/sdk/client/auth.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  type CallToolResult,
  type Progress,
} from '@modelcontextprotocol/sdk/types.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { startGatehouse, type Gatehouse } from './support/server';
import { approve, setOwnerPassword, startCallbackServer, type Callback } from './support/oauth';
import { InMemoryOAuthProvider, recordingFetch, type Seen } from './support/mcpClient';
import { McpRemote } from './support/clients';
import {
  EVERYTHING_JS,
  FASTMCP_SERVER,
  PYTHON,
  processesWith,
  startEverythingHttp,
  type HttpUpstream,
} from './support/upstreams';

interface Gateway {
  gatehouse: Gatehouse;
  everythingHttp: HttpUpstream;
  /** On the command line of every stdio `everything` process of this gateway. */
  marker: string;
}

const test = base.extend<{ callback: Callback }, { gateway: Gateway }>({
  // One gateway for the file: the upstreams take a moment to start.
  gateway: [
    async ({}, use) => {
      const everythingHttp = await startEverythingHttp();
      const marker = `gatehouse-e2e-${randomUUID()}`;
      const dir = mkdtempSync(join(tmpdir(), 'gatehouse-gateway-'));
      const config = join(dir, 'gatehouse.toml');
      // server-everything reads only its first argument; the marker finds its processes.
      writeFileSync(
        config,
        `
[[upstream]]
name = "everything"
title = "Everything (stdio)"
command = ${JSON.stringify(process.execPath)}
args = [${JSON.stringify(EVERYTHING_JS)}, "stdio", ${JSON.stringify(marker)}]
timeout = "20s"
tools = [{ match = "get-env", access = "deny" }]

[[upstream]]
name = "everything-http"
title = "Everything (Streamable HTTP)"
url = ${JSON.stringify(everythingHttp.url)}
timeout = "20s"
tools = [{ match = "get-env", access = "deny" }]

[[upstream]]
name = "notes"
title = "Notes (FastMCP)"
command = ${JSON.stringify(PYTHON)}
args = [${JSON.stringify(FASTMCP_SERVER)}]
tools = [{ match = "erase_*", access = "deny" }]
`,
      );
      const gatehouse = await startGatehouse(['--config', config]);
      await setOwnerPassword(gatehouse);
      await use({ gatehouse, everythingHttp, marker });
      await gatehouse.stop();
      await everythingHttp.stop();
      rmSync(dir, { recursive: true, force: true });
    },
    { scope: 'worker', timeout: 60_000 },
  ],
  callback: async ({}, use) => {
    const callback = await startCallbackServer();
    await use(callback);
    await callback.close();
  },
});

/** Follows the SDK's authorization URL in the browser, approves, returns the code. */
async function consent(page: Page, provider: InMemoryOAuthProvider, callback: Callback): Promise<string> {
  expect(provider.authorizationUrl, 'the SDK asked for authorization').toBeDefined();
  await approve(page, provider.authorizationUrl!.toString());
  await expect(page.getByText('Callback received')).toBeVisible();
  const landed = new URL(page.url());
  expect(landed.origin + landed.pathname).toBe(callback.url);
  provider.authorizationUrl = undefined;
  return landed.searchParams.get('code')!;
}

/** The SDK's own flow for `mcpUrl`: 401, discovery, registration, consent. */
async function signIn(page: Page, callback: Callback, mcpUrl: URL): Promise<InMemoryOAuthProvider> {
  const provider = new InMemoryOAuthProvider(callback.url);
  const first = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
  await expect(new Client({ name: 'e2e', version: '1.0.0' }).connect(first)).rejects.toThrow(UnauthorizedError);
  expect(provider.authorizationUrl!.searchParams.get('resource')).toBe(mcpUrl.toString());
  await first.finishAuth(await consent(page, provider, callback));
  return provider;
}

/** What the upstream asked the client, and what the client was told on its own. */
interface Asked {
  sampling: string[];
  elicitation: string[];
  logs: unknown[];
}

/** A client that can be asked for sampling and elicitation, and answers both. */
function sdkClient(asked: Asked): Client {
  const client = new Client(
    { name: 'e2e-gateway', version: '1.0.0' },
    { capabilities: { sampling: {}, elicitation: {} } },
  );
  client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
    const first = request.params.messages[0]?.content;
    asked.sampling.push(first && 'text' in first ? String(first.text) : '');
    return {
      model: 'e2e-model',
      role: 'assistant',
      content: { type: 'text', text: 'sampled by the e2e client' },
      stopReason: 'endTurn',
    };
  });
  client.setRequestHandler(ElicitRequestSchema, async (request) => {
    asked.elicitation.push(request.params.message);
    const schema = 'requestedSchema' in request.params ? request.params.requestedSchema : undefined;
    return 'title' in (schema?.properties ?? {})
      ? { action: 'accept', content: { title: 'Elicited' } }
      : { action: 'accept', content: { name: 'Ada Lovelace', check: true } };
  });
  client.setNotificationHandler(LoggingMessageNotificationSchema, async (n) => {
    asked.logs.push(n.params.data);
  });
  return client;
}

function text(result: unknown): string {
  return ((result as CallToolResult).content ?? [])
    .map((c) => (c.type === 'text' ? c.text : ''))
    .join('\n');
}

interface Target {
  name: string;
  what: string;
  denied: string;
  read: { tool: string; args: Record<string, unknown>; says: RegExp };
  write: { tool: string; args: Record<string, unknown>; says: RegExp };
  /** With the write scope: progress, and the upstream's own requests to the client. */
  afterStepUp(client: Client, asked: Asked): Promise<void>;
}

/** trigger-long-running-operation, with a progress token: every step reaches us, in order. */
async function progressArrives(client: Client) {
  const progress: Progress[] = [];
  const result = await client.callTool(
    { name: 'trigger-long-running-operation', arguments: { duration: 0.6, steps: 3 } },
    undefined,
    { onprogress: (p) => progress.push(p) },
  );
  expect(text(result)).toContain('Long running operation completed');
  expect(progress.map((p) => [p.progress, p.total])).toEqual([
    [1, 3],
    [2, 3],
    [3, 3],
  ]);
}

/** server-everything asks the client to sample, and to fill in a form; both answers return. */
async function everythingAsksTheClient(client: Client, asked: Asked) {
  await progressArrives(client);

  const sampled = await client.callTool({
    name: 'trigger-sampling-request',
    arguments: { prompt: 'relayed by Gatehouse', maxTokens: 20 },
  });
  expect(asked.sampling).toEqual(['Resource trigger-sampling-request context: relayed by Gatehouse']);
  expect(text(sampled)).toContain('sampled by the e2e client');
  expect(text(sampled)).toContain('e2e-model');

  const elicited = await client.callTool({ name: 'trigger-elicitation-request', arguments: {} });
  expect(asked.elicitation).toEqual(['Please provide inputs for the following fields:']);
  expect(text(elicited)).toContain('- Name: Ada Lovelace');
  expect(text(elicited)).toContain('- Agreed to terms: true');

  // toggle-simulated-logging (the write call before) logs once at once: a notification
  // that belongs to no call, on the session's own stream.
  await expect.poll(() => asked.logs.length).toBeGreaterThan(0);
}

const TARGETS: Target[] = [
  {
    name: 'everything',
    what: 'server-everything over stdio',
    denied: 'get-env',
    read: { tool: 'echo', args: { message: 'through the gateway' }, says: /^Echo: through the gateway$/ },
    write: { tool: 'toggle-simulated-logging', args: {}, says: /^Started simulated, random-leveled logging/ },
    afterStepUp: everythingAsksTheClient,
  },
  {
    name: 'everything-http',
    what: 'server-everything over Streamable HTTP',
    denied: 'get-env',
    read: { tool: 'echo', args: { message: 'through the gateway' }, says: /^Echo: through the gateway$/ },
    write: { tool: 'toggle-simulated-logging', args: {}, says: /^Started simulated, random-leveled logging/ },
    afterStepUp: everythingAsksTheClient,
  },
  {
    name: 'notes',
    what: 'a FastMCP server over stdio',
    denied: 'erase_notes',
    read: { tool: 'list_notes', args: {}, says: /^\(no notes\)$/ },
    write: { tool: 'add_note', args: { text: 'first' }, says: /^added note 1: first$/ },
    afterStepUp: async (client, asked) => {
      // The server reports progress, asks the client for a title, then reports again.
      const progress: Progress[] = [];
      const titled = await client.callTool({ name: 'add_titled_note', arguments: { text: 'second' } }, undefined, {
        onprogress: (p) => progress.push(p),
      });
      expect(asked.elicitation).toEqual(["What is the note's title?"]);
      expect(text(titled)).toBe("added note 2 titled 'Elicited'");
      expect(progress.map((p) => p.message)).toEqual(['asking for a title', 'added']);
      const listed = await client.callTool({ name: 'list_notes', arguments: {} });
      expect(text(listed)).toBe('first\nElicited: second');
    },
  },
];

for (const target of TARGETS) {
  test(`the TypeScript SDK through /mcp/${target.name} (${target.what}): reads, is refused a write, steps up, writes`, async ({
    page,
    gateway,
    callback,
  }) => {
    test.setTimeout(60_000);
    const { name } = target;
    const mcpUrl = new URL(`${gateway.gatehouse.url}/mcp/${name}`);

    // 1. Sign in for what the 401 asked: the read scope of this upstream only.
    const provider = new InMemoryOAuthProvider(callback.url);
    const seen: Seen[] = [];
    const transport = () =>
      new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider, fetch: recordingFetch(seen) });
    const first = transport();
    await expect(new Client({ name: 'e2e', version: '1.0.0' }).connect(first)).rejects.toThrow(UnauthorizedError);
    expect(provider.authorizationUrl!.searchParams.get('scope')).toBe(`${name}:read`);
    expect(provider.authorizationUrl!.searchParams.get('resource')).toBe(mcpUrl.toString());
    await first.finishAuth(await consent(page, provider, callback));
    expect(provider.tokens()?.scope).toBe(`${name}:read`);

    // 2. The upstream's own tools, without the denied one; a read-only tool works.
    const asked: Asked = { sampling: [], elicitation: [], logs: [] };
    const client = sdkClient(asked);
    const connected = transport();
    await client.connect(connected);
    const tools = (await client.listTools()).tools.map((t) => t.name);
    expect(tools).toEqual(expect.arrayContaining([target.read.tool, target.write.tool]));
    expect(tools).not.toContain(target.denied);
    expect(text(await client.callTool({ name: target.read.tool, arguments: target.read.args }))).toMatch(
      target.read.says,
    );
    // The denied tool needs what a tool nobody knows needs (the write scope), so a
    // read-only token cannot tell the deny rules from names that do not exist.
    const deniedRead = await client.callTool({ name: target.denied, arguments: {} }).catch((e) => e);
    expect((deniedRead as StreamableHTTPError).code).toBe(403);

    // 3. A tool without readOnlyHint: 403 insufficient_scope naming both scopes.
    seen.length = 0;
    const refused = await client.callTool({ name: target.write.tool, arguments: target.write.args }).catch((e) => e);
    expect(refused).toBeInstanceOf(StreamableHTTPError);
    expect((refused as StreamableHTTPError).code).toBe(403);
    const challenge = seen.find((s) => s.status === 403)?.wwwAuthenticate ?? '';
    expect(challenge).toContain('error="insufficient_scope"');
    const needed = /scope="([^"]+)"/.exec(challenge)?.[1];
    expect(needed).toBe(`${name}:read ${name}:write`);
    const metadata = /resource_metadata="([^"]+)"/.exec(challenge)?.[1];
    expect(metadata).toBe(`${gateway.gatehouse.url}/.well-known/oauth-protected-resource/mcp/${name}`);

    // 4. Step up as an SDK 1.x application must (typescript-sdk#2255, see mcp.spec.ts).
    provider.forgetRefreshToken();
    expect(await auth(provider, { serverUrl: mcpUrl, scope: needed, resourceMetadataUrl: new URL(metadata!) })).toBe(
      'REDIRECT',
    );
    expect(provider.authorizationUrl!.searchParams.get('scope')).toBe(needed);
    await connected.finishAuth(await consent(page, provider, callback));
    expect(provider.tokens()?.scope).toBe(needed);

    // 5. The write goes through, in the same session; the denied tool is answered as
    // one that does not exist.
    expect(text(await client.callTool({ name: target.write.tool, arguments: target.write.args }))).toMatch(
      target.write.says,
    );
    await expect(client.callTool({ name: target.denied, arguments: {} })).rejects.toThrow(
      `Unknown tool: ${target.denied}`,
    );
    await target.afterStepUp(client, asked);
    await client.close();
  });
}

test('mcp-remote through /mcp/everything-http: reads, is refused a write, signs in for it, writes', async ({
  page,
  gateway,
}) => {
  test.setTimeout(60_000);
  const url = `${gateway.gatehouse.url}/mcp/everything-http`;
  const configDir = mkdtempSync(join(tmpdir(), 'mcp-remote-gateway-'));
  try {
    // First run: signs in for what the 401 asked (the read scope), lists and reads.
    const reader = new McpRemote(url, configDir);
    try {
      const signIn = await reader.authorizationUrl();
      expect(new URL(signIn).searchParams.get('scope')).toBe('everything-http:read');
      await approve(page, signIn);
      const init = await reader.session();
      expect(init.serverInfo.name).toBe('mcp-servers/everything');
      const { tools } = await reader.request('tools/list');
      const names = tools.map((t: { name: string }) => t.name);
      expect(names).toContain('echo');
      expect(names).not.toContain('get-env');
      const echoed = await reader.request('tools/call', { name: 'echo', arguments: { message: 'via mcp-remote' } });
      expect(text(echoed)).toBe('Echo: via mcp-remote');

      // A write: 403 insufficient_scope, on which mcp-remote (the SDK v2 inside) starts
      // a new authorization mid-call. mcp-remote 0.15.1 then asks for the wrong scope:
      // its applyScope replaces the SDK's union ("…:read …:write") with the scope of
      // the first 401 whenever that union equals the resource's scopes_supported, so
      // approving it would only bring another 403. Recorded here; when mcp-remote
      // fixes it, approve this URL instead of the second run below.
      const printed = reader.stderr.all().length;
      reader.send('tools/call', { name: 'toggle-simulated-logging', arguments: {} });
      const stepUp = await reader.authorizationUrl(printed);
      expect(new URL(stepUp).searchParams.get('scope')).toBe('everything-http:read');
    } finally {
      reader.stop();
    }

    // Second run, asking for both scopes (--static-oauth-client-metadata): mcp-remote
    // sees the wider scope, signs in again, and the write goes through.
    const writer = new McpRemote(url, configDir, [
      '--static-oauth-client-metadata',
      JSON.stringify({ scope: 'everything-http:read everything-http:write' }),
    ]);
    try {
      const wider = await writer.authorizationUrl();
      expect(new URL(wider).searchParams.get('scope')).toBe('everything-http:read everything-http:write');
      await approve(page, wider);
      await writer.session();
      const toggled = await writer.request('tools/call', { name: 'toggle-simulated-logging', arguments: {} });
      expect(text(toggled)).toMatch(/^Started simulated, random-leveled logging/);
    } finally {
      writer.stop();
    }
  } finally {
    rmSync(configDir, { recursive: true, force: true });
  }
});

test('an upstream killed mid-call gives an error naming it, and the next session works', async ({
  page,
  gateway,
  callback,
}) => {
  test.setTimeout(60_000);
  const { gatehouse, everythingHttp, marker } = gateway;
  const asked: Asked = { sampling: [], elicitation: [], logs: [] };

  /**
   * Starts a long call, kills the upstream at its first progress, and expects the
   * error at once: not after the upstream's configured 20 s `timeout`.
   */
  async function killMidCall(client: Client, name: string, kill: () => void, later: RegExp) {
    let killedAt = 0;
    const call = client.callTool(
      { name: 'trigger-long-running-operation', arguments: { duration: 30, steps: 60 } },
      undefined,
      {
        onprogress: () => {
          if (!killedAt) {
            killedAt = Date.now();
            kill();
          }
        },
      },
    );
    await expect(call).rejects.toThrow(`upstream ${name} is not reachable or stopped`);
    expect(killedAt).toBeGreaterThan(0);
    expect(Date.now() - killedAt).toBeLessThan(10_000);
    // The session's upstream is gone: a later call fails too (`later`).
    await expect(client.callTool({ name: 'echo', arguments: { message: 'again' } })).rejects.toThrow(
      later,
    );
  }

  // stdio: the relay started one process for this session; kill exactly that one.
  const stdioUrl = new URL(`${gatehouse.url}/mcp/everything`);
  const stdioAuth = await signIn(page, callback, stdioUrl);
  const before = processesWith(marker);
  const stdio = sdkClient(asked);
  await stdio.connect(new StreamableHTTPClientTransport(stdioUrl, { authProvider: stdioAuth }));
  const started = processesWith(marker).filter((pid) => !before.includes(pid));
  expect(started).toHaveLength(1);
  // Its process is gone: Gatehouse ends the session, and its next request hears so
  // (404), on which clients open a new session.
  await killMidCall(stdio, 'everything', () => process.kill(started[0], 'SIGKILL'), /Session not found/);
  await stdio.close();

  const again = sdkClient(asked);
  await again.connect(new StreamableHTTPClientTransport(stdioUrl, { authProvider: stdioAuth }));
  expect(text(await again.callTool({ name: 'echo', arguments: { message: 'new process' } }))).toBe(
    'Echo: new process',
  );
  await again.close();

  // Streamable HTTP: the server process dies; once it is back, a new session works.
  const httpUrl = new URL(`${gatehouse.url}/mcp/everything-http`);
  const httpAuth = await signIn(page, callback, httpUrl);
  const http = sdkClient(asked);
  await http.connect(new StreamableHTTPClientTransport(httpUrl, { authProvider: httpAuth }));
  // The same error, or 404 once the upstream connection counts as closed.
  await killMidCall(
    http,
    'everything-http',
    () => process.kill(everythingHttp.pid(), 'SIGKILL'),
    /upstream everything-http is not reachable or stopped|Session not found/,
  );
  await http.close();
  await everythingHttp.start();

  const back = sdkClient(asked);
  await back.connect(new StreamableHTTPClientTransport(httpUrl, { authProvider: httpAuth }));
  expect(text(await back.callTool({ name: 'echo', arguments: { message: 'server is back' } }))).toBe(
    'Echo: server is back',
  );
  await back.close();
});

test('a token for one upstream is refused at another and at /mcp with 401 invalid_token', async ({
  page,
  gateway,
  callback,
}) => {
  const { gatehouse } = gateway;
  const provider = await signIn(page, callback, new URL(`${gatehouse.url}/mcp/notes`));
  const token = provider.tokens()!.access_token;
  const initialize = (path: string) =>
    fetch(`${gatehouse.url}${path}`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: 1,
        method: 'initialize',
        params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } },
      }),
    });

  // Where it was issued for, it works.
  const home = await initialize('/mcp/notes');
  expect(home.status).toBe(200);
  await home.body?.cancel();

  for (const [path, scope] of [
    ['/mcp/everything', 'everything:read'],
    ['/mcp/everything-http', 'everything-http:read'],
    ['/mcp', 'read:articles'],
  ]) {
    const refused = await initialize(path);
    expect(refused.status, path).toBe(401);
    const challenge = refused.headers.get('www-authenticate') ?? '';
    expect(challenge, path).toContain('error="invalid_token"');
    expect(challenge, path).toContain(`resource_metadata="${gatehouse.url}/.well-known/oauth-protected-resource${path}"`);
    expect(challenge, path).toContain(`scope="${scope}"`);
  }
});
