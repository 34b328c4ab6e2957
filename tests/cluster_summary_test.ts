/**
 * GET /cluster/summary and pgtrickle.metrics_summary(): stream tables by status, refreshes and failures (retained
 * history and the last hour), rows processed, the stalest stream table; the REST answer is the SQL function's, and the
 * figures are those a user reads from each stream table's own history.
 */
import assert from "node:assert/strict";
import { connect, urlForDatabase } from "../db/pool.ts";
import type { ClusterSummary, DatabaseSummary } from "../engine/cluster.ts";
import { dbTest, startTestService, type TestService } from "./support/service.ts";

interface HistoryEntry {
  status: string;
  rows_inserted: number;
  rows_deleted: number;
}

async function create(s: TestService, database: string, name: string, query: string): Promise<void> {
  const r = await s.request("POST", `/stream-tables?database=${database}`, { name, query, schedule: "1h" });
  assert.equal(r.status, 201, await r.text());
}

/** Refreshes, failures and rows processed as each stream table's history shows them (the user's view). */
async function fromHistory(s: TestService, database: string, names: string[]) {
  const out = { refreshes: 0, failed: 0, rows: 0 };
  for (const name of names) {
    const r = await s.request("GET", `/stream-tables/${name}/history?database=${database}&limit=1000`);
    for (const h of await r.json() as HistoryEntry[]) {
      out.refreshes++;
      if (h.status === "FAILED") out.failed++;
      else out.rows += h.rows_inserted + h.rows_deleted;
    }
  }
  return out;
}

/** A summary without the lag, which grows between two reads. */
function withoutLag(d: DatabaseSummary) {
  const { stalest_lag_ms: _, ...rest } = d;
  return rest;
}

Deno.test({
  name: "cluster summary: per database and summed, equal to the SQL function and to the stream tables' histories",
  ...dbTest,
  fn: async () => {
    const s = await startTestService({ extraDatabases: 1 });
    const [one, two] = [s.db.name, s.databases[0]!];
    const second = connect(urlForDatabase(s.db.serverUrl, two), { max: 1 });
    try {
      await s.engine.scheduler.tick(); // this instance leads both: the summary has their worker rows
      for (const sql of [s.db.sql, second]) {
        await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
        await sql`INSERT INTO src SELECT g, g FROM generate_series(1, 5) g`;
      }
      await create(s, one, "old_paused", "SELECT id, v FROM src");
      await create(s, one, "ratio", "SELECT id, 10 / v AS q FROM src");
      await create(s, one, "plain", "SELECT id, v FROM src WHERE v > 2");
      await create(s, two, "copy", "SELECT id, v FROM src");
      let r = await s.request("PATCH", `/stream-tables/old_paused?database=${one}`, { status: "SUSPENDED" });
      assert.equal(r.status, 200, await r.text());
      // The paused one is the oldest, but stale on purpose: "plain" is the stalest that should be fresh.
      await s.db.sql`UPDATE pgtrickle.pgt_stream_tables SET last_refresh_at = now() - interval '3 hours'
        WHERE pgt_name = 'old_paused'`;
      await s.db.sql`UPDATE pgtrickle.pgt_stream_tables SET last_refresh_at = now() - interval '2 hours'
        WHERE pgt_name = 'plain'`;
      await s.db.sql`UPDATE src SET v = 0 WHERE id = 1`; // 10 / 0: the next refresh of "ratio" fails
      r = await s.request("POST", `/stream-tables/ratio/refresh?database=${one}`);
      assert.equal(r.status, 422, await r.text());
      r = await s.request("POST", `/stream-tables/copy/refresh?database=${two}`);
      assert.equal(r.status, 200, await r.text());
      // One refresh moved out of the last hour.
      await second`UPDATE pgtrickle.pgt_refresh_history SET started_at = now() - interval '2 hours'
        WHERE refresh_id = (SELECT min(refresh_id) FROM pgtrickle.pgt_refresh_history)`;

      r = await s.request("GET", "/cluster/summary");
      assert.equal(r.status, 200);
      const summary = await r.json() as ClusterSummary;
      const byName = new Map(summary.databases.map((d) => [d.db_name, d]));
      const d1 = byName.get(one)!;
      const d2 = byName.get(two)!;

      // The REST rows are the SQL function's, in each database.
      for (const [name, sql] of [[one, s.db.sql], [two, second]] as const) {
        const [row] = await sql<DatabaseSummary[]>`
          SELECT *, quota_utilization_pct::float8 AS quota_utilization_pct FROM pgtrickle.metrics_summary()`;
        assert.deepEqual(
          withoutLag({ ...row!, history_since: (row!.history_since as unknown as Date).toISOString() }),
          withoutLag(byName.get(name)!),
        );
      }

      assert.deepEqual(
        [d1.stream_tables, d1.active, d1.suspended, d1.error, d1.initializing],
        [3, 2, 1, 0, 0],
        "three in the first database: one suspended",
      );
      assert.deepEqual([d2.stream_tables, d2.active], [1, 1]);
      const h1 = await fromHistory(s, one, ["old_paused", "ratio", "plain"]);
      const h2 = await fromHistory(s, two, ["copy"]);
      assert.deepEqual([d1.refreshes_total, d1.refreshes_failed_total, d1.rows_processed_total], [
        h1.refreshes,
        h1.failed,
        h1.rows,
      ]);
      assert.equal(d1.refreshes_total, 4, "three creations and one failed refresh");
      assert.equal(d1.refreshes_failed_total, 1);
      assert.equal(d1.refreshes_last_hour, 4);
      assert.deepEqual([d2.refreshes_total, d2.rows_processed_total], [h2.refreshes, h2.rows]);
      assert.equal(d2.refreshes_total, 2);
      assert.equal(d2.refreshes_last_hour, 1, "the one moved two hours back is out of the last hour");
      assert.equal(d1.stalest_stream_table, "public.plain");
      assert.ok(Math.abs(d1.stalest_lag_ms! - 7_200_000) < 60_000, `about two hours: ${d1.stalest_lag_ms}`);
      assert.equal(d1.quota, 2);

      const c = summary.cluster;
      assert.equal(c.databases, 2);
      assert.equal(c.stream_tables, 4);
      assert.equal(c.refreshes_total, d1.refreshes_total + d2.refreshes_total);
      assert.equal(c.refreshes_failed_last_hour, 1);
      assert.equal(c.rows_processed_total, h1.rows + h2.rows);
      assert.deepEqual(c.stalest_stream_table?.name, "public.plain");
      assert.equal(c.stalest_stream_table?.db_name, one);
      assert.equal(c.max_workers, 4);
      assert.equal(c.utilization_pct, 0);

      const filtered = await (await s.request("GET", `/cluster/summary?database=${two}`)).json() as ClusterSummary;
      assert.deepEqual(filtered.databases.map((d) => d.db_name), [two]);
      assert.equal(filtered.cluster.stream_tables, 1);
    } finally {
      await second.end();
      await s.close();
    }
  },
});
