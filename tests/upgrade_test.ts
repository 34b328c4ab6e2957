/**
 * The upgrade path, with real processes: the previous release (0.1.0, unpacked from tests/fixtures/releases/) builds a
 * database with stream tables, refresh history and changes not yet refreshed, and stops; this build starts on it,
 * migrates it, loses nothing, refreshes the stream tables differentially where they were, and the pending changes
 * arrive. A catalog newer than this build is refused at start, naming both versions. 0.1.0 had no snapshots, so the
 * snapshot rule (a snapshot restores across migrations that keep the snapshot format, migration 0007) is tested with
 * later migrations applied to this build's catalog.
 */
import assert from "node:assert/strict";
import * as path from "node:path";
import { connect, type Sql, urlForDatabase } from "../db/pool.ts";
import { quoteIdent } from "../db/identifiers.ts";
import { loadMigrations, migrate } from "../db/migrate.ts";
import type { RestoreResult } from "../engine/snapshots.ts";
import { RELEASES, VERSION } from "../version.ts";
import { dropDatabase, serverUrl } from "./support/db.ts";
import { dbTest, startTestService } from "./support/service.ts";
import {
  eventually,
  launchService,
  logLines,
  postJson,
  type ServiceProcess,
  spawnService,
  stopAll,
} from "./support/process.ts";
import { assertSameRows, type HistoryEntry, problem, type RefreshResult, type StreamTable } from "./support/api.ts";

const PREVIOUS = RELEASES.at(-2)!;
const FIXTURE = new URL(`./fixtures/releases/trickle-${PREVIOUS.version}.tar.gz`, import.meta.url).pathname;

const TOTALS = "SELECT customer, sum(amount) AS total, count(*) AS n FROM orders GROUP BY customer";
const BIG = "SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON c.id = o.customer WHERE o.amount > 50";
/** A window function: FULL only, in both releases. */
const RANKED = "SELECT id, rank() OVER (ORDER BY amount DESC, id) AS r FROM orders";

async function json<T>(res: Response, status = 200): Promise<T> {
  const text = await res.text();
  assert.equal(res.status, status, text);
  return JSON.parse(text) as T;
}

/** The previous release's service, unpacked into a temporary directory (its own deno.json and lock). */
async function unpackPrevious(): Promise<{ main: string; remove: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: `trickle-${PREVIOUS.version}-` });
  const tar = await new Deno.Command("tar", { args: ["-xzf", FIXTURE, "-C", dir], stderr: "piped" }).output();
  assert.ok(tar.success, new TextDecoder().decode(tar.stderr));
  return { main: path.join(dir, "main.ts"), remove: () => Deno.remove(dir, { recursive: true }) };
}

