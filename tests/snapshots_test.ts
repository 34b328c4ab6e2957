/**
 * Snapshots and point-in-time restore, through the REST API over a real engine: a restore brings back the rows and
 * the frontier of the snapshot, and the next refresh continues from there, DIFFERENTIAL while the changes since are
 * retained, FULL (with its reason) when they are not; every refresh checks the oracle (the stream table equals its
 * defining query) inside its transaction.
 */
import assert from "node:assert/strict";
import { ok, problem } from "./support/api.ts";
import { OracleEngine, type Sql, StreamTableUnderTest } from "./support/oracle.ts";
import { one } from "./support/rows.ts";
import { dbTest, type TestServiceOptions } from "./support/service.ts";
import type { RestoreResult, Snapshot } from "../engine/snapshots.ts";
import { refreshStreamTable } from "../engine/refresh/refresh.ts";
import { prunesSettled } from "../engine/refresh/prune.ts";

type SnapshotJson = Omit<Snapshot, "created_at"> & { created_at: string; database: string };
type RestoreJson = RestoreResult;

const QUERY = "SELECT c.name, count(*) AS n, sum(o.amount) AS total FROM orders o JOIN customers c ON c.id = " +
  "o.customer GROUP BY c.name";

/** An engine whose refreshes check the oracle, a join + GROUP BY stream table `totals` over 10,000 orders. */
async function setup(options: TestServiceOptions = {}): Promise<{ oracle: OracleEngine; st: StreamTableUnderTest }> {
  const oracle = await OracleEngine.start(options);
  // Test-only SQL: constant text.
  await oracle.sql.unsafe(`
    CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
    INSERT INTO customers SELECT i, 'customer ' || i FROM generate_series(0, 49) i;
    CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount int);
    INSERT INTO orders SELECT i, i % 50, i % 97 FROM generate_series(1, 10000) i;
    ANALYZE customers; ANALYZE orders;`);
  const st = await StreamTableUnderTest.create(oracle, { name: "totals", query: QUERY, mode: "DIFFERENTIAL" });
  return { oracle, st };
}

/** Some inserts, updates (of the join key too), deletes and NULLs, about 150 changes: each `round` its own rows. */
async function change(sql: Sql, round: number): Promise<void> {
  const base = 100_000 + round * 100;
  const at = (from: number, width: number) =>
    `${from + (round % 100) * width} AND ${from + (round % 100 + 1) * width - 1}`;
  await sql.unsafe(`
    INSERT INTO orders SELECT ${base} + i, (i * ${round + 3}) % 50, CASE WHEN i % 7 = 0 THEN NULL ELSE i END
      FROM generate_series(1, 40) i;
    UPDATE orders SET amount = coalesce(amount, 0) + ${round + 1} WHERE id BETWEEN ${at(1, 30)};
    UPDATE orders SET customer = (customer + 1) % 50 WHERE id BETWEEN ${at(5001, 20)};
    DELETE FROM orders WHERE id BETWEEN ${at(8001, 10)};
    UPDATE customers SET name = name || '+' WHERE id = ${round % 50};`);
}

async function snapshot(oracle: OracleEngine, body: Record<string, unknown>): Promise<SnapshotJson> {
  return await ok<SnapshotJson>(await oracle.service.request("POST", "/snapshots", body), 201);
}

async function restore(oracle: OracleEngine, body: Record<string, unknown>): Promise<RestoreJson> {
  return await ok<RestoreJson>(await oracle.service.request("POST", "/restore", body));
}

/** The stream table's frontier and its rows (every column) as sorted JSON lines. */
async function state(sql: Sql, table: string): Promise<{ frontier: string | null; rows: string[] }> {
  const [st] = await sql<{ frontier: string | null }[]>`
    SELECT frontier::text AS frontier FROM pgtrickle.pgt_stream_tables WHERE pgt_name = ${table}`;
  return { frontier: st?.frontier ?? null, rows: await rowsOf(sql, `public.${table}`) };
}

/** Every row of a table (all columns, hidden ones too) as sorted JSON lines. */
async function rowsOf(sql: Sql, table: string): Promise<string[]> {
  // Test-only SQL: a table name this test or the service's answer chose.
  const rows = await sql.unsafe<{ r: string }[]>(`SELECT row_to_json(t)::text AS r FROM ${table} t`);
  return rows.map((x) => x.r).sort();
}

