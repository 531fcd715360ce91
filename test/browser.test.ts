/**
 * Deputy in a real browser (headless Chromium): a person signs in through the upstream
 * provider's login form, approves an agent's connection and then its consent request with the
 * keyboard, revokes the delegation and watches the service get told, then signs out. Every
 * Deputy page on the way is checked for labelled controls, WCAG AA text contrast and sideways
 * scrolling at 360 px, and the whole run for Content-Security-Policy violations, page errors,
 * console errors and requests leaving the machine. Screenshots go to test-artifacts/browser/.
 *
 * Skips only when /usr/bin/chromium is missing and DEPUTY_REQUIRE_BROWSER is not set.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { decodeJwt } from 'jose';
import type { Locator, Page } from 'playwright-core';
import { addAgent, basic, ID_JAG, ID_TOKEN, mint, post, type TestAgent } from './helpers/agent.ts';
import {
  assertClean,
  checkPage,
  horizontalOverflow,
  launchChromium,
  NARROW,
  resetArtifacts,
  screenshot,
  skipReason,
  unlabelled,
  type TestBrowser,
} from './helpers/chromium.ts';
import { listen, startDeputy, tempDir, upstreamEnv, type RunningDeputy } from './helpers/deputy.ts';
import { startAuthMdService, type AuthMdService } from './helpers/services.ts';
import { startUpstream, type TestUpstream } from './helpers/upstream.ts';

const skip = skipReason();
if (skip) console.log(`# browser tests skipped: ${skip}`);

const AGENT = 'Research Bot';
const SERVICE = 'Acme Files';
const MINUTE = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC$/;

/** The dt → dd text pairs of a description list. */
async function facts(list: Locator): Promise<Record<string, string>> {
  const terms = await list.locator(':scope > dt').allTextContents();
  const values = await list.locator(':scope > dd').allTextContents();
  assert.equal(terms.length, values.length, 'every term has a value');
  return Object.fromEntries(terms.map((term, i) => [term.trim(), (values[i] ?? '').replace(/\s+/g, ' ').trim()]));
}

/** Waits for the page with this h1, and for it to have loaded (its stylesheet applies). */
async function heading(page: Page, name: string): Promise<void> {
  await page.getByRole('heading', { level: 1, name, exact: true }).waitFor();
  await page.waitForLoadState('load');
}

async function text(locator: Locator): Promise<string> {
  return ((await locator.textContent()) ?? '').replace(/\s+/g, ' ').trim();
}

