/**
 * POST /stream-tables and GET: creating stream tables (schemas, modes, schedules, case-sensitive names, the longest
 * names) and reading them back, checked against the database itself.
 */
import assert from "node:assert/strict";
import { dbTest } from "./support/service.ts";
import {
  assertSameRows,
  BIG_ORDERS_QUERY,
  bufferOf,
  CAPTURE,
  captureTriggers,
  created,
  createSources,
  FRONTIER,
  ok,
  problem,
  regclass,
  type StreamTable,
  TOTALS_QUERY,
  withService,
} from "./support/api.ts";

const TOP_ORDERS_QUERY = "SELECT id, amount FROM orders ORDER BY amount DESC, id LIMIT 5";
const ROLLUP_QUERY = "SELECT customer, sum(amount) AS total FROM orders GROUP BY ROLLUP (customer)";
const DEALS_QUERY = 'SELECT count(*) AS deals, sum(amount) AS total FROM "Sales"."Deals"';

Deno.test({
  name: "POST /stream-tables creates it, refreshes it, and answers 201 with the stream table",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      await createSources(sql);
      const t0 = new Date();
      const res = await s.request("POST", "/stream-tables", { name: "big_orders", query: BIG_ORDERS_QUERY });
      const st = await ok<StreamTable>(res, 201);
      assert.equal(st.name, "public.big_orders");
      assert.equal(st.schema, "public");
      assert.equal(st.table, "big_orders");
      assert.equal(st.database, s.db.name);
      assert.equal(st.query, BIG_ORDERS_QUERY);
      assert.equal(st.refresh_mode, "AUTO");
      assert.equal(st.effective_refresh_mode, "DIFFERENTIAL");
      assert.equal(st.fallback_reason, null);
      assert.equal(st.schedule, "1m", "the default schedule");
      assert.equal(st.freshness_deadline_ms, null);
      assert.equal(st.status, "ACTIVE");
      assert.match(st.frontier ?? "", FRONTIER);
      assert.equal(st.row_count, 98);
      assert.deepEqual(st.columns, [
        { name: "id", type: "integer" },
        { name: "customer", type: "integer" },
        { name: "amount", type: "integer" },
      ]);
      assert.deepEqual(st.sources, ["orders"]);
      assert.ok(st.last_refresh_at !== null && new Date(st.last_refresh_at) >= new Date(t0.getTime() - 1000));
      assert.equal(st.consecutive_errors, 0);
      assert.equal(st.last_error, null);
      assert.equal(res.headers.get("location"), `/stream-tables/public.big_orders?database=${s.db.name}`);
      // The storage is a real table holding the query's rows.
      await assertSameRows(sql, {
        table: "big_orders",
        query: BIG_ORDERS_QUERY,
        columns: ["id", "customer", "amount"],
      });
      // Change capture is installed on the source.
      assert.deepEqual(await captureTriggers(sql, "orders"), CAPTURE);
      assert.notEqual(await regclass(sql, await bufferOf(sql, "orders")), null);
      // The Location header leads to it.
      const again = await ok<StreamTable>(await s.request("GET", res.headers.get("location")!));
      assert.equal(again.name, "public.big_orders");
    }),
});

Deno.test({
  name: "POST in a non-public schema, FULL mode, cron schedule and a deadline",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      await createSources(sql);
      const st = await created(s, {
        name: "analytics.customer_totals",
        query: TOTALS_QUERY,
        refresh_mode: "FULL",
        schedule: "*/5 * * * *",
        freshness_deadline_ms: 60_000,
      });
      assert.equal(st.name, "analytics.customer_totals");
      assert.equal(st.schema, "analytics");
      assert.equal(st.refresh_mode, "FULL");
      assert.equal(st.effective_refresh_mode, "FULL");
      assert.equal(st.fallback_reason, null);
      assert.equal(st.schedule, "*/5 * * * *");
      assert.equal(st.freshness_deadline_ms, 60_000);
      assert.equal(st.row_count, 10);
      assert.equal(await regclass(sql, "analytics.customer_totals"), "analytics.customer_totals");
      assert.equal(await regclass(sql, "public.customer_totals"), null, "created in its schema, not in public");
      await assertSameRows(sql, {
        table: "analytics.customer_totals",
        query: TOTALS_QUERY,
        columns: ["customer", "total", "n"],
      });
    }),
});