Deno.test({
  name: "restore after changes and two refreshes: rows and frontier are the snapshot's, the next refresh is " +
    "DIFFERENTIAL and equals the defining query",
  ...dbTest,
  fn: async () => {
    const { oracle, st } = await setup();
    try {
      const sql = oracle.sql;
      const before = await state(sql, "totals");
      const snap = await snapshot(oracle, { stream_table: "totals" });
      assert.match(snap.snapshot, /^pgtrickle\.snapshot_totals_\d{13}$/);
      assert.equal(snap.stream_table, "public.totals");
      assert.equal(snap.frontier, before.frontier, "the snapshot's frontier is the stream table's");
      assert.equal(snap.row_count, before.rows.length);
      assert.equal(snap.retention_state, "retained");
      assert.deepEqual(await rowsOf(sql, snap.snapshot), before.rows, "the snapshot holds the stream table's rows");

      for (let round = 0; round < 2; round++) {
        await change(sql, round);
        assert.equal((await st.refresh()).action, "DIFFERENTIAL");
      }
      assert.notDeepEqual((await state(sql, "totals")).rows, before.rows, "the refreshes changed the stream table");

      const r = await restore(oracle, { stream_table: "totals", source: snap.snapshot });
      assert.equal(r.recreated, false);
      assert.equal(r.rows_restored, snap.row_count);
      assert.equal(r.frontier, snap.frontier);
      assert.deepEqual(r.next_refresh, { mode: "DIFFERENTIAL", reason: null });
      assert.ok((r.pending_changes ?? 0) > 0, `changes since the snapshot are pending: ${JSON.stringify(r)}`);
      assert.ok(r.catch_up_estimate_ms !== null && r.catch_up_estimate_ms >= 0, JSON.stringify(r));
      assert.deepEqual(await state(sql, "totals"), before, "rows and frontier are the snapshot's");

      const next = await st.refresh();
      assert.equal(next.action, "DIFFERENTIAL", "the first refresh after the restore is DIFFERENTIAL");
      assert.equal(next.deltaRows, r.pending_changes, "it applies exactly the pending changes");
    } finally {
      await oracle.close();
    }
  },
});

Deno.test({
  name: "a dropped stream table recreated from its snapshot: query, schedule and mode come back, the next refresh " +
    "is DIFFERENTIAL and equals the defining query",
  ...dbTest,
  fn: async () => {
    const { oracle, st } = await setup();
    try {
      const sql = oracle.sql;
      await change(sql, 0);
      await st.refresh();
      const before = await state(sql, "totals");
      const snap = await snapshot(oracle, { stream_table: "totals", target: "public.totals_backup" });
      assert.equal(snap.snapshot, "public.totals_backup");
      const drop = await oracle.service.request("DELETE", "/stream-tables/totals");
      assert.equal(drop.status, 204, await drop.text());
      for (let round = 1; round < 3; round++) await change(sql, round);

      const r = await restore(oracle, { stream_table: "totals", source: "public.totals_backup" });
      assert.equal(r.recreated, true);
      assert.equal(r.frontier, snap.frontier);
      assert.equal(r.next_refresh.mode, "DIFFERENTIAL", JSON.stringify(r));
      assert.deepEqual(await state(sql, "totals"), before, "rows and frontier are the snapshot's");
      const shown = await ok<{ query: string; schedule: string; refresh_mode: string; status: string }>(
        await oracle.service.request("GET", "/stream-tables/totals"),
      );
      assert.deepEqual(
        [shown.query, shown.schedule, shown.refresh_mode, shown.status],
        [QUERY, "1h", "DIFFERENTIAL", "ACTIVE"],
      );

      const pgtId = one(
        await sql<{ id: number }[]>`
        SELECT pgt_id::int AS id FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'totals'`,
      ).id;
      const next = await refreshStreamTable(oracle.ctx, pgtId, { initiatedBy: "MANUAL" });
      assert.equal(next.action, "DIFFERENTIAL", "the recreated stream table continues differentially");
      assert.equal(next.delta_rows, r.pending_changes);
    } finally {
      await oracle.close();
    }
  },
});

