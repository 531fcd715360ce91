/**
 * A minimal browser for tests: a cookie jar (tough-cookie), redirects followed by hand so each
 * hop can be inspected, and form posts.
 */
import { CookieJar } from 'tough-cookie';

export interface Page {
  status: number;
  url: string;
  headers: Headers;
  body: string;
}

export class Browser {
  readonly jar = new CookieJar();

  async request(url: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    const cookie = await this.jar.getCookieString(url);
    if (cookie !== '') headers.set('cookie', cookie);
    const response = await fetch(url, { ...init, headers, redirect: 'manual' });
    for (const setCookie of response.headers.getSetCookie()) {
      await this.jar.setCookie(setCookie, url, { ignoreError: true });
    }
    return response;
  }

  /** GET (or the given request) and follow redirects, returning the final page. */
  async go(url: string, init: RequestInit = {}, maxHops = 15): Promise<Page> {
    let response = await this.request(url, init);
    let current = url;
    for (let hop = 0; isRedirect(response.status); hop += 1) {
      if (hop >= maxHops) throw new Error(`too many redirects from ${url}`);
      current = new URL(response.headers.get('location') as string, current).href;
      await response.body?.cancel();
      response = await this.request(current);
    }
    return { status: response.status, url: current, headers: response.headers, body: await response.text() };
  }

  /** Posts a form as a browser would and follows the redirects. */
  submit(url: string, fields: Record<string, string | string[]>): Promise<Page> {
    const body = new URLSearchParams();
    for (const [name, value] of Object.entries(fields)) {
      for (const one of Array.isArray(value) ? value : [value]) body.append(name, one);
    }
    return this.go(url, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: body.toString(),
    });
  }
}

export function isRedirect(status: number): boolean {
  return status >= 300 && status < 400;
}

/** The action of the first form on a page, resolved against the page URL. */
export function formAction(page: Page): string {
  const match = /<form[^>]*action="([^"]+)"/.exec(page.body);
  if (match === null) throw new Error(`no form on ${page.url}`);
  return new URL(match[1] as string, page.url).href;
}

export function hiddenField(page: Page, name: string): string {
  const match = new RegExp(`name="${name}" value="([^"]*)"`).exec(page.body);
  if (match === null) throw new Error(`no field ${name} on ${page.url}`);
  return match[1] as string;
}
