// Log in through the test OpenID provider in headless Chromium, as a person would.
//
//   node browser-login.mjs --start-url URL --username ID --expect SUBSTRING
//     [--screenshot FILE (default: a file in the temporary profile directory)]
//     [--timeout MS, for the whole walk (default 30000)] [--chromium PATH (CHROMIUM, default /usr/bin/chromium)]
//     [--ignore-https-errors: accept a self-signed certificate, e.g. the edge's own]
//     [--wait-for SELECTOR: then wait until an element matching it is visible (e.g. a rendered
//       plot of a notebook), and scroll it into view for the screenshot]
//     [--steps JSON: then, in order, what a person does: [{"click": SELECTOR}, {"wait":
//       SELECTOR}, {"screenshot": FILE}, ...] (Playwright selectors, e.g. 'role=button[name="NEW"]',
//       'text=/alice-/'); a step's failure names it]
//
// Opens start-url (e.g. http://127.0.0.1:PORT/hub/oauth_login), which leads to the provider's
// login page; types the username into the `username` field and presses "Sign in"; then waits
// until the page's URL contains `expect` (e.g. the client's redirect URI, or "/hub/spawn").
// Prints one JSON line on stdout:
//   {"ok": true|false, "final_url": ..., "title": ..., "status": <HTTP status of the last
//    page load>, "screenshot": <file>, "login_page_seen": true|false, "error" and
//    "page_messages" (the page's last errors, warnings and failed requests) when not ok}
// and exits 0 if ok, 1 if not. Chromium is Debian's (Playwright's own browser downloads are
// not reachable here), run with a fresh profile that is removed at the end.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const { values: opts } = parseArgs({
  options: {
    'start-url': { type: 'string' },
    username: { type: 'string' },
    expect: { type: 'string' },
    screenshot: { type: 'string' },
    timeout: { type: 'string', default: '30000' },
    chromium: { type: 'string', default: process.env.CHROMIUM ?? '/usr/bin/chromium' },
    'ignore-https-errors': { type: 'boolean', default: false },
    'wait-for': { type: 'string' },
    steps: { type: 'string', default: '[]' },
  },
});
if (!opts['start-url'] || !opts.username || !opts.expect) {
  console.error('usage: node browser-login.mjs --start-url URL --username ID --expect SUBSTRING');
  process.exit(2);
}
const timeout = Number(opts.timeout);

// No sandbox (we run as root in a container), no GPU, and none of Chromium's own traffic to
// Google's services, which cannot be reached here and would only slow things down.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

const profile = mkdtempSync(join(tmpdir(), 'browser-login-'));
const screenshot = opts.screenshot ?? join(tmpdir(), `browser-login-${process.pid}.png`);
const result = { ok: false, final_url: null, title: null, status: null, screenshot, login_page_seen: false };
// The page's own errors and warnings, and requests that failed: why a step waited in vain.
const messages = [];
const note = (line) => { messages.push(line); if (messages.length > 30) messages.shift(); };
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout,
    ignoreHTTPSErrors: opts['ignore-https-errors'],
    viewport: { width: 1400, height: 1000 },
  });
  context.setDefaultTimeout(timeout);
  const page = context.pages()[0] ?? await context.newPage();
  // The HTTP status of the last document the main frame loaded (redirects are not documents).
  page.on('response', (response) => {
    if (response.request().isNavigationRequest() && response.frame() === page.mainFrame()
        && !(response.status() >= 300 && response.status() < 400)) {
      result.status = response.status();
    }
    if (response.status() >= 400) {
      note(`${response.status()} ${response.request().method()} ${response.url()}`);
    }
  });
  page.on('console', (message) => {
    if (['error', 'warning'].includes(message.type())) note(`${message.type()}: ${message.text()}`);
  });
  page.on('pageerror', (err) => note(`uncaught: ${err?.message ?? err}`));

  // The whole walk, not only each action, ends within --timeout: the caller waits no longer.
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not done within ${timeout} ms`)), timeout);
  });
  const walk = async () => {
    await page.goto(opts['start-url']);
    // Either the provider's login form, or (if a session already logs us in) the expected page.
    const username = page.locator('input[name="username"]');
    await Promise.race([
      username.waitFor({ state: 'visible' }),
      page.waitForURL((url) => url.href.includes(opts.expect)),
    ]);
    if (await username.isVisible()) {
      result.login_page_seen = true;
      await username.fill(opts.username);
      await page.getByRole('button', { name: 'Sign in' }).click();
    }
    await page.waitForURL((url) => url.href.includes(opts.expect));
    await page.waitForLoadState('load');
    if (opts['wait-for']) {
      const element = page.locator(opts['wait-for']).first();
      await element.waitFor({ state: 'visible' });
      await element.scrollIntoViewIfNeeded();
      result.waited_for = opts['wait-for'];
    }
    result.steps_done = 0;
    for (const step of JSON.parse(opts.steps)) {
      try {
        if (step.click) await page.locator(step.click).first().click();
        if (step.wait) {
          const element = page.locator(step.wait).first();
          await element.waitFor({ state: 'visible' });
          await element.scrollIntoViewIfNeeded();
        }
        if (step.screenshot) await page.screenshot({ path: step.screenshot });
      } catch (err) {
        throw new Error(`step ${result.steps_done + 1} ${JSON.stringify(step)}: ${err?.message ?? err}`);
      }
      result.steps_done += 1;
    }
  };
  await Promise.race([walk(), deadline]).finally(() => clearTimeout(timer));
  result.ok = true;
} catch (err) {
  result.error = String(err?.message ?? err).split('\n')[0];
  result.page_messages = messages;
} finally {
  const page = context?.pages()[0];
  if (page) {
    result.final_url = page.url();
    result.title = await page.title().catch(() => null);
    await page.screenshot({ path: screenshot, fullPage: true }).catch((err) => {
      result.screenshot = null;
      result.screenshot_error = String(err?.message ?? err).split('\n')[0];
    });
  }
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
