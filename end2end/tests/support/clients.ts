// Real MCP clients run as child processes: the lines they print, and mcp-remote driven
// through JSON-RPC on its stdio.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { resolve } from 'node:path';

/** Lines a child process prints, with a way to wait for one that matches. */
export class Lines {
  private lines: string[] = [];
  private waiters: Array<() => void> = [];

  constructor(stream: NodeJS.ReadableStream) {
    let partial = '';
    stream.on('data', (chunk) => {
      partial += chunk.toString();
      const parts = partial.split('\n');
      partial = parts.pop() ?? '';
      this.lines.push(...parts);
      this.waiters.splice(0).forEach((wake) => wake());
    });
  }

  all(): string[] {
    return this.lines;
  }

  /** The first matching line from index `from` on (0: any line so far). */
  async waitFor(match: (line: string) => boolean, what: string, timeoutMs = 20_000, from = 0): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.slice(from).find(match);
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; saw:\n${this.lines.join('\n')}`);
      await new Promise<void>((wake) => {
        this.waiters.push(wake);
        setTimeout(wake, 250);
      });
    }
  }
}

const AUTHORIZE_URL = /(https?:\/\/\S+\/oauth\/authorize\?\S+)/;

/** mcp-remote, speaking JSON-RPC on its stdio. */
export class McpRemote {
  readonly child: ChildProcessWithoutNullStreams;
  readonly stdout: Lines;
  readonly stderr: Lines;
  private nextId = 1;

  constructor(mcpUrl: string, configDir: string, extraArgs: string[] = []) {
    const bin = resolve(__dirname, '../../node_modules/.bin/mcp-remote');
    this.child = spawn(bin, [mcpUrl, '--allow-http', '--transport', 'http-only', ...extraArgs], {
      env: {
        ...process.env,
        MCP_REMOTE_CONFIG_DIR: configDir,
        // Print the authorization URL instead of opening a browser.
        BROWSER: 'true',
        DISPLAY: '',
      },
    });
    this.stdout = new Lines(this.child.stdout);
    this.stderr = new Lines(this.child.stderr);
  }

  /** The authorization URL it prints; `from` skips the lines of earlier ones. */
  authorizationUrl(from = 0): Promise<string> {
    return this.stderr
      .waitFor((line) => AUTHORIZE_URL.test(line), 'the authorization URL', 20_000, from)
      .then((line) => AUTHORIZE_URL.exec(line)![1]);
  }

  notify(method: string) {
    this.child.stdin.write(JSON.stringify({ jsonrpc: '2.0', method }) + '\n');
  }

  /** Sends a request without waiting for its answer; returns its id. */
  send(method: string, params: object = {}): number {
    const id = this.nextId++;
    this.child.stdin.write(JSON.stringify({ jsonrpc: '2.0', id, method, params }) + '\n');
    return id;
  }

  async request(method: string, params: object = {}): Promise<any> {
    const id = this.send(method, params);
    const line = await this.stdout.waitFor((l) => {
      try {
        return JSON.parse(l).id === id;
      } catch {
        return false;
      }
    }, `the answer to ${method}`, 30_000);
    const message = JSON.parse(line);
    if (message.error) throw new Error(`${method} failed: ${JSON.stringify(message.error)}`);
    return message.result;
  }

  async session() {
    const init = await this.request('initialize', {
      protocolVersion: '2025-06-18',
      capabilities: {},
      clientInfo: { name: 'playwright-stdio', version: '1.0.0' },
    });
    this.notify('notifications/initialized');
    return init;
  }

  stop() {
    this.child.kill('SIGTERM');
  }
}
