/**
 * Test databases on a real PostgreSQL: the server is given by TEST_DATABASE_URL (tests/run.ts starts the embedded
 * one and sets it). A template database is migrated once per migration set; each test file clones its own.
 */
import { connect, type Sql, urlForDatabase } from "../../db/pool.ts";
import { loadMigrations, migrate } from "../../db/migrate.ts";
import { quoteIdent } from "../../db/identifiers.ts";

export interface TestDatabase {
  name: string;
  url: string;
  /** The server URL (maintenance database). */
  serverUrl: string;
  sql: Sql;
  drop(): Promise<void>;
}

/** The server the tests run against. */
export function serverUrl(): string {
  const url = Deno.env.get("TEST_DATABASE_URL");
  if (url === undefined || url === "") {
    throw new Error(
      "TEST_DATABASE_URL is not set: run the tests with `deno task test`, or point it at a PostgreSQL server",
    );
  }
  return url;
}

let templatePromise: Promise<string> | null = null;

async function template(): Promise<string> {
  const migrations = await loadMigrations();
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(migrations.map((m) => m.version + m.sql).join("\n")),
  );
  const hash = Array.from(new Uint8Array(digest).slice(0, 5), (b) => b.toString(16).padStart(2, "0")).join("");
  const name = `trickle_tpl_${hash}`;
  const admin = connect(serverUrl(), { max: 1 });
  try {
    await admin`SELECT pg_advisory_lock(7417099)`;
    const [exists] = await admin`SELECT 1 FROM pg_database WHERE datname = ${name}`;
    if (exists === undefined) {
      await admin.unsafe(`CREATE DATABASE ${quoteIdent(name)}`);
      const sql = connect(urlForDatabase(serverUrl(), name), { max: 1 });
      try {
        await migrate(sql, migrations);
      } finally {
        await sql.end();
      }
    }
    await admin`SELECT pg_advisory_unlock(7417099)`;
  } finally {
    await admin.end();
  }
  return name;
}

/** A new, migrated database for one test file; `drop()` removes it. */
export async function freshDatabase(prefix = "t"): Promise<TestDatabase> {
  templatePromise ??= template();
  const tpl = await templatePromise;
  const name = `${prefix}_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const admin = connect(serverUrl(), { max: 1 });
  try {
    await admin.unsafe(`CREATE DATABASE ${quoteIdent(name)} TEMPLATE ${quoteIdent(tpl)}`);
  } finally {
    await admin.end();
  }
  const url = urlForDatabase(serverUrl(), name);
  const sql = connect(url, { max: 5 });
  return {
    name,
    url,
    serverUrl: serverUrl(),
    sql,
    drop: async () => {
      await sql.end({ timeout: 1 });
      await dropDatabase(name);
    },
  };
}

/** Drops a database, disconnecting whoever is still on it. */
export async function dropDatabase(name: string): Promise<void> {
  const admin = connect(serverUrl(), { max: 1 });
  try {
    await admin.unsafe(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}
