/**
 * HTML pages, rendered by Eta from src/web/views. `<%= %>` escapes; the templates never use the
 * raw form for data that came from a person, an agent or a service.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Eta } from 'eta';

export interface Views {
  render(name: string, data: Record<string, unknown>): string;
}

export function createViews(options: { devIdp: boolean; production: boolean }): Views {
  const eta = new Eta({
    views: join(dirname(fileURLToPath(import.meta.url)), 'views'),
    autoEscape: true,
    cache: options.production,
  });

  return {
    render(name, data) {
      return eta.render(name, { devIdp: options.devIdp, user: null, csrf: null, ...data });
    },
  };
}
