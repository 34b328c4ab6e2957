/**
 * POST /stream-tables/{name}/refresh and GET .../history: the stream table follows its sources (DIFFERENTIAL, FULL,
 * NO_DATA), refreshes failing on the data are answered 422 and recorded, and the history pages newest first.
 */
import assert from "node:assert/strict";
import type { Sql } from "../db/pool.ts";
import { dbTest, type TestService } from "./support/service.ts";
import {
  assertSameRows,
  BIG_ORDERS_QUERY,
  created,
  createSources,
  FRONTIER,
  type HistoryEntry,
  ok,
  problem,
  type RefreshResult,
  type StreamTable,
  TOTALS_QUERY,
  withService,
} from "./support/api.ts";

/** Two orders enter big_orders (201 inserted; 1 updated to 99), one leaves (60 deleted), one stays out (202). */
async function changeOrders(sql: Sql): Promise<void> {
  await sql`INSERT INTO orders VALUES (201, 1, 90), (202, 2, 10)`;
  await sql`UPDATE orders SET amount = 99 WHERE id = 1`;
  await sql`DELETE FROM orders WHERE id = 60`;
}

Deno.test({
  name: "POST /{name}/refresh: after the source changes, the stream table follows",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      await createSources(sql);
      await created(s, { name: "big_orders", query: BIG_ORDERS_QUERY });
      await created(s, { name: "analytics.customer_totals", query: TOTALS_QUERY, refresh_mode: "FULL" });
      await created(s, {
        name: "Sales.DealTotals",
        query: 'SELECT count(*) AS deals, sum(amount) AS total FROM "Sales"."Deals"',
      });

      await changeOrders(sql);
      const r = await ok<RefreshResult>(await s.request("POST", "/stream-tables/big_orders/refresh"));
      assert.equal(r.action, "DIFFERENTIAL", JSON.stringify(r));
      assert.equal(r.delta_rows, 5, "2 inserts, an update (a delete and an insert), a delete");
      assert.equal(r.rows_inserted, 2);
      assert.equal(r.rows_deleted, 1);
      assert.match(r.frontier, FRONTIER);
      assert.ok(r.duration_ms >= 0);
      await assertSameRows(sql, {
        table: "big_orders",
        query: BIG_ORDERS_QUERY,
        columns: ["id", "customer", "amount"],
      });
      const st = await ok<StreamTable>(await s.request("GET", "/stream-tables/big_orders"));
      assert.equal(st.frontier, r.frontier);
      assert.equal(st.row_count, 99);
      assert.notEqual(st.last_diff_ms, null);

      const full = await ok<RefreshResult>(await s.request("POST", "/stream-tables/analytics.customer_totals/refresh"));
      assert.equal(full.action, "FULL");
      assert.match(full.reason ?? "", /refresh mode FULL/);
      assert.equal(full.rows_inserted, 10);
      await assertSameRows(sql, {
        table: "analytics.customer_totals",
        query: TOTALS_QUERY,
        columns: ["customer", "total", "n"],
      });

      await sql`INSERT INTO "Sales"."Deals" VALUES (3, 0.25)`;
      await ok<RefreshResult>(await s.request("POST", "/stream-tables/Sales.DealTotals/refresh"));
      const [deal] = await sql<{ deals: number; total: string }[]>`
        SELECT deals::int AS deals, total::text AS total FROM "Sales"."DealTotals"`;
      assert.deepEqual({ ...deal }, { deals: 3, total: "31.00" });
    }),
});

Deno.test({
  name: "POST /{name}/refresh with nothing changed is NO_DATA",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      await createSources(s.db.sql);
      const before = await created(s, { name: "big_orders", query: BIG_ORDERS_QUERY });
      const r = await ok<RefreshResult>(await s.request("POST", "/stream-tables/big_orders/refresh"));
      assert.deepEqual(
        { action: r.action, inserted: r.rows_inserted, deleted: r.rows_deleted, delta: r.delta_rows },
        { action: "NO_DATA", inserted: 0, deleted: 0, delta: 0 },
      );
      const after = await ok<StreamTable>(await s.request("GET", "/stream-tables/big_orders"));
      assert.equal(after.row_count, before.row_count);
      assert.equal(after.frontier, r.frontier);
    }),
});

