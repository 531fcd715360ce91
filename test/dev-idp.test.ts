import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Browser, formAction } from './helpers/browser.ts';
import { sqlOn, startDeputy, tempDir, type RunningDeputy } from './helpers/deputy.ts';

describe('the development sign-in, with no upstream configured', () => {
  const dir = tempDir();
  let deputy: RunningDeputy;

  before(async () => {
    deputy = await startDeputy({ dbPath: `${dir.path}/deputy.db` });
  });

  after(async () => {
    await deputy.stop();
    dir.remove();
  });

  test('shows the development banner on every page', async () => {
    for (const path of ['/', '/no/such/page']) {
      const page = await new Browser().go(`${deputy.url}${path}`);
      assert.match(page.body, /Development sign-in\.<\/strong> Any email address signs in/, path);
    }
  });

  test('signs in any email address as verified and shows the name given', async () => {
    const browser = new Browser();
    const form = await browser.go(`${deputy.url}/login`);
    assert.equal(form.status, 200);
    assert.match(form.url, new RegExp(`^${deputy.url}/dev-idp/interaction/`));
    assert.match(form.body, /Development sign-in/);

    const home = await browser.submit(formAction(form), { email: 'Grace@Example.com', name: 'Grace Hopper' });
    assert.equal(home.status, 200);
    assert.equal(home.url, `${deputy.url}/`);
    assert.match(home.body, /Signed in as Grace Hopper/);
    assert.match(home.body, /grace@example.com \(verified\)/);

    const [identity] = await sqlOn(deputy.dbPath, 'select issuer, subject from upstream_identities');
    const [user] = await sqlOn(deputy.dbPath, 'select email, email_verified from users');
    assert.deepEqual(identity, { issuer: `${deputy.url}/dev-idp`, subject: 'grace@example.com' });
    assert.deepEqual(user, { email: 'grace@example.com', email_verified: 1 });
  });

  test('asks again, with a 400, for something that is not an email address', async () => {
    const browser = new Browser();
    const form = await browser.go(`${deputy.url}/login`);
    const page = await browser.submit(formAction(form), { email: 'not an email' });
    assert.equal(page.status, 400);
    assert.match(page.body, /Enter an email address/);
  });

  test('escapes what a person types when showing it back', async () => {
    const browser = new Browser();
    const form = await browser.go(`${deputy.url}/login`);
    const home = await browser.submit(formAction(form), { email: 'x@example.com', name: '<script>alert(1)</script>' });
    assert.match(home.body, /Signed in as &lt;script&gt;alert\(1\)&lt;\/script&gt;/);
    assert.doesNotMatch(home.body, /<script>alert/);
  });
});
