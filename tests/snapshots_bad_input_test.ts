/**
 * Bad input to the snapshot routes and SQL functions: each is a 4xx application/problem+json with a stable code, and
 * nothing changes (relations, the snapshot catalog, the stream table's rows and frontier); the stream table still
 * equals its defining query (the oracle) afterwards.
 */
import assert from "node:assert/strict";
import { ok, problem } from "./support/api.ts";
import { assertSameContent, OracleEngine, type Sql, StreamTableUnderTest } from "./support/oracle.ts";
import { dbTest } from "./support/service.ts";

const QUERY = "SELECT customer, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer";

/** What a refused request must leave as it was. */
async function everything(sql: Sql): Promise<Record<string, string[]>> {
  const texts = async (q: Promise<{ x: string }[]>) => (await q).map((r) => r.x);
  return {
    relations: await texts(sql`
      SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text AS x FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1`),
    snapshots: await texts(sql`
      SELECT snapshot_schema || '.' || snapshot_name || ':' || row_count || ':' || content_hash AS x
      FROM pgtrickle.pgt_snapshots ORDER BY 1`),
    stream_tables: await texts(sql`
      SELECT pgt_name || ':' || coalesce(frontier::text, '-') || ':' || coalesce(pending_full_reason, '-') AS x
      FROM pgtrickle.pgt_stream_tables ORDER BY 1`),
    totals: await texts(sql`SELECT row_to_json(t)::text AS x FROM totals t ORDER BY 1`),
    orders: await texts(sql`SELECT count(*)::text AS x FROM orders`),
  };
}

async function withTotals(
  fn: (o: { oracle: OracleEngine; st: StreamTableUnderTest; sql: Sql; snapshot: string }) => Promise<void>,
): Promise<void> {
  const oracle = await OracleEngine.start();
  try {
    // Test-only SQL: constant text.
    await oracle.sql.unsafe(`
      CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount int NOT NULL);
      INSERT INTO orders SELECT i, i % 10, i % 100 FROM generate_series(1, 500) i;`);
    const st = await StreamTableUnderTest.create(oracle, { name: "totals", query: QUERY, mode: "DIFFERENTIAL" });
    const snap = await ok<{ snapshot: string }>(
      await oracle.service.request("POST", "/snapshots", { stream_table: "totals" }),
      201,
    );
    await oracle.sql`INSERT INTO orders VALUES (1000, 3, 7)`;
    await st.refresh();
    await fn({ oracle, st, sql: oracle.sql, snapshot: snap.snapshot });
    await assertSameContent(oracle.sql, "totals", st.plan, QUERY);
  } finally {
    await oracle.close();
  }
}

Deno.test({
  name: "names that are not identifiers, try injection, or name a system schema are 400 InvalidName, nothing changed",
  ...dbTest,
  fn: () =>
    withTotals(async ({ oracle, sql, snapshot }) => {
      const before = await everything(sql);
      const bad: [string, string, Record<string, unknown>][] = [
        ["POST", "/snapshots", { stream_table: "totals; DROP TABLE orders" }],
        ["POST", "/snapshots", { stream_table: 'tot"als' }],
        ["POST", "/snapshots", { stream_table: "a.b.c" }],
        ["POST", "/snapshots", { stream_table: "" }],
        ["POST", "/snapshots", { stream_table: "totals", target: "snap; DROP TABLE orders --" }],
        ["POST", "/snapshots", { stream_table: "totals", target: "x'); DROP TABLE orders; --" }],
        ["POST", "/snapshots", { stream_table: "totals", target: "pg_catalog.evil" }],
        ["POST", "/snapshots", { stream_table: "totals", target: "information_schema.evil" }],
        ["POST", "/snapshots", { stream_table: "totals", target: "pgtrickle.mine" }],
        ["POST", "/snapshots", { stream_table: "totals", target: "pgtrickle_changes.mine" }],
        ["POST", "/snapshots", { stream_table: "totals", target: "pg_temp.mine" }],
        ["POST", "/restore", { stream_table: "totals", source: "x'); DROP TABLE orders; --" }],
        ["POST", "/restore", { stream_table: "totals", source: "pg_catalog.pg_class" }],
        ["POST", "/restore", { stream_table: "totals; DROP TABLE orders", source: snapshot }],
        ["GET", "/snapshots?stream_table=x;y", {}],
      ];
      for (const [method, path, body] of bad) {
        const res = await oracle.service.request(method, path, method === "GET" ? undefined : body);
        await problem(res, 400, "InvalidName");
      }
      for (const name of ["a;b", "pg_catalog.pg_class", "information_schema.tables", "x.y.z"]) {
        await problem(
          await oracle.service.request("DELETE", `/snapshots/${encodeURIComponent(name)}`),
          400,
          "InvalidName",
        );
        await problem(
          await oracle.service.request("GET", `/snapshots/${encodeURIComponent(name)}`),
          400,
          "InvalidName",
        );
      }
      // The SQL functions refuse the same, whoever calls them.
      for (
        const call of [
          sql`SELECT pgtrickle.snapshot_stream_table('totals', 'x; DROP TABLE orders')`,
          sql`SELECT pgtrickle.snapshot_stream_table('totals', 'pg_catalog.evil')`,
          sql`SELECT pgtrickle.restore_from_snapshot('totals', 'a.b.c')`,
          sql`SELECT pgtrickle.drop_snapshot('x''); DROP TABLE orders; --')`,
        ]
      ) {
        await assert.rejects(call, (e: { code?: string }) => e.code === "PTV01");
      }
      assert.deepEqual(await everything(sql), before);
    }),
});

