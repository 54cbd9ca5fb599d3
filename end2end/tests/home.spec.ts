import { test, expect } from './support/fixtures';

test('the home page says what this server is and shows the MCP URL', async ({ page, gatehouse }) => {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));

  await page.goto(gatehouse.url + '/');
  await expect(page).toHaveTitle('Gatehouse');
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Gatehouse');
  await expect(page.getByText('OAuth 2.1 authorization server')).toBeVisible();
  await expect(page.getByTestId('mcp-url')).toHaveText(`${gatehouse.url}/mcp`);

  // The page hydrates: the button works, which needs the wasm bundle running.
  await expect(page.locator('body[data-hydrated="true"]')).toHaveCount(1);
  await page.getByTestId('toggle-setup').click();
  await expect(page.getByTestId('setup')).toContainText(
    `claude mcp add --transport http gatehouse ${gatehouse.url}/mcp`,
  );
  expect(errors).toEqual([]);
});

test('an unknown page shows the styled error page with 404', async ({ page, gatehouse }) => {
  const response = await page.goto(gatehouse.url + '/nowhere');
  expect(response?.status()).toBe(404);
  await expect(page.getByTestId('error-title')).toHaveText('Page not found');
  // The stylesheet loaded: the card is styled, not bare HTML.
  const border = await page.locator('.error-card').evaluate((el) => getComputedStyle(el).borderTopWidth);
  expect(border).toBe('4px');
});
