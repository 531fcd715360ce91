/**
 * Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by playwright-core
 * (never playwright's own browser download), a fresh profile per launch, and a watch on what the
 * page reports: console messages, uncaught errors, Content-Security-Policy violations and
 * requests that left the machine.
 *
 * The code that runs inside the page is passed as strings: the project compiles without the DOM
 * library, and those few lines are checked by running them.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

export const CHROMIUM_PATH = '/usr/bin/chromium';

/** Flags for a closed network: without the background-networking ones Chromium stalls on it. */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'test-artifacts', 'browser');

/**
 * Why the browser tests cannot run here, or false when they can. With DEPUTY_REQUIRE_BROWSER set
 * (CI) a missing Chromium is not a reason to skip: the tests run and fail saying what is missing.
 */
export function skipReason(): string | false {
  if (existsSync(CHROMIUM_PATH)) return false;
  if (process.env.DEPUTY_REQUIRE_BROWSER) return false;
  return `${CHROMIUM_PATH} is missing (apt-get install chromium); set DEPUTY_REQUIRE_BROWSER=1 to fail instead of skipping`;
}

export interface Observed {
  console: { type: string; text: string; url: string }[];
  pageErrors: string[];
  cspViolations: { directive: string; blocked: string; url: string; sample: string }[];
  /** Requests to anything but this machine (all refused, except the fixture logos). */
  external: string[];
  failedRequests: string[];
}

export interface TestBrowser {
  context: BrowserContext;
  page: Page;
  observed: Observed;
  close(): Promise<void>;
}

/** A logo for `https://service.example/...`, the fixture services' published logo. */
const LOGO_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48"><rect width="48" height="48" rx="8" fill="#2f55d4"/></svg>';
const LOGO_HOSTS = new Set(['service.example']);
const LOCAL_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

