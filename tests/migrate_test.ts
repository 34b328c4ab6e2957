/** The migration runner on a real, empty database: applies all, a second run is a no-op, concurrent runs succeed. */
import assert from "node:assert/strict";
import { connect, urlForDatabase } from "../db/pool.ts";
import { CatalogTooNew, checkServerVersion, installedVersion, loadMigrations, migrate } from "../db/migrate.ts";
import { RELEASES, VERSION } from "../version.ts";
import { quoteIdent } from "../db/identifiers.ts";
import { dropDatabase, serverUrl } from "./support/db.ts";
import { dbTest } from "./support/service.ts";

async function emptyDatabase(): Promise<string> {
  const name = `m_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const admin = connect(serverUrl(), { max: 1 });
  await admin.unsafe(`CREATE DATABASE ${quoteIdent(name)}`);
  await admin.end();
  return name;
}

Deno.test("migration files are numbered without gaps", async () => {
  const all = await loadMigrations();
  assert.ok(all.length >= 1);
  all.forEach((m, i) => assert.equal(m.version, i + 1));
});

Deno.test({
  name: "migrate applies every migration once, then is a no-op",
  ...dbTest,
  fn: async () => {
    const name = await emptyDatabase();
    const sql = connect(urlForDatabase(serverUrl(), name), { max: 2 });
    try {
      const all = await loadMigrations();
      assert.ok((await checkServerVersion(sql)) >= 150000);
      assert.equal(await installedVersion(sql), 0);
      assert.deepEqual(await migrate(sql), all.map((m) => m.version));
      assert.equal(await installedVersion(sql), all.length);
      assert.deepEqual(await migrate(sql), [], "a second run changes nothing");
      const [row] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM pgtrickle.pgt_schema_version`;
      assert.equal(row!.n, all.length);
      const schemas = await sql<{ nspname: string }[]>`
        SELECT nspname FROM pg_namespace WHERE nspname IN ('pgtrickle', 'pgtrickle_changes') ORDER BY 1`;
      assert.deepEqual(schemas.map((s) => s.nspname), ["pgtrickle", "pgtrickle_changes"]);
    } finally {
      await sql.end();
      await dropDatabase(name);
    }
  },
});

Deno.test({
  name: "two runners migrating one database at once both succeed",
  ...dbTest,
  fn: async () => {
    const name = await emptyDatabase();
    const a = connect(urlForDatabase(serverUrl(), name), { max: 1 });
    const b = connect(urlForDatabase(serverUrl(), name), { max: 1 });
    try {
      const [ra, rb] = await Promise.all([migrate(a), migrate(b)]);
      const all = await loadMigrations();
      assert.deepEqual([...ra, ...rb].sort(), all.map((m) => m.version), "each migration applied by exactly one");
      assert.equal(await installedVersion(a), all.length);
    } finally {
      await a.end();
      await b.end();
      await dropDatabase(name);
    }
  },
});

Deno.test({
  name: "a failing migration is rolled back whole and reported",
  ...dbTest,
  fn: async () => {
    const name = await emptyDatabase();
    const sql = connect(urlForDatabase(serverUrl(), name), { max: 1 });
    try {
      const good = await loadMigrations();
      const bad = [...good, {
        version: good.length + 1,
        name: "broken",
        sql: "CREATE TABLE pgtrickle.x (a int); SELECT 1/0;",
      }];
      await assert.rejects(migrate(sql, bad), /division by zero/);
      assert.equal(await installedVersion(sql), good.length, "the good ones stay applied");
      const [row] = await sql<{ t: string | null }[]>`SELECT to_regclass('pgtrickle.x')::text AS t`;
      assert.equal(row!.t, null, "nothing of the failed migration remains");
    } finally {
      await sql.end();
      await dropDatabase(name);
    }
  },
});

Deno.test({
  name: "each migration is recorded with the release that shipped it, filled in for a catalog of an older runner",
  ...dbTest,
  fn: async () => {
    const name = await emptyDatabase();
    const sql = connect(urlForDatabase(serverUrl(), name), { max: 1 });
    try {
      const all = await loadMigrations();
      const first = RELEASES[0]!;
      await migrate(sql, all.filter((m) => m.version <= first.lastMigration));
      // The runner of the first release had no release column.
      await sql`ALTER TABLE pgtrickle.pgt_schema_version DROP COLUMN release`;
      await migrate(sql);
      const rows = await sql<{ version: number; release: string }[]>`
        SELECT version, release FROM pgtrickle.pgt_schema_version ORDER BY version`;
      const expected = all.map((m) => ({
        version: m.version,
        release: RELEASES.find((r) => r.lastMigration >= m.version)?.version ?? VERSION,
      }));
      assert.deepEqual(rows.map((r) => ({ ...r })), expected);
      assert.equal(rows.at(-1)!.release, VERSION, "the newest migration is this build's release");
      assert.equal(rows.find((r) => r.version === first.lastMigration)!.release, first.version);
    } finally {
      await sql.end();
      await dropDatabase(name);
    }
  },
});

Deno.test({
  name: "a catalog newer than this build is refused, naming both versions, and left as it is",
  ...dbTest,
  fn: async () => {
    const name = await emptyDatabase();
    const sql = connect(urlForDatabase(serverUrl(), name), { max: 1 });
    try {
      const all = await loadMigrations();
      await migrate(sql);
      const newer = all.length + 1;
      await sql`INSERT INTO pgtrickle.pgt_schema_version (version, name, release)
        VALUES (${newer}, 'from_the_future', '99.0.0')`;
      const before = await sql`SELECT * FROM pgtrickle.pgt_schema_version ORDER BY version`;
      const error = await migrate(sql).then(() => null, (e) => e);
      assert.ok(error instanceof CatalogTooNew, `CatalogTooNew, not ${error}`);
      assert.equal(error.code, "CatalogTooNew");
      for (const part of [`"${name}"`, `schema version ${newer}`, "trickle 99.0.0", `schema version ${all.length}`]) {
        assert.ok(error.message.includes(part), `the message names ${part}: ${error.message}`);
      }
      assert.ok(error.message.includes(`trickle ${VERSION}`), error.message);
      assert.deepEqual(await sql`SELECT * FROM pgtrickle.pgt_schema_version ORDER BY version`, before);
      assert.equal(await installedVersion(sql), newer);
    } finally {
      await sql.end();
      await dropDatabase(name);
    }
  },
});
