// Drives the operator console (GET /admin/console) in the system's headless Chromium with
// playwright-core, for tests/operator_console_in_browser.rs. Input: one JSON object in the
// CONSOLE_TEST environment variable. Output: one JSON line on stdout with what the page showed
// (the Rust test asserts on it); diagnostics on stderr. Exits non-zero on any step that fails.
//
// Steps, each a "phase" that console messages are tagged with:
//   load       open the page, enter the token, wait for every expected replica row
//   publish    publish from the form, wait for its id in the result and in the recent events
//   bad_params publish with params that are not JSON, wait for the server's error
//   wrong      change the token to a wrong one, wait for the 401 message
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const input = JSON.parse(process.env.CONSOLE_TEST || '{}');
const { chromium } = require(input.playwright_core);
const T = input.step_timeout_ms || 20000;

const out = { console: [], page_errors: [], failed_requests: [] };
let phase = 'load';
const log = (...a) => console.error('[console.mjs]', ...a);

const browser = await chromium.launch({
  executablePath: input.chromium || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  page.on('console', (m) => {
    out.console.push({ phase, type: m.type(), text: m.text() });
    log(phase, m.type(), m.text());
  });
  page.on('pageerror', (e) => { out.page_errors.push({ phase, text: String(e) }); log('pageerror', e); });
  page.on('requestfailed', (r) => out.failed_requests.push({ phase, url: r.url(), error: r.failure()?.errorText }));

  // load
  const resp = await page.goto(input.url, { waitUntil: 'load' });
  out.page_status = resp.status();
  out.csp = resp.headers()['content-security-policy'] || null;
  await page.locator('#token').waitFor({ state: 'visible', timeout: T });
  out.asked_for_token = await page.locator('#auth').isVisible();
  await page.fill('#token', input.token);
  await page.click('#token-form button[type=submit]');
  await page.waitForFunction(
    (n) => document.querySelectorAll('#replicas tbody tr[data-replica]').length === n,
    input.expect_replicas, { timeout: T });
  out.replicas = await page.$$eval('#replicas tbody tr[data-replica]', (rows) => rows.map((r) => ({
    id: r.dataset.replica,
    cells: [...r.cells].map((c) => c.textContent),
  })));
  out.log_panel = await page.$eval('#log', (dl) => dl.textContent);
  out.session_storage = await page.evaluate(() => ({ ...sessionStorage }));
  out.local_storage_keys = await page.evaluate(() => Object.keys(localStorage));

  // publish
  phase = 'publish';
  await page.fill('#pub-method', input.publish.method);
  await page.fill('#pub-params', input.publish.params);
  await page.fill('#pub-key', input.publish.key);
  await page.click('#publish-form button[type=submit]');
  await page.locator('#publish-result[data-id]').waitFor({ timeout: T });
  out.published_id = await page.$eval('#publish-result', (e) => e.dataset.id);
  out.publish_text = await page.textContent('#publish-result');
  const row = page.locator(`#recent tbody tr[data-event-id="${out.published_id}"]`);
  await row.waitFor({ timeout: T });
  out.recent_row = await row.evaluate((r) => [...r.cells].map((c) => c.textContent));
  out.recent_first_id = await page.$eval('#recent tbody tr', (r) => r.dataset.eventId);
  // The events chart counts the publish once a one-second point has been taken.
  await page.waitForFunction(
    () => Number(document.querySelector('#chart-events').dataset.max) > 0,
    null, { timeout: T });
  out.chart_events_label = await page.textContent('#chart-events text');
  out.screenshot = path.join(input.screenshot_dir, 'console.png');
  await page.screenshot({ path: out.screenshot, fullPage: true });

  // bad_params
  phase = 'bad_params';
  await page.fill('#pub-params', input.bad_params);
  await page.fill('#pub-key', '');
  await page.click('#publish-form button[type=submit]');
  await page.locator('#publish-result.error').waitFor({ timeout: T });
  out.bad_params_text = await page.textContent('#publish-result');

  // wrong
  phase = 'wrong';
  await page.click('#change-token');
  await page.fill('#token', input.wrong_token);
  await page.click('#token-form button[type=submit]');
  await page.locator('#auth-error').waitFor({ state: 'visible', timeout: T });
  out.wrong_token_text = await page.textContent('#auth-error');
  out.main_hidden_after_wrong = await page.locator('#main').isHidden();
  out.session_storage_after_wrong = await page.evaluate(() => ({ ...sessionStorage }));
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e && e.stack || e);
  process.exitCode = 1;
} finally {
  await browser.close();
  process.stdout.write(JSON.stringify(out) + '\n');
}