Deno.test({
  name: "snapshots taken while writers and refreshes run restore to states whose next refresh is the oracle's answer",
  ...dbTest,
  fn: async () => {
    // Every refresh after a restore is meant to continue from it, however many changes have piled up meanwhile.
    const { oracle, st } = await setup({ settings: { differentialMaxChangeRatio: 100 } });
    try {
      const sql = oracle.sql;
      let stop = false;
      let round = 0;
      // Each loop stops the others when it fails; settled at once, so a failure waits for the finally below.
      const loop = async (step: () => Promise<void>) => {
        try {
          while (!stop) await step();
        } finally {
          stop = true;
        }
      };
      const loops = Promise.allSettled([
        loop(() => change(sql, round++)),
        // As the scheduler does, refreshes come back to back with short pauses.
        loop(async () => {
          await st.refresh();
          await new Promise((r) => setTimeout(r, 10));
        }),
      ]);
      const snaps: SnapshotJson[] = [];
      let settled: PromiseSettledResult<void>[];
      try {
        for (let i = 0; i < 5 && !stop; i++) {
          snaps.push(await snapshot(oracle, { stream_table: "totals" }));
          await new Promise((r) => setTimeout(r, 50));
        }
      } finally {
        // The writer and the refresher run on the pools oracle.close() ends: they finish before it, whatever failed
        // here (a refresh left running would fail with CONNECTION_ENDED after the close, an uncaught rejection).
        stop = true;
        settled = await loops;
      }
      for (const s of settled) if (s.status === "rejected") throw s.reason;
      assert.ok(round > 2 && st.refreshes.length > 3, `writes (${round}) and refreshes ran meanwhile`);
      assert.equal(new Set(snaps.map((s) => s.frontier)).size > 1, true, "the snapshots saw different frontiers");

      for (const snap of snaps) {
        const r = await restore(oracle, { stream_table: "totals", source: snap.snapshot });
        assert.equal(r.frontier, snap.frontier);
        assert.deepEqual(await rowsOf(sql, "public.totals"), await rowsOf(sql, snap.snapshot));
        // The oracle, inside the refresh: the restored rows were exact for the restored frontier.
        const next = await st.refresh();
        assert.notEqual(next.action, "FULL", `the refresh after restoring ${snap.snapshot} continues from it`);
      }
    } finally {
      await oracle.close();
    }
  },
});

