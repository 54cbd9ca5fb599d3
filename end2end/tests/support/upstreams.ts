// Upstream MCP servers that nobody here wrote, for the gateway tests:
// `@modelcontextprotocol/server-everything` (over stdio, which Gatehouse starts, and
// over Streamable HTTP, started here) and a FastMCP server written with the official
// Python SDK (end2end/python/fastmcp_server.py, over stdio).
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { freePort } from './server';

export const EVERYTHING_JS = resolve(
  __dirname,
  '../../node_modules/@modelcontextprotocol/server-everything/dist/index.js',
);
export const PYTHON = process.env.GATEHOUSE_PYTHON ?? resolve(__dirname, '../../.venv/bin/python');
export const FASTMCP_SERVER = resolve(__dirname, '../../python/fastmcp_server.py');

/** server-everything's Streamable HTTP mode, on a free port (it reads `PORT`). */
export interface HttpUpstream {
  url: string;
  pid(): number;
  /** Starts it again on the same port, after it was killed. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export async function startEverythingHttp(): Promise<HttpUpstream> {
  const port = await freePort();
  let child: ChildProcess;
  const start = async () => {
    child = spawn(process.execPath, [EVERYTHING_JS, 'streamableHttp'], {
      env: { ...process.env, PORT: String(port) },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    await new Promise<void>((ok, fail) => {
      child.stderr!.on('data', (d) => {
        log += d;
        if (log.includes(`listening on port ${port}`)) ok();
      });
      child.once('exit', (code) => fail(new Error(`server-everything exited with ${code}:\n${log}`)));
    });
  };
  await start();
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    pid: () => child.pid!,
    start,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      await new Promise<void>((done) => {
        child.once('exit', () => done());
        child.kill('SIGKILL');
      });
    },
  };
}

/** The ids of live processes whose command line contains `marker`. */
export function processesWith(marker: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const commandLine = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      const state = readFileSync(`/proc/${entry}/stat`, 'utf8').split(') ')[1]?.[0];
      if (commandLine.includes(marker) && state !== 'Z') pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}