describe('Deputy in headless Chromium', { skip }, () => {
  const dir = tempDir();
  let upstream: TestUpstream;
  let deputy: RunningDeputy;
  let service: AuthMdService;
  let agent: TestAgent;
  let chromium: TestBrowser;
  let page: Page;
  let idToken: string;
  let mintedJti: string;
  let serviceCredential: string;

  const mintParams = () => ({
    audience: service.issuer,
    resource: service.resource,
    scope: 'read',
    subject_token: idToken,
    subject_token_type: ID_TOKEN,
  });

  before(async () => {
    resetArtifacts();
    const listening = await listen();
    upstream = await startUpstream(`${listening.url}/login/callback`);
    upstream.accounts.set('ada', {
      sub: 'ada',
      email: 'ada.lovelace@analytical-engine.example',
      email_verified: true,
      name: 'Ada Lovelace',
    });
    deputy = await startDeputy({
      dbPath: `${dir.path}/deputy.db`,
      env: {
        ...upstreamEnv(upstream),
        DEPUTY_ALLOW_LOOPBACK_SERVICES: 'true',
        DEPUTY_EVENT_RETRY_BASE_MS: '40',
        DEPUTY_EVENT_POLL_MS: '50',
      },
      listening,
    });
    service = await startAuthMdService({ trustedIssuers: [deputy.url], name: SERVICE });
    agent = await addAgent(deputy, AGENT);
    chromium = await launchChromium();
    page = chromium.page;
  });

  after(async () => {
    await chromium?.close();
    await deputy?.stop();
    await service?.close();
    await upstream?.close();
    dir.remove();
  });

  test('signs in through the upstream provider’s login form', async () => {
    await page.goto(`${deputy.url}/`);
    await heading(page, 'Deputy');
    assert.equal(await page.title(), 'Home · Deputy');
    await checkPage(page, '01-signed-out');

    await page.getByRole('link', { name: 'Sign in', exact: true }).click();
    // The upstream provider's own form (a test fixture on another origin).
    await page.waitForURL(`${upstream.issuer}/login/**`);
    await page.locator('input[name="sub"]').fill('ada');
    await screenshot(page, '02-upstream-login');
    await page.getByRole('button', { name: 'Sign in' }).click();

    await heading(page, 'Signed in as Ada Lovelace');
    assert.equal(page.url(), `${deputy.url}/`);
    const claims = await facts(page.locator('dl.claims'));
    assert.match(claims['Deputy user id'] ?? '', /\S/);
    assert.deepEqual(
      { ...claims, 'Deputy user id': undefined },
      {
        'Deputy user id': undefined,
        Email: 'ada.lovelace@analytical-engine.example (verified)',
        'Signed in through': upstream.issuer,
        Methods: 'pwd, otp',
        Assurance: 'urn:example:loa:2',
      },
    );
    assert.equal(await text(page.locator('header .who')), 'Ada Lovelace');
    assert.equal(await page.getByRole('button', { name: 'Sign out' }).count(), 1);
    assert.equal(
      await text(page.locator('section[aria-labelledby="agents-heading"] p')),
      'No agent is connected. An agent connects by asking you to approve it, from the agent itself.',
    );
    assert.equal(await page.locator('.banner').count(), 0, 'no development sign-in banner');
    await checkPage(page, '03-home-signed-in');
    assertClean(chromium.observed, 'sign-in');
  });

  test('connects the agent with the device flow, confirmed and approved in the browser', async () => {
    const device = await post(
      `${deputy.url}/device_authorization`,
      { scope: 'openid offline_access email profile' },
      { authorization: basic(agent) },
    );
    assert.equal(device.status, 200, JSON.stringify(device.body));

    // The link carries the code; oidc-provider's page posts it back by itself (its inline
    // script is allowed by hash under Deputy's policy).
    await page.goto(device.body.verification_uri_complete as string);
    await heading(page, `Connect ${AGENT}?`);
    assert.equal(await text(page.locator('strong.code')), device.body.user_code);
    await checkPage(page, '04-device-confirm');
    // Continue has the focus: Enter confirms.
    assert.equal(await page.evaluate<string>('document.activeElement.textContent.trim()'), 'Continue');
    await page.keyboard.press('Enter');

    await heading(page, `Connect ${AGENT}?`);
    await page.waitForURL(`${deputy.url}/interaction/**`);
    assert.deepEqual(
      (await page.locator('.card ul li').allTextContents()).map((s) => s.trim()),
      [
        'Know who you are on Deputy',
        'Stay connected when you are away (until you disconnect it)',
        'See your email address',
        'See your name',
      ],
    );
    await checkPage(page, '05-connect');
    await page.getByRole('button', { name: 'Connect', exact: true }).click();

    await heading(page, 'Done');
    assert.equal(await text(page.locator('main p').first()), 'You can go back to the agent now.');
    await checkPage(page, '06-device-done');

    const tokens = await post(
      `${deputy.url}/token`,
      { grant_type: 'urn:ietf:params:oauth:grant-type:device_code', device_code: device.body.device_code as string },
      { authorization: basic(agent) },
    );
    assert.equal(tokens.status, 200, JSON.stringify(tokens.body));
    idToken = tokens.body.id_token as string;

    await page.goto(`${deputy.url}/`);
    const card = page.locator('section[aria-labelledby="agents-heading"] li.card');
    assert.equal(await card.count(), 1);
    assert.equal(await text(card.locator('strong')), AGENT);
    assert.match(await text(card.locator('.muted')), /^Connected \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC · sees your email and name · stays connected$/);
    assertClean(chromium.observed, 'device flow');
  });

  test('the agent’s mint needs consent; the person approves it with the keyboard and the retry mints', async () => {
    const first = await mint(deputy, agent, mintParams());
    assert.equal(first.status, 400, JSON.stringify(first.body));
    assert.equal(first.body.error, 'consent_required');
    const consentUri = first.body.consent_uri as string;
    assert.ok(consentUri.startsWith(`${deputy.url}/consent/`), consentUri);

    await page.goto(consentUri);
    await heading(page, `${AGENT} asks to speak for you`);
    const serviceCard = page.locator('main > .card').nth(1);
    assert.equal(await text(serviceCard.locator('strong')), SERVICE);
    assert.equal(await text(serviceCard.locator('.muted')), 'As the service publishes itself');
    assert.equal(
      await serviceCard.locator('img.logo').evaluate((img) => (img as unknown as { naturalWidth: number }).naturalWidth),
      48,
      'the service logo loads (img-src https:)',
    );
    // The resources once, in the service's card; the scopes asked for, and the choice ticked.
    assert.deepEqual(await facts(serviceCard.locator('dl.facts')), { Audience: service.issuer, Resources: service.resource });
    assert.deepEqual(await facts(page.locator('main > dl.facts')), { 'Scopes asked for': 'read' });
    assert.equal(await page.getByLabel('read', { exact: true }).isChecked(), true);
    assert.equal(await page.getByLabel('write', { exact: true }).isChecked(), false);
    const once = page.getByLabel('Once: one assertion, within the next 24 hours');
    const always = page.getByLabel('Always: until I revoke it');
    assert.equal(await once.isChecked(), true, 'once is the default');
    await checkPage(page, '07-consent');

    // Keyboard only: arrow from "once" to "always", then Tab to Approve and press Enter.
    await once.focus();
    await page.keyboard.press('ArrowDown');
    assert.equal(await always.isChecked(), true);
    const approve = page.getByRole('button', { name: 'Approve', exact: true });
    let tabs = 0;
    while (!(await approve.evaluate((button) => button === button.ownerDocument.activeElement))) {
      tabs += 1;
      assert.ok(tabs <= 8, 'Approve is reachable with Tab from the choice of mode');
      await page.keyboard.press('Tab');
    }
    await page.keyboard.press('Enter');

    await heading(page, 'Approved');
    assert.equal(
      await text(page.locator('main p').first()),
      `The agent can now get an assertion of your identity for ${SERVICE}. Go back to the agent; it can try again.`,
    );
    await checkPage(page, '08-consent-approved');

    const minted = await mint(deputy, agent, mintParams());
    assert.equal(minted.status, 200, JSON.stringify(minted.body));
    assert.equal(minted.body.issued_token_type, ID_JAG);
    assert.equal(minted.body.scope, 'read');
    mintedJti = decodeJwt(minted.body.access_token as string).jti as string;

    // The agent registers at the service with it, so the service has something to revoke.
    const registration = await fetch(`${service.url}/agent/auth`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        type: 'identity_assertion',
        assertion_type: ID_JAG,
        assertion: minted.body.access_token,
        requested_credential_type: 'access_token',
      }),
    });
    const registered = (await registration.json()) as { credential: string };
    assert.equal(registration.status, 200, JSON.stringify(registered));
    serviceCredential = registered.credential;
    assertClean(chromium.observed, 'consent');
  });

  test('the person revokes the delegation and sees the service told', async () => {
    await page.goto(`${deputy.url}/`);
    const card = page.locator('li.card.delegation', { hasText: SERVICE });
    assert.equal(await card.count(), 1);
    assert.equal(await text(card.locator('strong')), SERVICE);
    const active = await facts(card.locator('dl.facts'));
    assert.match(active.Uses ?? '', /^1, last \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC$/);
    assert.deepEqual(
      { ...active, Uses: undefined },
      { Audience: service.issuer, Scopes: 'read', Mode: 'always', Expires: 'never', Uses: undefined, Status: 'active' },
    );
    await checkPage(page, '09-home-delegation-active');

    await card.getByRole('button', { name: `Revoke the delegation to ${SERVICE}` }).click();
    await page.waitForURL(`${deputy.url}/`);
    await card.locator('dd.status', { hasText: 'revoked' }).waitFor();
    assert.equal(await card.getByRole('button', { name: /Revoke/ }).count(), 0, 'no Revoke button on a revoked delegation');

    // The page shows delivery as it was when rendered: reload until the service has been told.
    const deadline = Date.now() + 10_000;
    let delivery = card.locator('dd.delivery');
    while (!(await delivery.getAttribute('class'))?.split(' ').includes('delivery-delivered')) {
      assert.ok(Date.now() < deadline, `delivered within 10 s; the page says: ${await text(delivery)}`);
      await sleep(100);
      await page.reload();
      delivery = card.locator('dd.delivery');
    }
    const told = await text(delivery);
    assert.match(told, /^Service told /);
    assert.match(told.slice('Service told '.length), MINUTE);
    const revoked = await facts(card.locator('dl.facts'));
    assert.equal(revoked.Status, 'revoked');
    assert.equal(revoked.Revocation, told);
    await checkPage(page, '10-home-revoked-delivered');

    assert.equal(service.events.length, 1, 'the service received one revocation event');
    assert.equal(service.events[0]?.claims.iss, deputy.url);
    const me = await fetch(`${service.url}/api/me`, { headers: { authorization: `Bearer ${serviceCredential}` } });
    assert.equal(me.status, 401, 'the service dropped the credential');
    const again = await mint(deputy, agent, mintParams());
    assert.equal(again.body.error, 'consent_required', 'minting stopped');

    // The audit trail names the one assertion minted, by jti, and the delivery.
    await card.getByRole('link', { name: `Assertions issued to ${AGENT} under its delegation to ${SERVICE}`, exact: true }).click();
    await heading(page, `${SERVICE} · ${AGENT}`);
    const audit = await facts(page.locator('main > dl.facts'));
    assert.deepEqual(audit, {
      Audience: service.issuer,
      Scopes: 'read',
      Mode: 'always',
      Status: 'revoked',
      Uses: '1',
      Revocation: told,
    });
    const rows = page.locator('table tbody tr');
    assert.equal(await rows.count(), 1);
    const cells = (await rows.first().locator('td').allTextContents()).map((s) => s.trim());
    assert.deepEqual(cells.slice(1), [AGENT, service.issuer, 'read', mintedJti]);
    await checkPage(page, '11-delegation-audit');
    assertClean(chromium.observed, 'revocation');
  });

  test('at 360×740 the home, delegation and consent pages do not scroll sideways, and every control has a label', async () => {
    await page.setViewportSize(NARROW);
    try {
      const narrow = async (name: string) => {
        const { overflow, culprits } = await horizontalOverflow(page);
        assert.ok(overflow <= 0, `${name}: scrolls sideways by ${overflow}px: ${culprits.join(', ')}`);
        assert.deepEqual(await unlabelled(page), [], `${name}: controls without an accessible name`);
        await screenshot(page, `${name}-360`);
      };

      await page.goto(`${deputy.url}/`);
      await heading(page, 'Signed in as Ada Lovelace');
      await narrow('12-home');

      // Adding a delegation by service URL: the form's controls found by their labels.
      await page.getByLabel('Agent', { exact: true }).selectOption({ label: AGENT });
      await page.getByLabel('Service address').fill(service.resource);
      await page.getByRole('button', { name: 'Look up the service' }).click();
      await heading(page, `Allow ${AGENT} to speak for you?`);
      assert.equal(await page.getByLabel('read', { exact: true }).isChecked(), false);
      assert.equal(await page.getByLabel('write', { exact: true }).isChecked(), false);
      assert.equal(await page.getByLabel('Date (for “until a date”)').getAttribute('type'), 'date');
      await narrow('13-delegation-new');

      await page.goto(`${deputy.url}/`);
      await page.getByRole('link', { name: `Assertions issued to ${AGENT} under its delegation to ${SERVICE}`, exact: true }).click();
      await heading(page, `${SERVICE} · ${AGENT}`);
      await narrow('14-delegation-audit');
      // Each assertion reads as labelled lines, every value inside the screen, none clipped.
      const cells = page.locator('table tbody td');
      assert.equal(await cells.count(), 5);
      for (const cell of await cells.all()) {
        const box = await cell.boundingBox();
        assert.ok(box !== null && box.x >= 0 && box.x + box.width <= NARROW.width, `${await text(cell)} fits in 360px`);
        assert.ok(box.height < 60, `${await text(cell)} is not squeezed into a thin column (${box.height}px tall)`);
      }
      assert.equal(
        await page.getByRole('cell', { name: mintedJti }).count(),
        1,
        'the jti cell keeps its table role when laid out as a block',
      );

      const request = await mint(deputy, agent, mintParams());
      assert.equal(request.body.error, 'consent_required');
      await page.goto(request.body.consent_uri as string);
      await heading(page, `${AGENT} asks to speak for you`);
      await narrow('15-consent');

      // Deny, by keyboard too: focus the button and press Enter.
      await page.getByRole('button', { name: 'Deny', exact: true }).focus();
      await page.keyboard.press('Enter');
      await heading(page, 'Denied');
      assert.equal(
        await text(page.locator('main p').first()),
        `The agent will not get an assertion of your identity for ${SERVICE}.`,
      );
      await narrow('16-consent-denied');
      // The agent is told, rather than sent a new link to ask again.
      const refused = await mint(deputy, agent, mintParams());
      assert.equal(refused.status, 400);
      assert.equal(refused.body.error, 'access_denied');
    } finally {
      await page.setViewportSize({ width: 1280, height: 800 });
    }
    assertClean(chromium.observed, 'narrow screen');
  });

  test('signs out with the keyboard; someone with a long address and no name fits the narrow screen too', async () => {
    upstream.accounts.set('grace', {
      sub: 'grace',
      email: 'grace.brewster.murray.hopper@navy-computation-laboratory.example',
      email_verified: false,
    });
    await page.goto(`${deputy.url}/`);
    // The first Tab reaches the skip link, which takes the keyboard past the header.
    await page.keyboard.press('Tab');
    assert.equal(await page.locator(':focus').textContent(), 'Skip to content');
    await page.keyboard.press('Enter');
    assert.equal(await page.locator(':focus').getAttribute('id'), 'main');
    await page.getByRole('button', { name: 'Sign out', exact: true }).focus();
    await page.keyboard.press('Enter');
    await heading(page, 'Deputy');
    assert.equal(await page.getByRole('button', { name: 'Sign out' }).count(), 0);
    const refused = await page.goto(`${deputy.url}/delegations/dlg_anything`);
    assert.equal(refused?.status(), 401);
    await heading(page, 'Sign in first');
    // Chromium logs the 401 it was just asked for; that one console error is expected.
    const logged = chromium.observed.console.pop();
    assert.match(logged?.text ?? '', /status of 401 \(Unauthorized\)/);
    assert.equal(logged?.url, `${deputy.url}/delegations/dlg_anything`);

    // Forget the upstream provider's session too, so it asks who is signing in.
    await chromium.context.clearCookies({ domain: 'localhost' });
    await page.setViewportSize(NARROW);
    try {
      await page.goto(`${deputy.url}/login`);
      await page.waitForURL(`${upstream.issuer}/login/**`);
      await page.locator('input[name="sub"]').fill('grace');
      await page.getByRole('button', { name: 'Sign in' }).click();
      await heading(page, 'Signed in as grace.brewster.murray.hopper@navy-computation-laboratory.example');
      assert.equal(await text(page.locator('header .who')), 'grace.brewster.murray.hopper@navy-computation-laboratory.example');
      const claims = await facts(page.locator('dl.claims'));
      assert.equal(claims.Email, 'grace.brewster.murray.hopper@navy-computation-laboratory.example (not verified)');
      assert.equal(
        await text(page.locator('section[aria-labelledby="delegations-heading"] p')),
        'You have not allowed any agent to speak for you to a service yet.',
      );
      const { overflow, culprits } = await horizontalOverflow(page);
      assert.ok(overflow <= 0, `scrolls sideways by ${overflow}px: ${culprits.join(', ')}`);
      await screenshot(page, '17-home-long-address-360');
    } finally {
      await page.setViewportSize({ width: 1280, height: 800 });
    }
    await checkPage(page, '17-home-long-address');
    assertClean(chromium.observed, 'sign-out and second person');
  });

  test('no Content-Security-Policy violation, page error or console error in the whole run', () => {
    assertClean(chromium.observed, 'the whole run');
  });
});