Deno.test({
  name: "GET /{name}/history: newest first, limit, and paging with before",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      const get = async <T>(path: string) => await ok<T>(await s.request("GET", path));
      const refresh = async (name: string) => await ok(await s.request("POST", `/stream-tables/${name}/refresh`));
      await createSources(sql);
      await created(s, { name: "big_orders", query: BIG_ORDERS_QUERY });
      await created(s, { name: "analytics.customer_totals", query: TOTALS_QUERY, refresh_mode: "FULL" });
      await changeOrders(sql);
      await refresh("analytics.customer_totals"); // FULL: its mode, on changed sources
      await refresh("big_orders"); // DIFFERENTIAL
      for (let i = 0; i < 4; i++) await refresh("big_orders"); // NO_DATA

      const all = await get<HistoryEntry[]>("/stream-tables/big_orders/history");
      assert.deepEqual(all.map((h) => h.action), ["NO_DATA", "NO_DATA", "NO_DATA", "NO_DATA", "DIFFERENTIAL", "FULL"]);
      assert.deepEqual(all.map((h) => h.initiated_by), ["MANUAL", "MANUAL", "MANUAL", "MANUAL", "MANUAL", "CREATE"]);
      assert.ok(all.every((h) => h.status === "SUCCESS" && h.error === null));
      const ids = all.map((h) => h.refresh_id);
      assert.deepEqual(ids, [...ids].sort((a, b) => b - a), "newest first");
      const first = all.at(-1)!;
      assert.equal(first.reason, "initial refresh");
      assert.equal(first.rows_inserted, 98);
      const diff = all[4]!;
      assert.deepEqual([diff.rows_inserted, diff.rows_deleted, diff.delta_rows], [2, 1, 5]);
      assert.ok(new Date(diff.finished_at) >= new Date(diff.started_at));
      assert.ok(diff.duration_ms >= 0);

      const top2 = await get<HistoryEntry[]>("/stream-tables/big_orders/history?limit=2");
      assert.deepEqual(top2.map((h) => h.refresh_id), ids.slice(0, 2));
      const pages: number[] = [];
      let before: number | null = null;
      for (let guard = 0; guard < 10; guard++) {
        const page: HistoryEntry[] = await get<HistoryEntry[]>(
          `/stream-tables/big_orders/history?limit=2${before === null ? "" : `&before=${before}`}`,
        );
        if (page.length === 0) break;
        assert.ok(page.length <= 2);
        pages.push(...page.map((h) => h.refresh_id));
        before = page.at(-1)!.refresh_id;
      }
      assert.deepEqual(pages, ids, "the pages together are the whole history, without overlap");
      // The history of another stream table is its own.
      const other = await get<HistoryEntry[]>("/stream-tables/analytics.customer_totals/history");
      assert.deepEqual(other.map((h) => h.action), ["FULL", "FULL"]);
      assert.ok(other.every((h) => !ids.includes(h.refresh_id)));
      for (const bad of ["limit=0", "limit=1001", "limit=abc", "before=-1", "before=x"]) {
        const p = await problem(await s.request("GET", `/stream-tables/big_orders/history?${bad}`), 400, "BadRequest");
        assert.match(p.detail, new RegExp(bad.split("=")[0]!));
      }
    }),
});

/** A stream table whose query divides by `flaky.v`, created while every v is non-zero. */
async function createFlakyRatio(s: TestService): Promise<void> {
  await s.db.sql`CREATE TABLE flaky (id int PRIMARY KEY, v int NOT NULL)`;
  await s.db.sql`INSERT INTO flaky VALUES (1, 1), (2, 2)`;
  await created(s, { name: "flaky_ratio", query: "SELECT id, 100 / v AS x FROM flaky", schedule: "1h" });
}

Deno.test({
  name: "a refresh failing on the data answers 422 RefreshFailed with the server's message",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      await createFlakyRatio(s);
      await s.db.sql`UPDATE flaky SET v = 0 WHERE id = 2`;
      await problem(
        await s.request("POST", "/stream-tables/flaky_ratio/refresh"),
        422,
        "RefreshFailed",
        /division by zero/,
      );
    }),
});

Deno.test({
  name: "failed refreshes are recorded; after max_consecutive_errors: ERROR; ACTIVE resumes",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      await createFlakyRatio(s);
      await sql`UPDATE flaky SET v = 0 WHERE id = 2`;
      await problem(await s.request("POST", "/stream-tables/flaky_ratio/refresh"), 422, "RefreshFailed");
      const failed = await ok<StreamTable>(await s.request("GET", "/stream-tables/flaky_ratio"));
      assert.equal(failed.consecutive_errors, 1);
      assert.match(failed.last_error ?? "", /division by zero/);
      assert.equal(failed.status, "ACTIVE");
      for (let i = 0; i < 2; i++) {
        const res = await s.request("POST", "/stream-tables/flaky_ratio/refresh");
        assert.ok(res.status >= 400, `a failing refresh answered ${res.status}`);
        assert.equal(res.headers.get("content-type"), "application/problem+json");
        const text = await res.text();
        assert.ok(!/SELECT|flaky/i.test(text), `SQL text leaked: ${text}`);
      }
      const errored = await ok<StreamTable>(await s.request("GET", "/stream-tables/flaky_ratio"));
      assert.equal(errored.status, "ERROR");
      assert.equal(errored.consecutive_errors, 3);
      const history = await ok<HistoryEntry[]>(await s.request("GET", "/stream-tables/flaky_ratio/history"));
      assert.deepEqual(history.map((h) => h.status), ["FAILED", "FAILED", "FAILED", "SUCCESS"]);
      assert.ok(history.slice(0, 3).every((h) => /division by zero/.test(h.error ?? "")));
      // The last good content is kept.
      const rows = await sql<{ id: number; x: number }[]>`SELECT id, x FROM flaky_ratio ORDER BY id`;
      assert.deepEqual(rows.map((r) => [r.id, r.x]), [[1, 100], [2, 50]]);

      await sql`UPDATE flaky SET v = 4 WHERE id = 2`;
      const resumed = await ok<StreamTable>(
        await s.request("PATCH", "/stream-tables/flaky_ratio", { status: "ACTIVE" }),
      );
      assert.equal(resumed.status, "ACTIVE");
      assert.equal(resumed.consecutive_errors, 0);
      assert.equal(resumed.last_error, null);
      await ok<RefreshResult>(await s.request("POST", "/stream-tables/flaky_ratio/refresh"));
      const fixed = await sql<{ id: number; x: number }[]>`SELECT id, x FROM flaky_ratio ORDER BY id`;
      assert.deepEqual(fixed.map((r) => [r.id, r.x]), [[1, 100], [2, 25]]);
    }),
});
