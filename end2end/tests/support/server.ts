// Starts the real gatehouse binary on a free port with a fresh embedded store, the way
// a person runs it. `cargo xtask test` builds it and sets GATEHOUSE_BIN and
// GATEHOUSE_SITE_ROOT.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export interface Gatehouse {
  /** The public URL, e.g. http://127.0.0.1:43117 */
  url: string;
  dataDir: string;
  /** What the process printed since it last started. */
  output(): string;
  /** Stops the process and starts it again on the same port and store. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

const bin = process.env.GATEHOUSE_BIN ?? resolve(__dirname, '../../../target/debug/gatehouse');
const siteRoot = process.env.GATEHOUSE_SITE_ROOT ?? resolve(__dirname, '../../../target/site');

export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const probe = createServer();
    probe.once('error', fail);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => ok(port));
    });
  });
}

async function waitHealthy(url: string, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) {
      throw new Error(`gatehouse exited with ${child.exitCode}:\n${log()}`);
    }
    try {
      const response = await fetch(`${url}/healthz`);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`gatehouse did not become healthy at ${url}:\n${log()}`);
}

export async function startGatehouse(extraArgs: string[] = []): Promise<Gatehouse> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const dataDir = mkdtempSync(join(tmpdir(), 'gatehouse-e2e-'));
  let child: ChildProcess;
  let output = '';

  const launch = async () => {
    output = '';
    child = spawn(
      bin,
      ['serve', '--bind', `127.0.0.1:${port}`, '--store', `embedded:${join(dataDir, 'gatehouse.redb')}`, ...extraArgs],
      {
        env: { ...process.env, GATEHOUSE_SITE_ROOT: siteRoot, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    child.stdout?.on('data', (d) => (output += d));
    child.stderr?.on('data', (d) => (output += d));
    await waitHealthy(url, child, () => output);
  };

  const stopProcess = async () => {
    if (child.exitCode !== null) return;
    await new Promise<void>((done) => {
      child.once('exit', () => done());
      child.kill('SIGTERM');
      // A graceful shutdown waits for open streams; do not let a test hang on one.
      setTimeout(() => child.exitCode === null && child.kill('SIGKILL'), 5_000).unref();
    });
  };

  await launch();
  return {
    url,
    dataDir,
    output: () => output,
    restart: async () => {
      await stopProcess();
      await launch();
    },
    stop: async () => {
      await stopProcess();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