Deno.test({
  name: "names are case-sensitive: schema and table with capitals",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      await createSources(sql);
      const st = await created(s, { name: "Sales.DealTotals", query: DEALS_QUERY });
      assert.equal(st.name, "Sales.DealTotals");
      assert.deepEqual(st.sources, ["Sales.Deals"]);
      assert.equal(await regclass(sql, '"Sales"."DealTotals"'), '"Sales"."DealTotals"');
      await assertSameRows(sql, { table: '"Sales"."DealTotals"', query: DEALS_QUERY, columns: ["deals", "total"] });
      const again = await ok<StreamTable>(await s.request("GET", "/stream-tables/Sales.DealTotals"));
      assert.equal(again.name, "Sales.DealTotals");
      await problem(await s.request("GET", "/stream-tables/sales.dealtotals"), 404, "StreamTableNotFound");
    }),
});

Deno.test({
  name: "AUTO falls back to FULL for a query with ROLLUP, and says why",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      await createSources(s.db.sql);
      const st = await created(s, { name: "rollup", query: ROLLUP_QUERY, schedule: "1h" });
      assert.equal(st.refresh_mode, "AUTO");
      assert.equal(st.effective_refresh_mode, "FULL");
      assert.match(st.fallback_reason ?? "", /ROLLUP/);
      assert.deepEqual(st.plan_notes, []);
      await assertSameRows(s.db.sql, { table: "rollup", query: ROLLUP_QUERY, columns: ["customer", "total"] });
    }),
});

Deno.test({
  name: "a top-k query (ORDER BY ... LIMIT) is DIFFERENTIAL, and its plan notes say a change recomputes it",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      await createSources(s.db.sql);
      const st = await created(s, { name: "top_orders", query: TOP_ORDERS_QUERY, schedule: "1h" });
      assert.equal(st.effective_refresh_mode, "DIFFERENTIAL");
      assert.equal(st.fallback_reason, null);
      assert.equal(st.plan_notes.length, 1);
      assert.match(st.plan_notes[0]!, /top-k .*recomputes the whole result/);
      assert.equal(st.row_count, 5);
      await s.db.sql`UPDATE orders SET amount = amount + 100000 WHERE id = (SELECT min(id) FROM orders)`;
      await ok(await s.request("POST", "/stream-tables/top_orders/refresh"));
      const [h] = await s.db.sql<{ action: string }[]>`
        SELECT action FROM pgtrickle.pgt_refresh_history ORDER BY refresh_id DESC LIMIT 1`;
      assert.equal(h!.action, "DIFFERENTIAL");
      await assertSameRows(s.db.sql, { table: "top_orders", query: TOP_ORDERS_QUERY, columns: ["id", "amount"] });
      const [first] = await s.db.sql<{ id: number }[]>`SELECT id FROM top_orders ORDER BY amount DESC LIMIT 1`;
      const [min] = await s.db.sql<{ id: number }[]>`SELECT min(id) AS id FROM orders`;
      assert.equal(first!.id, min!.id);
    }),
});

Deno.test({
  name: "GET /stream-tables lists them; GET one by table or schema.table",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      await createSources(sql);
      await created(s, { name: "big_orders", query: BIG_ORDERS_QUERY });
      await created(s, { name: "analytics.customer_totals", query: TOTALS_QUERY, refresh_mode: "FULL" });
      await created(s, { name: "Sales.DealTotals", query: DEALS_QUERY });
      await created(s, { name: "top_orders", query: TOP_ORDERS_QUERY, schedule: "1h" });
      const get = async <T>(path: string) => await ok<T>(await s.request("GET", path));

      const list = await get<StreamTable[]>("/stream-tables");
      assert.deepEqual(
        list.map((st) => st.name).sort(),
        ["Sales.DealTotals", "analytics.customer_totals", "public.big_orders", "public.top_orders"].sort(),
      );
      const one = await get<StreamTable>("/stream-tables/big_orders");
      assert.deepEqual(await get<StreamTable>("/stream-tables/public.big_orders"), one);
      assert.deepEqual(list.find((st) => st.name === "public.big_orders"), one);
      assert.equal(one.status, "ACTIVE");
      assert.equal(one.refresh_mode, "AUTO");
      assert.equal(one.effective_refresh_mode, "DIFFERENTIAL");
      assert.equal(one.fallback_reason, null);
      assert.equal(one.schedule, "1m");
      assert.match(one.frontier ?? "", FRONTIER);
      assert.notEqual(one.last_refresh_at, null);
      assert.equal(one.last_error, null);
      const [count] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM big_orders`;
      assert.equal(one.row_count, count!.n);
    }),
});

Deno.test({
  name: "the longest valid name (63 bytes) can be created",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      await createSources(s.db.sql);
      const name = "n".repeat(63);
      await created(s, { name, query: "SELECT id FROM y" });
      assert.notEqual(await regclass(s.db.sql, name), null);
    }),
});

Deno.test({
  name: "a name ending in __pgt_key beside its stem can be created",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      await createSources(s.db.sql);
      await created(s, { name: "pair", query: "SELECT id FROM y" });
      await created(s, { name: "pair__pgt_key", query: "SELECT id FROM y" });
    }),
});
