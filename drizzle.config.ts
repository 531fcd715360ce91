import { defineConfig } from 'drizzle-kit';

// `npm run db:generate` writes SQL migrations for src/db/schema.ts into drizzle/sqlite/
// (and, with drizzle.pg.config.ts, for src/db/schema-pg.ts into drizzle/pg/).
// Deputy applies them itself at start and with `deputy migrate`.
export default defineConfig({
  dialect: 'sqlite',
  schema: './src/db/schema.ts',
  out: './drizzle/sqlite',
});