Deno.test({
  name: "a snapshot waiting for a refresh gets the lock when that refresh commits, before a refresh queued after it",
  ...dbTest,
  fn: async () => {
    const { oracle } = await setup();
    const sql = oracle.sql;
    // Two transactions that do to the catalog row what a refresh does (lock it, update it), committing on release:
    // the second queues behind the snapshot, as the next refresh of a stream table refreshed back to back does.
    const locked = [Promise.withResolvers<void>(), Promise.withResolvers<void>()];
    const release = [Promise.withResolvers<void>(), Promise.withResolvers<void>()];
    const refreshLike = (i: number) =>
      sql.begin(async (tx) => {
        await tx`SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'totals' FOR UPDATE`;
        await tx`UPDATE pgtrickle.pgt_stream_tables SET updated_at = now() WHERE pgt_name = 'totals'`;
        locked[i]!.resolve();
        await release[i]!.promise;
      });
    const waitingForLocks = async (n: number) => {
      for (let tries = 0;; tries++) {
        const [w] = await sql<{ n: number }[]>`
          SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'`;
        if (w!.n >= n) return;
        assert.ok(tries < 500, `${n} sessions waiting for a lock, ${w!.n} after 5 s`);
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    const holders: Promise<unknown>[] = [];
    let answer: Promise<Response> | null = null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      holders.push(refreshLike(0));
      await locked[0]!.promise;
      answer = oracle.service.request("POST", "/snapshots", { stream_table: "totals" });
      await waitingForLocks(1);
      holders.push(refreshLike(1));
      await waitingForLocks(2);
      release[0]!.resolve();
      // A REPEATABLE READ snapshot would fail here (its snapshot predates the commit), retry behind the second
      // holder and wait for it: it must answer without the second being released.
      const first = await Promise.race([
        answer.then(() => "the snapshot"),
        new Promise<string>((r) => (timer = setTimeout(() => r("nothing within 3 s"), 3000))),
      ]);
      assert.equal(first, "the snapshot", "the snapshot answered while the next refresh-like transaction waited");
      const snap = await ok<SnapshotJson>(await answer, 201);
      assert.equal(snap.frontier, (await state(sql, "totals")).frontier);
      assert.deepEqual(await rowsOf(sql, snap.snapshot), (await state(sql, "totals")).rows);
    } finally {
      clearTimeout(timer);
      for (const r of release) r.resolve();
      // Everything on the pools settles before they close.
      await Promise.allSettled([...holders, ...(answer === null ? [] : [answer])]);
      await oracle.close();
    }
  },
});

Deno.test({
  name: "a rows_only snapshot (past the retention limit) restores the rows and the next refresh is FULL, with why",
  ...dbTest,
  fn: async () => {
    const { oracle, st } = await setup({ settings: { snapshotRetentionMaxRows: 5 } });
    try {
      const sql = oracle.sql;
      const snap = await snapshot(oracle, { stream_table: "totals" });
      const rows = await rowsOf(sql, snap.snapshot);
      await change(sql, 0);
      await st.refresh(); // its prune (which runs after the refresh commits) finds the snapshot pinning > 5 changes
      await prunesSettled(oracle.ctx);
      const listed = await ok<SnapshotJson>(await oracle.service.request("GET", `/snapshots/${snap.snapshot}`));
      assert.equal(listed.retention_state, "rows_only");
      assert.match(listed.rows_only_reason ?? "", /above the retention limit of 5 rows/);
      assert.equal(listed.pinned_changes, 0);

      const r = await restore(oracle, { stream_table: "totals", source: snap.snapshot });
      assert.equal(r.frontier, null);
      assert.equal(r.next_refresh.mode, "FULL");
      assert.match(r.next_refresh.reason ?? "", /rows_only: .*retention limit/);
      assert.deepEqual(await rowsOf(sql, "public.totals"), rows, "the snapshot's rows are restored");
      const pending = one(
        await sql<{ reason: string | null }[]>`
        SELECT pending_full_reason AS reason FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'totals'`,
      );
      assert.equal(pending.reason, r.next_refresh.reason, "the stream table says why its next refresh is FULL");
      const shown = await ok<{ pending_full_reason: string | null }>(
        await oracle.service.request("GET", "/stream-tables/totals"),
      );
      assert.equal(shown.pending_full_reason, r.next_refresh.reason, "and its API view says so too");

      assert.equal((await st.refresh()).action, "FULL");
      const after = await ok<{ pending_full_reason: string | null }>(
        await oracle.service.request("GET", "/stream-tables/totals"),
      );
      assert.equal(after.pending_full_reason, null, "the FULL refresh cleared it");
      const [h] = await sql<{ reason: string }[]>`
        SELECT reason FROM pgtrickle.pgt_refresh_history ORDER BY refresh_id DESC LIMIT 1`;
      assert.equal(h!.reason, r.next_refresh.reason, "the history records the reason");
      await change(sql, 1);
      assert.equal((await st.refresh()).action, "DIFFERENTIAL", "and after it, differential again");
    } finally {
      await oracle.close();
    }
  },
});

Deno.test({
  name: "a snapshot from another cluster restores the rows and the next refresh is FULL, saying so",
  ...dbTest,
  fn: async () => {
    const { oracle, st } = await setup();
    try {
      const sql = oracle.sql;
      const snap = await snapshot(oracle, { stream_table: "totals" });
      // What a snapshot copied from another cluster carries: that cluster's system identifier.
      await sql`UPDATE pgtrickle.pgt_snapshots SET system_identifier = 42`;
      await change(sql, 0);
      await st.refresh();
      const r = await restore(oracle, { stream_table: "totals", source: snap.snapshot });
      assert.equal(r.next_refresh.mode, "FULL");
      assert.match(r.next_refresh.reason ?? "", /another cluster \(system identifier 42, this cluster \d+\)/);
      assert.equal((await st.refresh()).action, "FULL");
    } finally {
      await oracle.close();
    }
  },
});

Deno.test({
  name: "a snapshot taken at another catalog schema version is refused, naming both, and nothing changes",
  ...dbTest,
  fn: async () => {
    const { oracle, st } = await setup();
    try {
      const sql = oracle.sql;
      const snap = await snapshot(oracle, { stream_table: "totals" });
      await change(sql, 0);
      await st.refresh();
      const before = await state(sql, "totals");
      await sql`UPDATE pgtrickle.pgt_snapshots SET catalog_schema_version = 3`;
      const current = one(await sql<{ v: number }[]>`SELECT max(version)::int AS v FROM pgtrickle.pgt_schema_version`)
        .v;
      await problem(
        await oracle.service.request("POST", "/restore", { stream_table: "totals", source: snap.snapshot }),
        409,
        "SnapshotSchemaVersionMismatch",
        new RegExp(`schema version 3, this database is at ${current}`),
      );
      assert.deepEqual(await state(sql, "totals"), before);
    } finally {
      await oracle.close();
    }
  },
});

Deno.test({
  name: "list shows true row counts, sizes and pins; drop releases the pin and the buffers are pruned",
  ...dbTest,
  fn: async () => {
    const { oracle, st } = await setup();
    try {
      const sql = oracle.sql;
      const first = await snapshot(oracle, { stream_table: "totals" });
      await change(sql, 0);
      await st.refresh();
      const second = await snapshot(oracle, { stream_table: "totals", target: "public.kept" });
      await change(sql, 1);
      await st.refresh();

      const list = await ok<SnapshotJson[]>(await oracle.service.request("GET", "/snapshots?stream_table=totals"));
      assert.deepEqual(list.map((s) => s.snapshot), ["public.kept", first.snapshot], "newest first");
      for (const s of list) {
        const truth = one(
          await sql.unsafe<{ n: number; size: number }[]>(
            // The names come from the service's own answer and were created by this test.
            `SELECT (SELECT count(*)::int FROM ${s.snapshot}) AS n, pg_total_relation_size('${s.snapshot}')::int8 AS size`,
          ),
        );
        assert.deepEqual([s.row_count, s.size_bytes], [truth.n, truth.size], `${s.snapshot}: true count and size`);
      }
      const buffer =
        one(await sql<{ b: string }[]>`SELECT 'pgtrickle_changes.changes_' || 'orders'::regclass::oid AS b`)
          .b;
      const bufferRows = async () =>
        one(await sql.unsafe<{ n: number }[]>(`SELECT count(*)::int AS n FROM ${buffer}`)).n;
      // Both refreshes' changes are kept: the oldest snapshot pins them all, although the stream table is past them.
      assert.ok(await bufferRows() > 0);
      assert.equal(list[1]!.pinned_changes >= list[0]!.pinned_changes, true);
      assert.ok(list[1]!.pinned_changes > 0);
      assert.equal(
        (await oracle.service.request("GET", "/snapshots?stream_table=nothing_here").then((r) => r.json())).length,
        0,
      );

      assert.equal((await oracle.service.request("DELETE", `/snapshots/${first.snapshot}`)).status, 204);
      assert.equal((await oracle.service.request("DELETE", "/snapshots/public.kept")).status, 204);
      assert.equal(await bufferRows(), 0, "nothing pins the buffer any more: pruned to what the stream table needs");
      const [left] = await sql`SELECT to_regclass(${first.snapshot}) AS a, to_regclass('public.kept') AS b`;
      assert.deepEqual([left!.a, left!.b], [null, null], "the snapshot tables are dropped");
      await problem(await oracle.service.request("GET", "/snapshots/public.kept"), 404, "SnapshotNotFound");
      const doc = await ok<{ paths: Record<string, object> }>(await oracle.service.request("GET", "/openapi.json"));
      const methods = Object.fromEntries(Object.entries(doc.paths).map(([p, item]) => [p, Object.keys(item).sort()]));
      assert.deepEqual(
        [methods["/snapshots"], methods["/snapshots/{snapshot}"], methods["/restore"]],
        [["get", "post"], ["delete", "get"], ["post"]],
        "the OpenAPI document lists the snapshot routes",
      );
      assert.equal(second.snapshot, "public.kept");
    } finally {
      await oracle.close();
    }
  },
});
