/**
 * Errors shown to people as pages. Anything else that reaches the error middleware is logged
 * and shown as a generic page with status 500: no stack, no detail.
 */
export class PageError extends Error {
  override name = 'PageError';
  readonly status: number;
  readonly title: string;

  constructor(status: number, title: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.status = status;
    this.title = title;
  }
}