export async function launchChromium(): Promise<TestBrowser> {
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(
      `DEPUTY_REQUIRE_BROWSER is set but ${CHROMIUM_PATH} is missing: install Debian's chromium package (apt-get install chromium)`,
    );
  }
  const profile = mkdtempSync(join(tmpdir(), 'deputy-chromium-'));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 800 },
      locale: 'en-US',
      timezoneId: 'UTC',
      timeout: 30_000,
    });
  } catch (error) {
    rmSync(profile, { recursive: true, force: true });
    throw error;
  }

  const observed: Observed = { console: [], pageErrors: [], cspViolations: [], external: [], failedRequests: [] };

  // Nothing leaves the machine: the fixture logo host answers from here, anything else is
  // refused and recorded.
  await context.route(
    (url) => !LOCAL_HOSTS.has(url.hostname) && url.protocol !== 'data:',
    async (route) => {
      const url = new URL(route.request().url());
      if (LOGO_HOSTS.has(url.hostname)) {
        await route.fulfill({ status: 200, contentType: 'image/svg+xml', body: LOGO_SVG });
        return;
      }
      observed.external.push(url.href);
      await route.abort('blockedbyclient');
    },
  );

  // The page reports each CSP violation as it happens (the console also carries them as text).
  await context.exposeBinding('__deputyCspViolation', (_source, violation: Observed['cspViolations'][number]) => {
    observed.cspViolations.push(violation);
  });
  await context.addInitScript({
    content: `document.addEventListener('securitypolicyviolation', (e) => {
      window.__deputyCspViolation({
        directive: e.effectiveDirective, blocked: e.blockedURI, url: e.documentURI, sample: e.sample || '',
      });
    });`,
  });

  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (message) => {
    observed.console.push({ type: message.type(), text: message.text(), url: message.location().url });
  });
  page.on('pageerror', (error) => observed.pageErrors.push(`${error.name}: ${error.message}`));
  page.on('requestfailed', (request) => {
    observed.failedRequests.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText ?? '?'}`);
  });
  page.setDefaultTimeout(10_000);
  page.setDefaultNavigationTimeout(15_000);

  return {
    context,
    page,
    observed,
    close: async () => {
      await context.close().catch(() => undefined);
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Fails on any CSP violation, uncaught page error, console error or request off the machine. */
export function assertClean(observed: Observed, step: string): void {
  const csp = observed.console.filter((m) => /Content[- ]Security[- ]Policy/i.test(m.text));
  assert.deepEqual(observed.cspViolations, [], `${step}: Content-Security-Policy violations`);
  assert.deepEqual(csp, [], `${step}: Content-Security-Policy messages in the console`);
  assert.deepEqual(observed.pageErrors, [], `${step}: uncaught errors in the page`);
  assert.deepEqual(
    observed.console.filter((m) => m.type === 'error'),
    [],
    `${step}: errors in the console`,
  );
  assert.deepEqual(observed.external, [], `${step}: requests that left the machine`);
  assert.deepEqual(observed.failedRequests, [], `${step}: failed requests`);
}

/** Writes a full-page screenshot to test-artifacts/browser/<name>.png. */
export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Empties the artifact folder, so what is there after a run is this run's. */
export function resetArtifacts(): void {
  rmSync(ARTIFACTS, { recursive: true, force: true });
  mkdirSync(ARTIFACTS, { recursive: true });
}

/**
 * Form controls and buttons without an accessible name: inputs, selects and textareas (hidden
 * inputs aside) need a non-empty <label> (wrapping or `for`), `aria-label` or `aria-labelledby`;
 * buttons and links need text or `aria-label`.
 */
export async function unlabelled(page: Page): Promise<string[]> {
  return page.evaluate<string[]>(`(() => {
    const text = (el) => (el ? el.textContent.replace(/\\s+/g, ' ').trim() : '');
    const byIds = (ids) => (ids || '').split(/\\s+/).filter(Boolean).map((id) => text(document.getElementById(id))).join(' ').trim();
    const missing = [];
    for (const el of document.querySelectorAll('input, select, textarea')) {
      if (el.type === 'hidden') continue;
      const fromLabels = [...(el.labels || [])].map(text).join(' ').trim();
      const name = fromLabels || (el.getAttribute('aria-label') || '').trim() || byIds(el.getAttribute('aria-labelledby'));
      if (name === '') missing.push(el.outerHTML);
    }
    for (const el of document.querySelectorAll('button, a[href]')) {
      const name = (el.getAttribute('aria-label') || '').trim() || text(el) || byIds(el.getAttribute('aria-labelledby'));
      if (name === '') missing.push(el.outerHTML);
    }
    return missing;
  })()`);
}

/**
 * How far the page scrolls sideways (0 when it does not), with the elements that stick out past
 * the viewport's right edge, to say what to fix.
 */
export async function horizontalOverflow(page: Page): Promise<{ overflow: number; culprits: string[] }> {
  return page.evaluate<{ overflow: number; culprits: string[] }>(`(() => {
    const root = document.documentElement;
    const width = root.clientWidth;
    const culprits = [];
    for (const el of document.body.querySelectorAll('*')) {
      const box = el.getBoundingClientRect();
      const spills = el.scrollWidth > el.clientWidth + 0.5 && getComputedStyle(el).overflowX === 'visible' && box.left + el.scrollWidth > width + 0.5;
      if (box.width > 0 && (box.right > width + 0.5 || spills)) {
        culprits.push(el.tagName.toLowerCase() + (el.className ? '.' + String(el.className).split(' ').join('.') : '') + ' right=' + Math.round(box.right));
      }
    }
    return { overflow: root.scrollWidth - width, culprits: culprits.slice(0, 10) };
  })()`);
}

/** Whether Deputy's stylesheet applied (a blocked or missing one leaves `main` unconstrained). */
export async function stylesheetApplied(page: Page): Promise<boolean> {
  return page.evaluate<boolean>(`getComputedStyle(document.querySelector('main')).maxWidth === '704px'`);
}

/**
 * Text whose contrast with what is behind it is below WCAG 2 AA: 4.5:1, or 3:1 for large text
 * (24 px, or 18.66 px bold). Colours are composited as painted: backgrounds and `opacity` of
 * every ancestor count.
 */
export async function lowContrast(page: Page): Promise<string[]> {
  return page.evaluate<string[]>(`(() => {
    const parse = (c) => {
      const m = /rgba?\\(([^)]+)\\)/.exec(c);
      if (!m) return [0, 0, 0, 0];
      const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
      return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
    };
    const over = (top, below) => [0, 1, 2].map((i) => top[i] * top[3] + below[i] * (1 - top[3]));
    const mix = (a, b, t) => [0, 1, 2].map((i) => a[i] * t + b[i] * (1 - t));
    const lum = (c) => {
      const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
      return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
    };
    // The colour painted at a pixel of the last element of the chain, with or without its text.
    const painted = (chain, withText) => {
      const at = (i, behind) => {
        const style = getComputedStyle(chain[i]);
        const layer = over(parse(style.backgroundColor), behind);
        const inner = i === chain.length - 1 ? (withText ? over(parse(style.color), layer) : layer) : at(i + 1, layer);
        return mix(inner, behind, Number(style.opacity));
      };
      return at(0, [255, 255, 255]);
    };
    const failures = [];
    const seen = new Set();
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
      const el = walker.currentNode.parentElement;
      if (!el || seen.has(el) || walker.currentNode.textContent.trim() === '') continue;
      seen.add(el);
      const box = el.getBoundingClientRect();
      const style = getComputedStyle(el);
      if (box.width === 0 || box.height === 0 || style.visibility === 'hidden') continue;
      const chain = [];
      for (let e = el; e; e = e.parentElement) chain.unshift(e);
      const fg = lum(painted(chain, true));
      const bg = lum(painted(chain, false));
      const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
      const size = parseFloat(style.fontSize);
      const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
      if (ratio < (large ? 3 : 4.5)) {
        failures.push(el.tagName.toLowerCase() + ' "' + el.textContent.trim().slice(0, 40) + '" ' + ratio.toFixed(2) + ':1');
      }
    }
    return failures;
  })()`);
}

export const NARROW = { width: 360, height: 740 };

/**
 * The checks every Deputy page gets: styled, every control labelled, text contrast at least
 * WCAG AA, no sideways scrolling at 360×740, and a screenshot at both the normal and the narrow
 * size.
 */
export async function checkPage(page: Page, name: string): Promise<void> {
  await page.waitForLoadState('load');
  assert.ok(await stylesheetApplied(page), `${name}: the stylesheet applies`);
  assert.deepEqual(await unlabelled(page), [], `${name}: controls without an accessible name`);
  assert.deepEqual(await lowContrast(page), [], `${name}: text below WCAG AA contrast`);
  await screenshot(page, name);

  const wide = page.viewportSize();
  await page.setViewportSize(NARROW);
  try {
    const { overflow, culprits } = await horizontalOverflow(page);
    assert.ok(overflow <= 0, `${name}: scrolls sideways by ${overflow}px at 360px wide: ${culprits.join(', ')}`);
    await screenshot(page, `${name}-narrow`);
  } finally {
    if (wide !== null) await page.setViewportSize(wide);
  }
}
