import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { safeReturnTo } from '../src/upstream/routes.ts';
import { Browser, formAction, hiddenField, type Page } from './helpers/browser.ts';
import { listen, sqlOn, startDeputy, tempDir, upstreamEnv, type RunningDeputy } from './helpers/deputy.ts';
import { startUpstream, type TestUpstream } from './helpers/upstream.ts';

const ADA = {
  sub: 'ada-123',
  email: 'ada@example.com',
  email_verified: true,
  name: 'Ada Lovelace',
  phone_number: '+44 20 7946 0000',
  phone_number_verified: false,
};

/** Walks a browser through /login, the upstream's form and back; returns Deputy's page. */
async function signIn(browser: Browser, deputy: RunningDeputy, sub: string, path = '/login'): Promise<Page> {
  const form = await browser.go(`${deputy.url}${path}`);
  assert.equal(form.status, 200, `upstream login form at ${form.url}`);
  return browser.submit(formAction(form), { sub });
}

async function userRows(dbPath: string) {
  return {
    users: await sqlOn(dbPath, 'select * from users'),
    identities: await sqlOn(dbPath, 'select * from upstream_identities'),
    sessions: await sqlOn(dbPath, 'select * from sessions'),
  };
}

describe('sign-in through a configured upstream provider', () => {
  const dir = tempDir();
  let upstream: TestUpstream;
  let deputy: RunningDeputy;

  before(async () => {
    const listening = await listen();
    upstream = await startUpstream(`${listening.url}/login/callback`);
    upstream.accounts.set(ADA.sub, ADA);
    deputy = await startDeputy({
      dbPath: `${dir.path}/deputy.db`,
      env: upstreamEnv(upstream),
      listening,
    });
  });

  after(async () => {
    await deputy.stop();
    await upstream.close();
    dir.remove();
  });

  test('signs a person in, shows their name and stores their claims', async () => {
    const browser = new Browser();
    const before = Math.floor(Date.now() / 1000);
    const home = await signIn(browser, deputy, ADA.sub);

    assert.equal(home.status, 200);
    assert.equal(home.url, `${deputy.url}/`);
    assert.match(home.body, /Signed in as Ada Lovelace/);
    assert.doesNotMatch(home.body, /Development sign-in/);

    const { users, identities } = await userRows(deputy.dbPath);
    assert.equal(users.length, 1);
    const user = users[0] as Record<string, unknown>;
    assert.match(user.id as string, /^usr_[A-Za-z0-9_-]{22}$/);
    assert.equal(user.email, 'ada@example.com');
    assert.equal(user.email_verified, 1);
    assert.equal(user.name, 'Ada Lovelace');
    assert.equal(user.phone_number, '+44 20 7946 0000');
    assert.equal(user.phone_number_verified, 0);
    assert.deepEqual(JSON.parse(user.amr as string), ['pwd', 'otp']);
    assert.equal(user.acr, 'urn:example:loa:2');
    assert.ok((user.auth_time as number) >= before - 1, 'auth_time from the upstream ID token');
    assert.deepEqual(identities, [
      { issuer: upstream.issuer, subject: ADA.sub, user_id: user.id, created_at: identities[0]?.created_at },
    ]);
  });

  test('sets the session cookie HttpOnly and SameSite=Lax, without Secure on an http issuer', async () => {
    const browser = new Browser();
    const form = await browser.go(`${deputy.url}/login`);
    const response = await browser.request(formAction(form), {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `sub=${ADA.sub}`,
    });
    // Follow by hand until Deputy's callback answers with the session cookie.
    let location = response.headers.get('location') as string;
    let callback: Response | undefined;
    for (let hop = 0; hop < 10 && callback === undefined; hop += 1) {
      const next = await browser.request(new URL(location, form.url).href);
      if (new URL(location, form.url).pathname === '/login/callback') callback = next;
      else location = next.headers.get('location') as string;
    }
    assert.ok(callback, 'reached the callback');
    assert.equal(callback.status, 302);
    const cookie = callback.headers.getSetCookie().find((c) => c.startsWith('deputy_session='));
    assert.ok(cookie, 'session cookie set');
    assert.match(cookie, /; httponly/i);
    assert.match(cookie, /; samesite=lax/i);
    assert.doesNotMatch(cookie, /; secure/i);
  });

  test('gives a new session id at each sign-in and ends the previous session', async () => {
    const browser = new Browser();
    await signIn(browser, deputy, ADA.sub);
    const first = (await browser.jar.getCookies(deputy.url)).find((c) => c.key === 'deputy_session')?.value;
    await signIn(browser, deputy, ADA.sub);
    const second = (await browser.jar.getCookies(deputy.url)).find((c) => c.key === 'deputy_session')?.value;

    assert.ok(first && second);
    assert.notEqual(first, second);

    const stale = new Browser();
    await stale.jar.setCookie(`deputy_session=${first}`, deputy.url);
    const sig = (await browser.jar.getCookies(deputy.url)).find((c) => c.key === 'deputy_session.sig');
    assert.ok(sig);
    // A stolen old cookie, even correctly signed, no longer names a session.
    const page = await stale.go(`${deputy.url}/`);
    assert.doesNotMatch(page.body, /Signed in as/);
  });

  test('stores session ids only as hashes', async () => {
    const browser = new Browser();
    await signIn(browser, deputy, ADA.sub);
    const id = (await browser.jar.getCookies(deputy.url)).find((c) => c.key === 'deputy_session')?.value;
    const { sessions } = await userRows(deputy.dbPath);
    assert.ok(id);
    assert.ok(sessions.length > 0);
    assert.ok(sessions.every((s) => s.id_hash !== id && /^[0-9a-f]{64}$/.test(s.id_hash as string)));
  });

  test('signs out with the form, and refuses a sign-out posted without its token', async () => {
    const browser = new Browser();
    const home = await signIn(browser, deputy, ADA.sub);

    const forged = await browser.submit(`${deputy.url}/logout`, { csrf: 'forged' });
    assert.equal(forged.status, 403);
    assert.match(forged.body, /not sent from a current Deputy page/);
    assert.match((await browser.go(`${deputy.url}/`)).body, /Signed in as Ada Lovelace/);

    const out = await browser.submit(`${deputy.url}/logout`, { csrf: hiddenField(home, 'csrf') });
    assert.equal(out.status, 200);
    assert.equal(out.url, `${deputy.url}/`);
    assert.match(out.body, /Sign in/);
    assert.doesNotMatch(out.body, /Signed in as/);
  });

  test('returns to a local path after sign-in, and never to another site', async () => {
    const local = await signIn(new Browser(), deputy, ADA.sub, '/login?return_to=%2F%3Ftab%3Dagents');
    assert.equal(local.url, `${deputy.url}/?tab=agents`);

    for (const target of ['https://evil.example/', '//evil.example/x', '/\\evil.example', '/.//evil.example/x', 'javascript:alert(1)']) {
      const page = await signIn(new Browser(), deputy, ADA.sub, `/login?return_to=${encodeURIComponent(target)}`);
      assert.equal(page.url, `${deputy.url}/`, `return_to=${target}`);
    }
  });

  describe('refuses bad callbacks with a readable 400 page', () => {
    /** Starts a sign-in and stops at the upstream's redirect back to Deputy. */
    async function callbackUrl(browser: Browser): Promise<URL> {
      const form = await browser.go(`${deputy.url}/login`);
      let response = await browser.request(formAction(form), {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: `sub=${ADA.sub}`,
      });
      let url = new URL(response.headers.get('location') as string, form.url);
      while (url.pathname !== '/login/callback') {
        response = await browser.request(url.href);
        url = new URL(response.headers.get('location') as string, url);
      }
      return url;
    }

    function assertRefused(page: Page, pattern: RegExp) {
      assert.equal(page.status, 400);
      assert.match(page.headers.get('content-type') ?? '', /text\/html/);
      assert.match(page.body, /Sign-in could not be completed/);
      assert.match(page.body, pattern);
      assert.doesNotMatch(page.body, /\bat [\w.]+ \(/, 'no stack trace');
    }

    test('without state', async () => {
      const browser = new Browser();
      const url = await callbackUrl(browser);
      url.searchParams.delete('state');
      assertRefused(await browser.go(url.href), /does not belong to a sign-in started in this browser/);
    });

    test('with a tampered state', async () => {
      const browser = new Browser();
      const url = await callbackUrl(browser);
      url.searchParams.set('state', `${url.searchParams.get('state')}x`);
      assertRefused(await browser.go(url.href), /does not belong to a sign-in started in this browser/);
    });

    test('from another browser', async () => {
      const url = await callbackUrl(new Browser());
      assertRefused(await new Browser().go(url.href), /does not belong to a sign-in started in this browser/);
    });

    test('replayed', async () => {
      const browser = new Browser();
      const url = await callbackUrl(browser);
      const cookies = await browser.jar.serialize();
      const first = await browser.go(url.href);
      assert.equal(first.status, 200);

      // Put back the sign-in cookie the callback cleared, as an attacker replaying it would.
      const replayer = new Browser();
      for (const cookie of cookies.cookies) {
        if (cookie.key === 'deputy_login' || cookie.key === 'deputy_login.sig') {
          await replayer.jar.setCookie(`${cookie.key}=${cookie.value}; Path=/login`, deputy.url);
        }
      }
      assertRefused(await replayer.go(url.href), /already used or has expired/);
    });

    test('without a code', async () => {
      const browser = new Browser();
      const url = await callbackUrl(browser);
      url.searchParams.delete('code');
      assertRefused(await browser.go(url.href), /not valid/);
    });

    test('carrying an error from the upstream', async () => {
      const browser = new Browser();
      const form = await browser.go(`${deputy.url}/login`);
      const page = await browser.submit(formAction(form), { sub: 'nobody' });
      assertRefused(page, /refused: access_denied/);
    });
  });
});

describe('keys and users across a restart', () => {
  test('keeps the signing key and the users', async () => {
    const dir = tempDir();
    const listening = await listen();
    const upstream = await startUpstream(`${listening.url}/login/callback`);
    upstream.accounts.set(ADA.sub, ADA);
    const env = upstreamEnv(upstream);
    const dbPath = `${dir.path}/deputy.db`;

    try {
      let deputy = await startDeputy({ dbPath, env, listening });
      const jwksBefore = await (await fetch(`${deputy.url}/.well-known/jwks.json`)).json();
      await signIn(new Browser(), deputy, ADA.sub);
      const userBefore = (await userRows(dbPath)).users[0]?.id;
      await deputy.stop();

      const port = new URL(deputy.url).port;
      deputy = await startDeputy({ dbPath, env, listening: await listen(Number(port)) });
      const jwksAfter = await (await fetch(`${deputy.url}/.well-known/jwks.json`)).json();
      assert.deepEqual(jwksAfter, jwksBefore);

      const home = await signIn(new Browser(), deputy, ADA.sub);
      assert.match(home.body, /Signed in as Ada Lovelace/);
      const { users } = await userRows(dbPath);
      assert.equal(users.length, 1);
      assert.equal(users[0]?.id, userBefore);
      await deputy.stop();
    } finally {
      await upstream.close();
      dir.remove();
    }
  });
});

describe('safeReturnTo', () => {
  const issuer = 'https://deputy.example';
  const cases: [unknown, string][] = [
    ['/delegations?x=1', '/delegations?x=1'],
    ['/', '/'],
    [undefined, '/'],
    [['/a', '/b'], '/'],
    ['https://deputy.example/x', '/'],
    ['//evil.example', '/'],
    ['/\\evil.example', '/'],
    ['/%0d%0aSet-Cookie:x', '/%0d%0aSet-Cookie:x'],
    ['/\tfoo', '/'],
    ['relative', '/'],
    ['/.//evil.example/x', '/'],
    ['/%2e%2e//evil.example', '/'],
    ['/a/..//evil.example', '/'],
    ['/a/../b', '/b'],
  ];
  for (const [input, expected] of cases) {
    test(`maps ${JSON.stringify(input)} to ${expected}`, () => {
      assert.equal(safeReturnTo(input, issuer), expected);
    });
  }
});
