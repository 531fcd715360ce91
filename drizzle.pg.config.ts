import { defineConfig } from 'drizzle-kit';

// The PostgreSQL twin of drizzle.config.ts: `npm run db:generate` writes SQL migrations for
// src/db/schema-pg.ts into drizzle/pg/. Generating needs no database connection.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/db/schema-pg.ts',
  out: './drizzle/pg',
});
