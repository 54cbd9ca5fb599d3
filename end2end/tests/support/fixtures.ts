import { test as base, expect } from '@playwright/test';
import { startGatehouse, type Gatehouse } from './server';

/** `gatehouse`: a running server of this test file's own (fresh store, free port). */
export const test = base.extend<{}, { gatehouse: Gatehouse }>({
  gatehouse: [
    async ({}, use) => {
      const server = await startGatehouse();
      await use(server);
      await server.stop();
    },
    { scope: 'worker' },
  ],
});

export { expect };
