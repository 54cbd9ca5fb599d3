import { defineConfig, devices } from '@playwright/test';

// Debian's chromium, never a browser that Playwright downloads (there is no network
// for that here). The flags keep it from reaching out to services at start-up.
const chromium = {
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
};

export default defineConfig({
  testDir: './tests',
  reporter: 'list',
  timeout: 30_000,
  // Each test file starts its own server on a free port with a fresh store, so files
  // run in parallel; two workers match the machines' two cores.
  workers: 2,
  forbidOnly: !!process.env.CI,
  use: {
    trace: 'retain-on-failure',
  },
  projects: [
    {
      name: 'chromium',
      use: { ...devices['Desktop Chrome'], launchOptions: chromium },
    },
  ],
});
