/**
 * The migration runner: numbered files in sql/migrations/, forward-only, each applied in its own transaction and
 * recorded in pgtrickle.pgt_schema_version with the release that shipped it (version.ts). A transaction-scoped
 * advisory lock serialises concurrent runners, so two instances starting at once both succeed: the second finds the
 * work done. A catalog newer than this build is refused, never run against.
 */
import type { Sql } from "./pool.ts";
import { serverVersion } from "./pool.ts";
import { releaseOfMigration, VERSION } from "../version.ts";

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

const MIGRATIONS_DIR = new URL("../sql/migrations/", import.meta.url);
/** Key of the advisory lock held while migrating (arbitrary, fixed). */
const MIGRATION_LOCK = 7_417_001;
export const MIN_SERVER_VERSION = 150000;

/** A database whose catalog has migrations this build does not know: a newer trickle migrated it. */
export class CatalogTooNew extends Error {
  readonly code = "CatalogTooNew";
  constructor(options: { database: string; installed: number; installedRelease: string | null; known: number }) {
    const theirs = options.installedRelease === null ? "a newer trickle" : `trickle ${options.installedRelease}`;
    super(
      `Database "${options.database}" has trickle's catalog at schema version ${options.installed} (${theirs}), ` +
        `newer than this build's schema version ${options.known} (trickle ${VERSION}); run ${theirs} or later ` +
        `(a catalog is never downgraded)`,
    );
    this.name = "CatalogTooNew";
  }
}

/** Reads the migration files in version order. */
export async function loadMigrations(dir: URL = MIGRATIONS_DIR): Promise<Migration[]> {
  const out: Migration[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const m = /^(\d{4})_([a-z0-9_]+)\.sql$/.exec(entry.name);
    if (!entry.isFile || m === null) continue;
    out.push({ version: Number(m[1]), name: m[2]!, sql: await Deno.readTextFile(new URL(entry.name, dir)) });
  }
  out.sort((a, b) => a.version - b.version);
  out.forEach((m, i) => {
    if (m.version !== i + 1) throw new Error(`Migration numbering has a gap or a duplicate at ${m.version}_${m.name}`);
  });
  return out;
}

/** The newest schema version this build knows. */
export async function latestVersion(): Promise<number> {
  const all = await loadMigrations();
  return all.at(-1)?.version ?? 0;
}

/** Refuses servers older than PostgreSQL 15 with a message that says which version was found. */
export async function checkServerVersion(sql: Sql): Promise<number> {
  const v = await serverVersion(sql);
  if (v < MIN_SERVER_VERSION) {
    const [row] = await sql<{ v: string }[]>`SELECT current_setting('server_version') AS v`;
    throw new Error(`trickle needs PostgreSQL 15 or later; this server is ${row!.v}`);
  }
  return v;
}

/**
 * Applies every pending migration of `migrations` (default: all of this build; a test may pass the first few to
 * build an older release's catalog); returns the versions applied by this call. Throws CatalogTooNew when the
 * database has a migration past the last one given.
 */
export async function migrate(sql: Sql, migrations?: Migration[]): Promise<number[]> {
  await checkServerVersion(sql);
  const all = migrations ?? await loadMigrations();
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`;
    await tx`CREATE SCHEMA IF NOT EXISTS pgtrickle`;
    await tx`CREATE TABLE IF NOT EXISTS pgtrickle.pgt_schema_version (
      version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`;
    // The release that shipped each migration; runners before 0.2.0 did not record it, so it is filled in here.
    const [column] = await tx`SELECT 1 FROM pg_attribute
      WHERE attrelid = 'pgtrickle.pgt_schema_version'::regclass AND attname = 'release' AND NOT attisdropped`;
    if (column === undefined) await tx`ALTER TABLE pgtrickle.pgt_schema_version ADD COLUMN release text`;
    const unrecorded = await tx<{ version: number }[]>`
      SELECT version FROM pgtrickle.pgt_schema_version WHERE release IS NULL`;
    if (unrecorded.length > 0) {
      const versions = unrecorded.map((r) => r.version);
      await tx`UPDATE pgtrickle.pgt_schema_version v SET release = r.release
        FROM unnest(${versions}::int[], ${versions.map(releaseOfMigration)}::text[]) AS r(version, release)
        WHERE v.version = r.version`;
    }
  });
  const known = all.at(-1)?.version ?? 0;
  const newest = await newestMigration(sql);
  if (newest.version > known) {
    const [db] = await sql<{ name: string }[]>`SELECT current_database() AS name`;
    throw new CatalogTooNew({ database: db!.name, installed: newest.version, installedRelease: newest.release, known });
  }
  const applied: number[] = [];
  for (const m of all) {
    const done = await sql.begin(async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`;
      const [row] = await tx`SELECT 1 FROM pgtrickle.pgt_schema_version WHERE version = ${m.version}`;
      if (row !== undefined) return false;
      // Migration files are part of this build, never request text.
      await tx.unsafe(m.sql);
      await tx`INSERT INTO pgtrickle.pgt_schema_version (version, name, release)
        VALUES (${m.version}, ${m.name}, ${releaseOfMigration(m.version)})`;
      return true;
    });
    if (done) applied.push(m.version);
  }
  return applied;
}

/** The newest migration recorded in the database and the release that shipped it (0 and null when none). */
export async function newestMigration(sql: Sql): Promise<{ version: number; release: string | null }> {
  const [exists] = await sql`SELECT to_regclass('pgtrickle.pgt_schema_version') IS NOT NULL AS ok`;
  if (exists?.ok !== true) return { version: 0, release: null };
  const [row] = await sql<{ version: number; release: string | null }[]>`
    SELECT version, release FROM pgtrickle.pgt_schema_version ORDER BY version DESC LIMIT 1`;
  return row === undefined ? { version: 0, release: null } : { version: Number(row.version), release: row.release };
}

/** The schema version installed in the database (0 when none). */
export async function installedVersion(sql: Sql): Promise<number> {
  const [exists] = await sql`SELECT to_regclass('pgtrickle.pgt_schema_version') IS NOT NULL AS ok`;
  if (exists?.ok !== true) return 0;
  const [row] = await sql<{ v: number }[]>`SELECT coalesce(max(version), 0) AS v FROM pgtrickle.pgt_schema_version`;
  return Number(row?.v ?? 0);
}
