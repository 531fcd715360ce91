/**
 * Errors shown to people as pages. Anything else that reaches the error middleware is logged
 * and shown as a generic page with status 500: no stack, no detail.
 */
export class PageError extends Error {
  override name = 'PageError';
  readonly status: number;
  readonly title: string;
  /** A way back to the form that was refused (a path on Deputy), besides the home page. */
  readonly back: { path: string; label: string } | undefined;

  constructor(
    status: number,
    title: string,
    message: string,
    options?: { cause?: unknown; back?: { path: string; label: string } },
  ) {
    super(message, options);
    this.status = status;
    this.title = title;
    this.back = options?.back;
  }
}

/** Runs `fn`; a PageError it throws gets a link back to the form at `path`. */
export function withWayBack<T>(path: string, label: string, fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    if (!(error instanceof PageError) || error.back !== undefined) throw error;
    throw new PageError(error.status, error.title, error.message, { cause: error.cause, back: { path, label } });
  }
}