Deno.test({
  name: "an occupied target is 409 SnapshotAlreadyExists and is not overwritten; a table that is not a snapshot " +
    "cannot be dropped as one",
  ...dbTest,
  fn: () =>
    withTotals(async ({ oracle, sql, snapshot }) => {
      await sql`CREATE TABLE keep_me (v int)`;
      await sql`INSERT INTO keep_me VALUES (1), (2)`;
      const before = await everything(sql);
      for (const target of ["keep_me", "public.keep_me", "orders"]) {
        await problem(
          await oracle.service.request("POST", "/snapshots", { stream_table: "totals", target }),
          409,
          "SnapshotAlreadyExists",
          /already exists; it is never overwritten/,
        );
      }
      await problem(await oracle.service.request("DELETE", "/snapshots/public.keep_me"), 404, "SnapshotNotFound");
      await problem(await oracle.service.request("DELETE", "/snapshots/public.orders"), 404, "SnapshotNotFound");
      await problem(
        await oracle.service.request("POST", "/restore", { stream_table: "totals", source: "public.keep_me" }),
        404,
        "SnapshotSourceNotFound",
      );
      await problem(
        await oracle.service.request("POST", "/restore", { stream_table: "gone", source: "snapshot_nope_1" }),
        404,
        "SnapshotSourceNotFound",
      );
      await problem(
        await oracle.service.request("POST", "/snapshots", { stream_table: "not_a_stream_table" }),
        404,
        "StreamTableNotFound",
      );
      await problem(
        await oracle.service.request("POST", "/snapshots", { stream_table: "totals", bogus: 1 }),
        400,
        "BadRequest",
      );
      await problem(
        await oracle.service.request("POST", "/restore", { stream_table: "totals", source: snapshot, verify: "yes" }),
        400,
        "BadRequest",
      );
      assert.deepEqual(await everything(sql), before);
    }),
});

Deno.test({
  name: "restoring into a stream table with other columns is 409 SnapshotIncompatible, nothing changed",
  ...dbTest,
  fn: () =>
    withTotals(async ({ oracle, sql, snapshot }) => {
      const other = "SELECT id, amount FROM orders WHERE amount > 90";
      const made = await oracle.service.request("POST", "/stream-tables", { name: "other", query: other });
      assert.equal(made.status, 201, await made.text());
      const before = await everything(sql);
      const otherRows = await sql`SELECT * FROM other ORDER BY id`;
      await problem(
        await oracle.service.request("POST", "/restore", { stream_table: "other", source: snapshot }),
        409,
        "SnapshotIncompatible",
        /stream table has columns .*"id".* the snapshot .*"customer"/,
      );
      assert.deepEqual(await everything(sql), before);
      assert.deepEqual(await sql`SELECT * FROM other ORDER BY id`, otherRows);
    }),
});

Deno.test({
  name: "a tampered snapshot (rows or columns changed) is 409 SnapshotHashMismatch, the stream table untouched",
  ...dbTest,
  fn: () =>
    withTotals(async ({ oracle, sql, snapshot }) => {
      // Test-only SQL: the snapshot's name is the service's answer, made of identifiers.
      await sql.unsafe(`UPDATE ${snapshot} SET total = total + 1 WHERE customer = 3`);
      const before = await everything(sql);
      await problem(
        await oracle.service.request("POST", "/restore", { stream_table: "totals", source: snapshot }),
        409,
        "SnapshotHashMismatch",
        /content hash \d+:-?\d+, recorded \d+:-?\d+; nothing was restored/,
      );
      assert.deepEqual(await everything(sql), before);

      await sql.unsafe(`ALTER TABLE ${snapshot} ADD COLUMN extra int`);
      const after = await everything(sql);
      await problem(
        await oracle.service.request("POST", "/restore", { stream_table: "totals", source: snapshot, verify: false }),
        409,
        "SnapshotHashMismatch",
        /changed since it was taken: its table has columns/,
      );
      assert.deepEqual(await everything(sql), after);
    }),
});

Deno.test({
  name: "while a refresh holds the stream table, a snapshot waits, then is 409 StreamTableBusy with a retry hint",
  ...dbTest,
  fn: () =>
    withTotals(async ({ oracle, sql, snapshot }) => {
      const before = await everything(sql);
      const holder = oracle.service.engine.db().sql;
      let answered: Response | null = null;
      const t0 = performance.now();
      // The refresh's lock: its catalog row, FOR UPDATE (engine/catalog.ts lockStreamTable).
      await holder.begin(async (tx) => {
        await tx`SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'totals' FOR UPDATE`;
        answered = await oracle.service.request("POST", "/snapshots", { stream_table: "totals" });
        // The SQL function, with a short wait of its own.
        await assert.rejects(
          sql`SELECT * FROM pgtrickle.restore_from_snapshot('totals', ${snapshot}, true, 200)`,
          (e: { code?: string; message?: string }) => e.code === "PTC05" && /being refreshed/.test(e.message ?? ""),
        );
      });
      const waited = performance.now() - t0;
      const p = await problem(answered!, 409, "StreamTableBusy", /"public\.totals" is being refreshed/);
      assert.equal(p.retry_after_seconds, 5);
      assert.ok(waited >= 9_000, `it waited for the lock (${waited.toFixed(0)} ms)`);
      assert.deepEqual(await everything(sql), before);
    }),
});