async function emptyDatabase(): Promise<string> {
  const name = `up_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const admin = connect(serverUrl(), { max: 1 });
  await admin.unsafe(`CREATE DATABASE ${quoteIdent(name)}`);
  await admin.end();
  return name;
}

/** The rows waiting in each source's change buffer, by source name. */
async function pendingChanges(sql: Sql): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (
    const b of await sql<{ relid: number; name: string }[]>`
    SELECT source_relid::int8 AS relid, source_name AS name FROM pgtrickle.pgt_change_buffers`
  ) {
    // Test-only SQL: the buffer's name is built from an oid read from the catalog.
    const [row] = await sql.unsafe(`SELECT count(*)::int AS n FROM pgtrickle_changes.changes_${Number(b.relid)}`);
    out[b.name] = row!.n as number;
  }
  return out;
}

/** What must survive the upgrade: catalog rows, history rows, and each stream table's rows. */
async function state(sql: Sql) {
  return {
    streamTables: await sql`SELECT pgt_id, pgt_relid::int8 AS relid, pgt_name, refresh_mode, effective_refresh_mode,
      schedule, status, frontier::text AS frontier, row_count FROM pgtrickle.pgt_stream_tables ORDER BY pgt_id`,
    history: await sql`SELECT refresh_id, pgt_id, action, status, initiated_by, rows_inserted, rows_deleted
      FROM pgtrickle.pgt_refresh_history ORDER BY refresh_id`,
    buffers: await sql`SELECT source_relid::int8 AS relid, source_name, capture_version
      FROM pgtrickle.pgt_change_buffers ORDER BY 1`,
    pending: await pendingChanges(sql),
    totals: await sql`SELECT customer, total, n FROM totals ORDER BY customer`,
    big: await sql`SELECT id, amount, name FROM big ORDER BY id`,
    ranked: await sql`SELECT id, r FROM ranked ORDER BY id`,
  };
}

Deno.test({
  name: `a database of trickle ${PREVIOUS.version} is taken over by ${VERSION}: migrated, nothing lost, refreshing`,
  ...dbTest,
  fn: async () => {
    const name = await emptyDatabase();
    const url = urlForDatabase(serverUrl(), name);
    const sql = connect(url, { max: 2 });
    const previous = await unpackPrevious();
    const procs: ServiceProcess[] = [];
    // Workers are counted in this database, so parallel test files do not share a coordination database.
    const env = { TRICKLE_COORDINATION_DATABASE: name };
    try {
      await sql.unsafe(`
        CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
        INSERT INTO customers SELECT i, 'c' || i FROM generate_series(0, 9) i;
        CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount int NOT NULL);
        INSERT INTO orders SELECT i, i % 10, i % 100 FROM generate_series(1, 300) i;`);

      // The previous release creates its catalog and the stream tables, refreshes once more, then stops.
      const old = await spawnService({ databaseUrl: url, main: previous.main, env });
      procs.push(old);
      assert.deepEqual(await json(await fetch(`${old.url}/health`)), { status: "ok", version: PREVIOUS.version });
      for (const [st, query] of [["totals", TOTALS], ["big", BIG], ["ranked", RANKED]]) {
        // An hour apart: no scheduled refresh takes the pending changes before the upgrade.
        await json(await postJson(old, "/stream-tables", { name: st, query, schedule: "1h" }), 201);
      }
      await sql`UPDATE orders SET amount = amount + 1 WHERE id <= 5`;
      const before = await json<RefreshResult>(await postJson(old, "/stream-tables/totals/refresh"));
      assert.equal(before.action, "DIFFERENTIAL");
      // Changes the previous release never refreshed: they wait in its change buffers.
      await sql`INSERT INTO orders SELECT i, i % 10, 77 FROM generate_series(301, 320) i`;
      await sql`DELETE FROM orders WHERE id BETWEEN 100 AND 104`;
      await sql`UPDATE customers SET name = 'renamed' WHERE id = 3`;
      old.kill("SIGTERM");
      assert.equal((await old.status).code, 0, old.log());
      const versions = await sql<{ version: number }[]>`SELECT version FROM pgtrickle.pgt_schema_version ORDER BY 1`;
      assert.deepEqual(versions.map((v) => v.version), Array.from({ length: PREVIOUS.lastMigration }, (_, i) => i + 1));
      const kept = await state(sql);
      assert.ok(kept.pending.orders! >= 25 && kept.pending.customers! >= 2, JSON.stringify(kept.pending));
      assert.deepEqual(kept.streamTables.map((s) => s.effective_refresh_mode), [
        "DIFFERENTIAL",
        "DIFFERENTIAL",
        "FULL",
      ]);

      // This build takes over: it migrates at start and serves what was there.
      const current = await spawnService({ databaseUrl: url, env });
      procs.push(current);
      assert.deepEqual(await json(await fetch(`${current.url}/health`)), { status: "ok", version: VERSION });
      const doc = await json<{ info: { version: string } }>(await fetch(`${current.url}/openapi.json`));
      assert.equal(doc.info.version, VERSION, "the OpenAPI document's version");
      const metrics = await (await fetch(`${current.url}/metrics`)).text();
      const info = new RegExp(`^pg_trickle_info\\{[^}]*version="${VERSION.replaceAll(".", "\\.")}"`, "m");
      assert.match(metrics, info, "the info metric's version");
      const all = await loadMigrations();
      const migrated = logLines(current, "migrated");
      assert.deepEqual(migrated.map((l) => l.versions), [all.slice(PREVIOUS.lastMigration).map((m) => m.version)]);
      const recorded = await sql<{ version: number; release: string }[]>`
        SELECT version, release FROM pgtrickle.pgt_schema_version ORDER BY version`;
      assert.equal(recorded.length, all.length);
      assert.equal(recorded.at(-1)!.release, VERSION, "the catalog is at this release");
      assert.equal(recorded[PREVIOUS.lastMigration - 1]!.release, PREVIOUS.version);
      assert.deepEqual(await state(sql), kept, "the upgrade changed no catalog row, history row or stream table row");

      const listed = await json<StreamTable[]>(await fetch(`${current.url}/stream-tables`));
      assert.deepEqual(listed.map((s) => [s.name, s.effective_refresh_mode]).sort(), [
        ["public.big", "DIFFERENTIAL"],
        ["public.ranked", "FULL"],
        ["public.totals", "DIFFERENTIAL"],
      ]);
      const history = await json<HistoryEntry[]>(await fetch(`${current.url}/stream-tables/totals/history?limit=10`));
      assert.deepEqual(history.map((h) => [h.initiated_by, h.action]), [["MANUAL", "DIFFERENTIAL"], [
        "CREATE",
        "FULL",
      ]]);

      // The pending changes arrive, differentially where the previous release refreshed differentially.
      for (const [st, action] of [["totals", "DIFFERENTIAL"], ["big", "DIFFERENTIAL"], ["ranked", "FULL"]]) {
        const r = await json<RefreshResult>(await postJson(current, `/stream-tables/${st}/refresh`));
        assert.equal(r.action, action, `${st}: ${JSON.stringify(r)}`);
      }
      await assertSameRows(sql, { table: "totals", query: TOTALS, columns: ["customer", "total", "n"] });
      await assertSameRows(sql, { table: "big", query: BIG, columns: ["id", "amount", "name"] });
      await assertSameRows(sql, { table: "ranked", query: RANKED, columns: ["id", "r"] });

      // And the scheduler keeps them fresh.
      const patched = await fetch(`${current.url}/stream-tables/totals`, {
        method: "PATCH",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ schedule: "1s" }),
      });
      await json(patched);
      await sql`UPDATE orders SET amount = 5 WHERE id IN (4, 14, 24)`;
      assert.ok(
        await eventually(async () => {
          const [row] = await sql`SELECT 1 FROM pgtrickle.pgt_refresh_history h
            JOIN pgtrickle.pgt_stream_tables s USING (pgt_id)
            WHERE s.pgt_name = 'totals' AND h.initiated_by = 'SCHEDULER' AND h.action = 'DIFFERENTIAL'`;
          return row !== undefined;
        }, 10_000),
        "a scheduled differential refresh of an upgraded stream table",
      );
      await assertSameRows(sql, { table: "totals", query: TOTALS, columns: ["customer", "total", "n"] });

      // A snapshot of an upgraded stream table restores (0.1.0 had none to carry over).
      const snap = await json<{ snapshot: string }>(
        await postJson(current, "/snapshots", { stream_table: "big" }),
        201,
      );
      await sql`DELETE FROM big`;
      const restored = await json<{ rows_restored: number }>(
        await postJson(current, "/restore", { stream_table: "big", source: snap.snapshot }),
      );
      assert.equal(restored.rows_restored, (await sql.unsafe(BIG)).length);
      await assertSameRows(sql, { table: "big", query: BIG, columns: ["id", "amount", "name"] });

      current.kill("SIGTERM");
      assert.equal((await current.status).code, 0, current.log());
    } finally {
      await stopAll(procs);
      await previous.remove();
      await sql.end();
      await dropDatabase(name);
    }
  },
});

Deno.test({
  name: "a database whose catalog is newer than this build is refused at start, naming both versions",
  ...dbTest,
  fn: async () => {
    const name = await emptyDatabase();
    const url = urlForDatabase(serverUrl(), name);
    const sql = connect(url, { max: 1 });
    const procs: ServiceProcess[] = [];
    try {
      const env = { TRICKLE_COORDINATION_DATABASE: name };
      procs.push(await spawnService({ databaseUrl: url, env }));
      procs[0]!.kill("SIGTERM");
      await procs[0]!.status;
      const known = (await loadMigrations()).length;
      // What a later release would have left: one more migration, recorded with its release.
      await sql`INSERT INTO pgtrickle.pgt_schema_version (version, name, release) VALUES (${
        known + 1
      }, 'later', '99.0.0')`;
      const before = await sql`SELECT * FROM pgtrickle.pgt_schema_version ORDER BY version`;

      const refused = await launchService({ databaseUrl: url, env });
      procs.push(refused);
      const status = await refused.status;
      assert.equal(status.code, 1, refused.log());
      const [failure] = logLines(refused, "could not open the databases");
      const error = failure?.error as { message: string; code: string } | undefined;
      assert.equal(error?.code, "CatalogTooNew", refused.log());
      for (
        const part of [`schema version ${known + 1}`, "trickle 99.0.0", `schema version ${known}`, `trickle ${VERSION}`]
      ) {
        assert.ok(error!.message.includes(part), `names ${part}: ${error!.message}`);
      }
      assert.equal(logLines(refused, "listening").length, 0, "it never served");
      assert.deepEqual(await sql`SELECT * FROM pgtrickle.pgt_schema_version ORDER BY version`, before);
    } finally {
      await stopAll(procs);
      await sql.end();
      await dropDatabase(name);
    }
  },
});

Deno.test({
  name: "a snapshot taken before an upgrade restores after it, unless the upgrade changed the snapshot format",
  ...dbTest,
  fn: async () => {
    const s = await startTestService();
    try {
      const sql = s.db.sql;
      await sql.unsafe(`
        CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount int NOT NULL);
        INSERT INTO orders SELECT i, i % 10, i % 100 FROM generate_series(1, 300) i;`);
      await json(await s.request("POST", "/stream-tables", { name: "totals", query: TOTALS, schedule: "1h" }), 201);
      const all = await loadMigrations();
      const snap = await json<{ snapshot: string; catalog_schema_version: number }>(
        await s.request("POST", "/snapshots", { stream_table: "totals" }),
        201,
      );
      assert.equal(snap.catalog_schema_version, all.length);
      const taken = await sql`SELECT customer, total, n FROM totals ORDER BY customer`;

      // A later release's migration that leaves snapshots as they are.
      const later = { version: all.length + 1, name: "later", sql: "CREATE TABLE pgtrickle.pgt_later (id int)" };
      assert.deepEqual(await migrate(sql, [...all, later]), [later.version]);
      await sql`INSERT INTO orders SELECT i, i % 10, 3 FROM generate_series(301, 310) i`;
      await json(await s.request("POST", "/stream-tables/totals/refresh"));
      assert.notDeepEqual(await sql`SELECT customer, total, n FROM totals ORDER BY customer`, taken);
      const restored = await json<RestoreResult>(
        await s.request("POST", "/restore", { stream_table: "totals", source: snap.snapshot }),
      );
      assert.equal(restored.next_refresh.mode, "DIFFERENTIAL", JSON.stringify(restored));
      assert.deepEqual(await sql`SELECT customer, total, n FROM totals ORDER BY customer`, taken);
      const caughtUp = await json<RefreshResult>(await s.request("POST", "/stream-tables/totals/refresh"));
      assert.equal(caughtUp.action, "DIFFERENTIAL");
      await assertSameRows(sql, { table: "totals", query: TOTALS, columns: ["customer", "total", "n"] });

      // A migration that changes what a snapshot means says so; snapshots from before it are refused.
      const format = all.length + 2;
      const changing = {
        version: format,
        name: "new_snapshot_format",
        sql: `CREATE OR REPLACE FUNCTION pgtrickle.snapshot_format_version() RETURNS integer LANGUAGE sql STABLE
          AS $$ SELECT ${format} $$`,
      };
      await migrate(sql, [...all, later, changing]);
      const before = await sql`SELECT customer, total, n FROM totals ORDER BY customer`;
      await problem(
        await s.request("POST", "/restore", { stream_table: "totals", source: snap.snapshot }),
        409,
        "SnapshotSchemaVersionMismatch",
        new RegExp(
          `taken at catalog schema version ${all.length}, this database is at ${format} and restores snapshots ` +
            `taken at ${format} to ${format}`,
        ),
      );
      assert.deepEqual(await sql`SELECT customer, total, n FROM totals ORDER BY customer`, before, "nothing changed");
      const fresh = await json<{ snapshot: string }>(
        await s.request("POST", "/snapshots", { stream_table: "totals" }),
        201,
      );
      await json(await s.request("POST", "/restore", { stream_table: "totals", source: fresh.snapshot }));
    } finally {
      await s.close();
    }
  },
});
