/**
 * The stream-table API through the HTTP app (app.request), over a real engine and a fresh PostgreSQL database:
 * every endpoint, the problems answering bad input (and the database left as it was), two managed databases,
 * bearer tokens and the body limit. What the API says is checked against the database itself (db.sql).
 */
import assert from "node:assert/strict";
import type { z } from "@hono/zod-openapi";
import { connect, type Sql, urlForDatabase } from "../db/pool.ts";
import { quoteIdent } from "../db/identifiers.ts";
import type { Problem } from "../routes/problem.ts";
import type { HistoryEntrySchema, RefreshResultSchema, StreamTableSchema } from "../routes/schemas.ts";
import { VERSION } from "../version.ts";
import { dbTest, startTestService, type TestService } from "./support/service.ts";

type StreamTable = z.infer<typeof StreamTableSchema>;
type HistoryEntry = z.infer<typeof HistoryEntrySchema>;
type RefreshResult = z.infer<typeof RefreshResultSchema>;

const FRONTIER = /^\d+:\d+:[\d,]*$/;

/** The JSON body of a successful answer, after checking its status and content type. */
async function ok<T>(res: Response, status = 200): Promise<T> {
  const text = await res.text();
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${text}`);
  assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
  return JSON.parse(text) as T;
}

/** Checks a problem answer: status, content type, stable code, type and title, and a detail matching `detail`. */
async function problem(res: Response, status: number, code: string, detail?: RegExp): Promise<Problem> {
  const text = await res.text();
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status}: ${text}`);
  assert.equal(res.headers.get("content-type"), "application/problem+json");
  const p = JSON.parse(text) as Problem;
  assert.equal(p.status, status, text);
  assert.equal(p.code, code, text);
  assert.equal(p.type, `urn:trickle:problem:${code}`);
  assert.ok(typeof p.title === "string" && p.title.length > 0, text);
  assert.ok(typeof p.detail === "string" && p.detail.length > 0, text);
  if (detail !== undefined) assert.match(p.detail, detail);
  // Every problem names its request, as the x-request-id header does, so a report can be matched to the log.
  assert.ok(typeof p.request_id === "string" && p.request_id.length > 0, `no request_id: ${text}`);
  assert.equal(p.request_id, res.headers.get("x-request-id"), text);
  return p;
}

/**
 * Everything a stream-table request could leave behind: relations outside the system schemas (storage tables,
 * indexes, change buffers), user triggers, capture functions, catalog rows, and the contents of table `y`.
 */
async function dbState(sql: Sql): Promise<Record<string, string[]>> {
  const texts = async (q: Promise<{ x: string }[]>) => (await q).map((r) => r.x);
  return {
    relations: await texts(sql`
      SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text AS x FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg\\_%temp%'
      ORDER BY 1`),
    triggers: await texts(sql`
      SELECT tgrelid::regclass::text || ':' || tgname AS x FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1`),
    functions: await texts(sql`
      SELECT p.proname AS x FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname = 'pgtrickle_changes' ORDER BY 1`),
    stream_tables: await texts(sql`
      SELECT pgt_schema || '.' || pgt_name || ':' || status AS x FROM pgtrickle.pgt_stream_tables ORDER BY 1`),
    dependencies: await texts(sql`
      SELECT pgt_id || '->' || source_schema || '.' || source_name AS x FROM pgtrickle.pgt_dependencies ORDER BY 1`),
    change_buffers: await texts(sql`
      SELECT source_schema || '.' || source_name AS x FROM pgtrickle.pgt_change_buffers ORDER BY 1`),
    history: await texts(sql`SELECT count(*)::text AS x FROM pgtrickle.pgt_refresh_history`),
    y: await texts(sql`SELECT id || '=' || coalesce(v::text, 'null') AS x FROM y ORDER BY id`),
  };
}

/** The rows of `columns` in `table`, and of `query`, as sorted JSON lines: equal means equal as multisets. */
async function assertSameRows(sql: Sql, options: { table: string; query: string; columns: string[] }) {
  const lines = (rows: readonly Record<string, unknown>[]) =>
    rows.map((r) => JSON.stringify(options.columns.map((c) => r[c]))).sort();
  // Test-only SQL: the table, columns and query are constants of this file.
  const stored = await sql.unsafe(`SELECT ${options.columns.map(quoteIdent).join(", ")} FROM ${options.table}`);
  const expected = await sql.unsafe(options.query);
  assert.deepEqual(lines(stored), lines(expected), `${options.table} differs from its query`);
}

async function regclass(sql: Sql, name: string): Promise<string | null> {
  const [row] = await sql<{ r: string | null }[]>`SELECT to_regclass(${name})::text AS r`;
  return row!.r;
}

/** The capture triggers on a table, by name. */
async function captureTriggers(sql: Sql, table: string): Promise<string[]> {
  const rows = await sql<{ tgname: string }[]>`
    SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(${table}) AND NOT tgisinternal ORDER BY tgname`;
  return rows.map((r) => r.tgname);
}

/** The change buffer of a source table (by its oid), whether or not it exists. */
async function bufferOf(sql: Sql, table: string): Promise<string> {
  const [row] = await sql<{ oid: number }[]>`SELECT ${table}::regclass::oid::int8 AS oid`;
  return `pgtrickle_changes.changes_${row!.oid}`;
}

const CAPTURE = ["pgt_capture_del", "pgt_capture_ins", "pgt_capture_trunc", "pgt_capture_upd"];

/** A clock the test moves forward, so the scheduler finds stream tables due without waiting. */
const clock = { offsetMs: 0, now: () => new Date(Date.now() + clock.offsetMs) };

Deno.test({
  name: "stream tables API: every endpoint, bad input, two databases",
  ...dbTest,
  async fn(t) {
    const s: TestService = await startTestService({ extraDatabases: 1, clock });
    const sql = s.db.sql;
    const db2 = s.databases[0]!;
    const sql2 = connect(urlForDatabase(s.db.serverUrl, db2), { max: 2 });
    const req = s.request;
    const get = (path: string) => req("GET", path);
    try {
      await sql.unsafe(`
        CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount int NOT NULL);
        INSERT INTO orders SELECT i, i % 10, i % 100 FROM generate_series(1, 200) i;
        CREATE SCHEMA analytics;
        CREATE SCHEMA "Sales";
        CREATE TABLE "Sales"."Deals" (id int PRIMARY KEY, amount numeric(10, 2) NOT NULL);
        INSERT INTO "Sales"."Deals" VALUES (1, 10.50), (2, 20.25);
        CREATE TABLE y (id int PRIMARY KEY, v int);
        INSERT INTO y VALUES (1, 10), (2, 20), (3, 30);
        CREATE VIEW yv AS SELECT * FROM y;
        CREATE TABLE zero_src (id int PRIMARY KEY, v int NOT NULL);
        INSERT INTO zero_src VALUES (1, 1), (2, 0);
        CREATE TABLE ticks (id int PRIMARY KEY);
        CREATE TABLE flaky (id int PRIMARY KEY, v int NOT NULL);
        INSERT INTO flaky VALUES (1, 1), (2, 2);
        CREATE TABLE names (id int PRIMARY KEY);
        INSERT INTO names VALUES (1);
      `);
      const bigOrdersQuery = "SELECT id, customer, amount FROM orders WHERE amount > 50";
      const totalsQuery = "SELECT customer, sum(amount) AS total, count(*) AS n FROM orders GROUP BY customer";
      const t0 = new Date();

      await t.step("POST /stream-tables creates it, refreshes it, and answers 201 with the stream table", async () => {
        const res = await req("POST", "/stream-tables", { name: "big_orders", query: bigOrdersQuery });
        const st = await ok<StreamTable>(res, 201);
        assert.equal(st.name, "public.big_orders");
        assert.equal(st.schema, "public");
        assert.equal(st.table, "big_orders");
        assert.equal(st.database, s.db.name);
        assert.equal(st.query, bigOrdersQuery);
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
          query: bigOrdersQuery,
          columns: ["id", "customer", "amount"],
        });
        // Change capture is installed on the source.
        assert.deepEqual(await captureTriggers(sql, "orders"), CAPTURE);
        assert.notEqual(await regclass(sql, await bufferOf(sql, "orders")), null);
        // The Location header leads to it.
        const again = await ok<StreamTable>(await get(res.headers.get("location")!));
        assert.equal(again.name, "public.big_orders");
      });

      await t.step("POST in a non-public schema, FULL mode, cron schedule and a deadline", async () => {
        const st = await ok<StreamTable>(
          await req("POST", "/stream-tables", {
            name: "analytics.customer_totals",
            query: totalsQuery,
            refresh_mode: "FULL",
            schedule: "*/5 * * * *",
            freshness_deadline_ms: 60_000,
          }),
          201,
        );
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
          query: totalsQuery,
          columns: ["customer", "total", "n"],
        });
      });

      await t.step("names are case-sensitive: schema and table with capitals", async () => {
        const query = 'SELECT count(*) AS deals, sum(amount) AS total FROM "Sales"."Deals"';
        const st = await ok<StreamTable>(await req("POST", "/stream-tables", { name: "Sales.DealTotals", query }), 201);
        assert.equal(st.name, "Sales.DealTotals");
        assert.deepEqual(st.sources, ["Sales.Deals"]);
        assert.equal(await regclass(sql, '"Sales"."DealTotals"'), '"Sales"."DealTotals"');
        await assertSameRows(sql, { table: '"Sales"."DealTotals"', query, columns: ["deals", "total"] });
        assert.equal((await ok<StreamTable>(await get("/stream-tables/Sales.DealTotals"))).name, "Sales.DealTotals");
        await problem(await get("/stream-tables/sales.dealtotals"), 404, "StreamTableNotFound");
      });

      await t.step("AUTO falls back to FULL for a query with LIMIT, and says why", async () => {
        const query = "SELECT id, amount FROM orders ORDER BY amount DESC, id LIMIT 5";
        const st = await ok<StreamTable>(
          await req("POST", "/stream-tables", { name: "top_orders", query, schedule: "1h" }),
          201,
        );
        assert.equal(st.refresh_mode, "AUTO");
        assert.equal(st.effective_refresh_mode, "FULL");
        assert.match(st.fallback_reason ?? "", /LIMIT/);
        assert.equal(st.row_count, 5);
        await assertSameRows(sql, { table: "top_orders", query, columns: ["id", "amount"] });
      });

      await t.step("GET /stream-tables lists them; GET one by table or schema.table", async () => {
        const list = await ok<StreamTable[]>(await get("/stream-tables"));
        assert.deepEqual(
          list.map((st) => st.name).sort(),
          ["Sales.DealTotals", "analytics.customer_totals", "public.big_orders", "public.top_orders"].sort(),
        );
        const one = await ok<StreamTable>(await get("/stream-tables/big_orders"));
        assert.deepEqual(await ok<StreamTable>(await get("/stream-tables/public.big_orders")), one);
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
      });

      await t.step("POST /{name}/refresh: after the source changes, the stream table follows", async () => {
        await sql`INSERT INTO orders VALUES (201, 1, 90), (202, 2, 10)`; // 201 enters, 202 stays out
        await sql`UPDATE orders SET amount = 99 WHERE id = 1`; // 1 enters (amount was 1)
        await sql`DELETE FROM orders WHERE id = 60`; // 60 leaves
        const r = await ok<RefreshResult>(await req("POST", "/stream-tables/big_orders/refresh"));
        assert.equal(r.action, "DIFFERENTIAL", JSON.stringify(r));
        assert.equal(r.delta_rows, 5, "2 inserts, an update (a delete and an insert), a delete");
        assert.equal(r.rows_inserted, 2);
        assert.equal(r.rows_deleted, 1);
        assert.match(r.frontier, FRONTIER);
        assert.ok(r.duration_ms >= 0);
        await assertSameRows(sql, {
          table: "big_orders",
          query: bigOrdersQuery,
          columns: ["id", "customer", "amount"],
        });
        const st = await ok<StreamTable>(await get("/stream-tables/big_orders"));
        assert.equal(st.frontier, r.frontier);
        assert.equal(st.row_count, 99);
        assert.notEqual(st.last_diff_ms, null);

        const full = await ok<RefreshResult>(await req("POST", "/stream-tables/analytics.customer_totals/refresh"));
        assert.equal(full.action, "FULL");
        assert.match(full.reason ?? "", /refresh mode FULL/);
        assert.equal(full.rows_inserted, 10);
        await assertSameRows(sql, {
          table: "analytics.customer_totals",
          query: totalsQuery,
          columns: ["customer", "total", "n"],
        });

        await sql`INSERT INTO "Sales"."Deals" VALUES (3, 0.25)`;
        await ok<RefreshResult>(await req("POST", "/stream-tables/Sales.DealTotals/refresh"));
        const [deal] = await sql<{ deals: number; total: string }[]>`
          SELECT deals::int AS deals, total::text AS total FROM "Sales"."DealTotals"`;
        assert.deepEqual({ ...deal }, { deals: 3, total: "31.00" });
      });

      await t.step("POST /{name}/refresh with nothing changed is NO_DATA", async () => {
        const before = await ok<StreamTable>(await get("/stream-tables/big_orders"));
        const r = await ok<RefreshResult>(await req("POST", "/stream-tables/big_orders/refresh"));
        assert.deepEqual(
          { action: r.action, inserted: r.rows_inserted, deleted: r.rows_deleted, delta: r.delta_rows },
          { action: "NO_DATA", inserted: 0, deleted: 0, delta: 0 },
        );
        const after = await ok<StreamTable>(await get("/stream-tables/big_orders"));
        assert.equal(after.row_count, before.row_count);
        assert.equal(after.frontier, r.frontier);
      });

      await t.step("GET /{name}/history: newest first, limit, and paging with before", async () => {
        for (let i = 0; i < 3; i++) await ok(await req("POST", "/stream-tables/big_orders/refresh"));
        const all = await ok<HistoryEntry[]>(await get("/stream-tables/big_orders/history"));
        assert.deepEqual(all.map((h) => h.action), [
          "NO_DATA",
          "NO_DATA",
          "NO_DATA",
          "NO_DATA",
          "DIFFERENTIAL",
          "FULL",
        ]);
        assert.deepEqual(all.map((h) => h.initiated_by), ["MANUAL", "MANUAL", "MANUAL", "MANUAL", "MANUAL", "CREATE"]);
        assert.ok(all.every((h) => h.status === "SUCCESS" && h.error === null));
        const ids = all.map((h) => h.refresh_id);
        assert.deepEqual(ids, [...ids].sort((a, b) => b - a), "newest first");
        const created = all.at(-1)!;
        assert.equal(created.reason, "initial refresh");
        assert.equal(created.rows_inserted, 98);
        const diff = all[4]!;
        assert.deepEqual([diff.rows_inserted, diff.rows_deleted, diff.delta_rows], [2, 1, 5]);
        assert.ok(new Date(diff.finished_at) >= new Date(diff.started_at));
        assert.ok(diff.duration_ms >= 0);

        const top2 = await ok<HistoryEntry[]>(await get("/stream-tables/big_orders/history?limit=2"));
        assert.deepEqual(top2.map((h) => h.refresh_id), ids.slice(0, 2));
        const pages: number[] = [];
        let before: number | null = null;
        for (let guard = 0; guard < 10; guard++) {
          const page: HistoryEntry[] = await ok<HistoryEntry[]>(
            await get(`/stream-tables/big_orders/history?limit=2${before === null ? "" : `&before=${before}`}`),
          );
          if (page.length === 0) break;
          assert.ok(page.length <= 2);
          pages.push(...page.map((h) => h.refresh_id));
          before = page.at(-1)!.refresh_id;
        }
        assert.deepEqual(pages, ids, "the pages together are the whole history, without overlap");
        // The history of another stream table is its own.
        const other = await ok<HistoryEntry[]>(await get("/stream-tables/analytics.customer_totals/history"));
        assert.deepEqual(other.map((h) => h.action), ["FULL", "FULL"]);
        assert.ok(other.every((h) => !ids.includes(h.refresh_id)));
        for (const bad of ["limit=0", "limit=1001", "limit=abc", "before=-1", "before=x"]) {
          const p = await problem(await get(`/stream-tables/big_orders/history?${bad}`), 400, "BadRequest");
          assert.match(p.detail, new RegExp(bad.split("=")[0]!));
        }
      });

      await t.step("PATCH changes schedule, deadline and refresh mode; omitted fields stay", async () => {
        const before = await ok<StreamTable>(await get("/stream-tables/big_orders"));
        const a = await ok<StreamTable>(await req("PATCH", "/stream-tables/big_orders", { schedule: "5m" }));
        assert.equal(a.schedule, "5m");
        assert.equal(a.refresh_mode, "AUTO");
        assert.equal(a.freshness_deadline_ms, null);
        assert.equal(a.frontier, before.frontier);
        assert.ok(new Date(a.updated_at) >= new Date(before.updated_at));
        const b = await ok<StreamTable>(
          await req("PATCH", "/stream-tables/big_orders", { schedule: " */10 * * * * " }),
        );
        assert.equal(b.schedule, "*/10 * * * *");
        const c = await ok<StreamTable>(
          await req("PATCH", "/stream-tables/big_orders", { freshness_deadline_ms: 5000 }),
        );
        assert.equal(c.freshness_deadline_ms, 5000);
        assert.equal(c.schedule, "*/10 * * * *");
        const d = await ok<StreamTable>(
          await req("PATCH", "/stream-tables/big_orders", { freshness_deadline_ms: null }),
        );
        assert.equal(d.freshness_deadline_ms, null);

        const full = await ok<StreamTable>(await req("PATCH", "/stream-tables/big_orders", { refresh_mode: "FULL" }));
        assert.equal(full.refresh_mode, "FULL");
        assert.equal(full.effective_refresh_mode, "FULL");
        await sql`INSERT INTO orders VALUES (203, 3, 77)`;
        const r = await ok<RefreshResult>(await req("POST", "/stream-tables/big_orders/refresh"));
        assert.equal(r.action, "FULL");
        assert.match(r.reason ?? "", /refresh mode FULL/);
        await assertSameRows(sql, {
          table: "big_orders",
          query: bigOrdersQuery,
          columns: ["id", "customer", "amount"],
        });

        const auto = await ok<StreamTable>(await req("PATCH", "/stream-tables/big_orders", { refresh_mode: "AUTO" }));
        assert.equal(auto.refresh_mode, "AUTO");
        assert.equal(auto.effective_refresh_mode, "DIFFERENTIAL");
        assert.equal(auto.fallback_reason, null);
        // The stored catalog row says the same.
        const [row] = await sql`SELECT schedule, refresh_mode, effective_refresh_mode, freshness_deadline_ms
          FROM pgtrickle.pgt_stream_tables WHERE pgt_schema = 'public' AND pgt_name = 'big_orders'`;
        assert.deepEqual({ ...row }, {
          schedule: "*/10 * * * *",
          refresh_mode: "AUTO",
          effective_refresh_mode: "DIFFERENTIAL",
          freshness_deadline_ms: null,
        });
      });

      await t.step("PATCH refuses bad changes with a problem and changes nothing", async () => {
        const top = await ok<StreamTable>(await get("/stream-tables/top_orders"));
        const unsupported = await problem(
          await req("PATCH", "/stream-tables/top_orders", { refresh_mode: "DIFFERENTIAL" }),
          422,
          "UnsupportedQuery",
          /LIMIT/,
        );
        assert.match(String(unsupported.reason), /LIMIT/);
        await problem(
          await req("PATCH", "/stream-tables/top_orders", { refresh_mode: "IMMEDIATE" }),
          422,
          "UnsupportedRefreshMode",
          /IMMEDIATE/,
        );
        await problem(
          await req("PATCH", "/stream-tables/top_orders", { schedule: "5x" }),
          400,
          "InvalidSchedule",
          /"5x"/,
        );
        await problem(
          await req("PATCH", "/stream-tables/top_orders", { status: "ERROR" }),
          400,
          "BadRequest",
          /status/,
        );
        await problem(await req("PATCH", "/stream-tables/top_orders", { shedule: "5m" }), 400, "BadRequest", /shedule/);
        await problem(
          await req("PATCH", "/stream-tables/top_orders", { freshness_deadline_ms: 0 }),
          400,
          "BadRequest",
          /freshness_deadline_ms/,
        );
        await problem(await req("PATCH", "/stream-tables/top_orders", "{"), 400, "BadRequest", /JSON/);
        assert.deepEqual(await ok<StreamTable>(await get("/stream-tables/top_orders")), top);
      });

      await t.step("PATCH status SUSPENDED stops scheduled refreshes; ACTIVE resumes them", async () => {
        await ok(
          await req("POST", "/stream-tables", { name: "tick_copy", query: "SELECT id FROM ticks", schedule: "1s" }),
          201,
        );
        const history = async () => (await ok<HistoryEntry[]>(await get("/stream-tables/tick_copy/history"))).length;
        const copied = async () => (await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM tick_copy`)[0]!.n;
        assert.equal(await history(), 1);

        const suspended = await ok<StreamTable>(
          await req("PATCH", "/stream-tables/tick_copy", { status: "SUSPENDED" }),
        );
        assert.equal(suspended.status, "SUSPENDED");
        await sql`INSERT INTO ticks VALUES (1), (2)`;
        clock.offsetMs += 5_000; // due by its schedule
        await s.engine.scheduler.tick();
        await s.engine.scheduler.idle();
        assert.equal(await history(), 1, "a suspended stream table is not refreshed by the scheduler");
        assert.equal(await copied(), 0);
        assert.equal((await ok<StreamTable>(await get("/stream-tables/tick_copy"))).status, "SUSPENDED");

        const resumed = await ok<StreamTable>(await req("PATCH", "/stream-tables/tick_copy", { status: "ACTIVE" }));
        assert.equal(resumed.status, "ACTIVE");
        clock.offsetMs += 5_000;
        await s.engine.scheduler.tick();
        await s.engine.scheduler.idle();
        const entries = await ok<HistoryEntry[]>(await get("/stream-tables/tick_copy/history"));
        assert.equal(entries[0]?.initiated_by, "SCHEDULER", JSON.stringify(entries));
        assert.equal(await copied(), 2);
      });

      await t.step("a refresh failing on the data answers 422 with the server's message", async () => {
        await ok(
          await req("POST", "/stream-tables", {
            name: "flaky_ratio",
            query: "SELECT id, 100 / v AS x FROM flaky",
            schedule: "1h",
          }),
          201,
        );
        await sql`UPDATE flaky SET v = 0 WHERE id = 2`;
        await problem(
          await req("POST", "/stream-tables/flaky_ratio/refresh"),
          422,
          "RefreshFailed",
          /division by zero/,
        );
      });

      await t.step("failed refreshes are recorded; after max_consecutive_errors: ERROR; ACTIVE resumes", async () => {
        const failed = await ok<StreamTable>(await get("/stream-tables/flaky_ratio"));
        assert.equal(failed.consecutive_errors, 1);
        assert.match(failed.last_error ?? "", /division by zero/);
        assert.equal(failed.status, "ACTIVE");
        for (let i = 0; i < 2; i++) {
          const res = await req("POST", "/stream-tables/flaky_ratio/refresh");
          assert.ok(res.status >= 400, `a failing refresh answered ${res.status}`);
          assert.equal(res.headers.get("content-type"), "application/problem+json");
          const text = await res.text();
          assert.ok(!/SELECT|flaky/i.test(text), `SQL text leaked: ${text}`);
        }
        const errored = await ok<StreamTable>(await get("/stream-tables/flaky_ratio"));
        assert.equal(errored.status, "ERROR");
        assert.equal(errored.consecutive_errors, 3);
        const history = await ok<HistoryEntry[]>(await get("/stream-tables/flaky_ratio/history"));
        assert.deepEqual(history.map((h) => h.status), ["FAILED", "FAILED", "FAILED", "SUCCESS"]);
        assert.ok(history.slice(0, 3).every((h) => /division by zero/.test(h.error ?? "")));
        // The last good content is kept.
        const rows = await sql<{ id: number; x: number }[]>`SELECT id, x FROM flaky_ratio ORDER BY id`;
        assert.deepEqual(rows.map((r) => [r.id, r.x]), [[1, 100], [2, 50]]);

        await sql`UPDATE flaky SET v = 4 WHERE id = 2`;
        const resumed = await ok<StreamTable>(await req("PATCH", "/stream-tables/flaky_ratio", { status: "ACTIVE" }));
        assert.equal(resumed.status, "ACTIVE");
        assert.equal(resumed.consecutive_errors, 0);
        assert.equal(resumed.last_error, null);
        await ok<RefreshResult>(await req("POST", "/stream-tables/flaky_ratio/refresh"));
        const fixed = await sql<{ id: number; x: number }[]>`SELECT id, x FROM flaky_ratio ORDER BY id`;
        assert.deepEqual(fixed.map((r) => [r.id, r.x]), [[1, 100], [2, 25]]);
      });

      await t.step(
        "DELETE: storage and catalog go; capture stays while another stream table reads the source",
        async () => {
          const ordersBuffer = await bufferOf(sql, "orders");
          // A stream table over a stream table blocks dropping the one it reads.
          await ok(
            await req("POST", "/stream-tables", { name: "big_count", query: "SELECT count(*) AS n FROM big_orders" }),
            201,
          );
          assert.deepEqual(await captureTriggers(sql, "big_orders"), CAPTURE);
          await problem(
            await req("DELETE", "/stream-tables/big_orders"),
            409,
            "StreamTableHasDependents",
            /"public\.big_count"/,
          );
          assert.notEqual(await regclass(sql, "big_orders"), null);

          const del = await req("DELETE", "/stream-tables/big_count");
          assert.equal(del.status, 204);
          assert.equal(await del.text(), "");
          assert.equal(await regclass(sql, "big_count"), null);
          assert.deepEqual(
            await captureTriggers(sql, "big_orders"),
            [],
            "capture on a stream table nobody reads is removed",
          );

          // orders is read by big_orders, top_orders and analytics.customer_totals: capture stays until the last goes.
          for (const name of ["analytics.customer_totals", "top_orders"]) {
            assert.equal((await req("DELETE", `/stream-tables/${name}`)).status, 204);
            assert.equal(await regclass(sql, name), null, `${name} storage is dropped`);
            assert.deepEqual(await captureTriggers(sql, "orders"), CAPTURE, `capture kept after dropping ${name}`);
            assert.notEqual(await regclass(sql, ordersBuffer), null, `buffer kept after dropping ${name}`);
          }
          const [before] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history`;
          assert.equal((await req("DELETE", "/stream-tables/public.big_orders")).status, 204);
          assert.equal(await regclass(sql, "big_orders"), null);
          assert.deepEqual(await captureTriggers(sql, "orders"), [], "no capture left on a source nothing reads");
          assert.equal(await regclass(sql, ordersBuffer), null, "the change buffer is dropped");
          const leftovers = await sql`
          SELECT 'catalog' AS what FROM pgtrickle.pgt_stream_tables
            WHERE pgt_name IN ('big_orders', 'big_count', 'top_orders', 'customer_totals')
          UNION ALL SELECT 'buffer' FROM pgtrickle.pgt_change_buffers WHERE source_name IN ('orders', 'big_orders')
          UNION ALL SELECT 'function' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'pgtrickle_changes' AND p.proname = ${"capture_" + ordersBuffer.split("_").at(-1)}`;
          assert.deepEqual(leftovers.map((r) => r.what), []);
          const [after] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history`;
          assert.ok(after!.n < before!.n, "the history of a dropped stream table goes with it");
          // The source itself is untouched.
          const [orders] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM orders`;
          assert.equal(orders!.n, 202);
          await problem(await req("DELETE", "/stream-tables/big_orders"), 404, "StreamTableNotFound", /"big_orders"/);
          await problem(await get("/stream-tables/big_orders"), 404, "StreamTableNotFound");
        },
      );

      await t.step("two managed databases: a stream table lives in the database it was created in", async () => {
        await sql2`CREATE TABLE y (id int PRIMARY KEY, v int)`;
        await sql2`INSERT INTO y VALUES (7, 700)`;
        const res = await req("POST", "/stream-tables", {
          name: "only_two",
          query: "SELECT id, v FROM y",
          database: db2,
        });
        const st = await ok<StreamTable>(res, 201);
        assert.equal(st.database, db2);
        assert.equal(res.headers.get("location"), `/stream-tables/public.only_two?database=${db2}`);
        await assertSameRows(sql2, { table: "only_two", query: "SELECT id, v FROM y", columns: ["id", "v"] });
        assert.equal(await regclass(sql, "only_two"), null, "nothing in the default database");

        assert.ok(!(await ok<StreamTable[]>(await get("/stream-tables"))).some((x) => x.table === "only_two"));
        const list2 = await ok<StreamTable[]>(await get(`/stream-tables?database=${db2}`));
        assert.deepEqual(list2.map((x) => x.name), ["public.only_two"]);
        await problem(await get("/stream-tables/only_two"), 404, "StreamTableNotFound", new RegExp(s.db.name));
        assert.equal((await ok<StreamTable>(await get(`/stream-tables/only_two?database=${db2}`))).database, db2);

        // The same name in both databases: two independent stream tables.
        const one = await ok<StreamTable>(
          await req("POST", "/stream-tables", { name: "same_name", query: "SELECT id, v FROM y" }),
          201,
        );
        const two = await ok<StreamTable>(
          await req("POST", `/stream-tables?database=${db2}`, { name: "same_name", query: "SELECT id, v FROM y" }),
          201,
        );
        assert.deepEqual([one.database, one.row_count, two.database, two.row_count], [s.db.name, 3, db2, 1]);

        await sql2`INSERT INTO y VALUES (8, 800)`;
        const r = await ok<RefreshResult>(await req("POST", `/stream-tables/same_name/refresh?database=${db2}`));
        assert.equal(r.rows_inserted >= 1, true);
        await assertSameRows(sql2, { table: "same_name", query: "SELECT id, v FROM y", columns: ["id", "v"] });
        assert.equal(
          (await ok<HistoryEntry[]>(await get(`/stream-tables/same_name/history?database=${db2}`))).length,
          2,
        );
        assert.equal((await ok<HistoryEntry[]>(await get("/stream-tables/same_name/history"))).length, 1);
        const patched = await ok<StreamTable>(
          await req("PATCH", "/stream-tables/same_name", { schedule: "2m", database: db2 }),
        );
        assert.equal(patched.schedule, "2m");
        assert.equal(
          (await ok<StreamTable>(await get("/stream-tables/same_name"))).schedule,
          "1m",
          "the other is unchanged",
        );
        assert.equal((await req("DELETE", `/stream-tables/same_name?database=${db2}`)).status, 204);
        assert.equal(await regclass(sql2, "same_name"), null);
        assert.notEqual(await regclass(sql, "same_name"), null, "the default database's one is kept");
        assert.equal((await ok<StreamTable>(await get("/stream-tables/same_name"))).database, s.db.name);
      });

      await t.step("an unknown database is 404 DatabaseNotFound on every route, and nothing is created", async () => {
        const before = await dbState(sql);
        const cases: [string, string, unknown?][] = [
          ["GET", "/stream-tables?database=nope"],
          ["POST", "/stream-tables?database=nope", { name: "nowhere", query: "SELECT id FROM y" }],
          ["POST", "/stream-tables", { name: "nowhere", query: "SELECT id FROM y", database: "nope" }],
          ["GET", "/stream-tables/same_name?database=nope"],
          ["PATCH", "/stream-tables/same_name?database=nope", { schedule: "5m" }],
          ["PATCH", "/stream-tables/same_name", { schedule: "5m", database: "nope" }],
          ["DELETE", "/stream-tables/same_name?database=nope"],
          ["POST", "/stream-tables/same_name/refresh?database=nope"],
          ["GET", "/stream-tables/same_name/history?database=nope"],
          ["GET", `/stream-tables?database=${encodeURIComponent("x'; drop table y; --")}`],
        ];
        for (const [method, path, body] of cases) {
          await problem(await req(method, path, body), 404, "DatabaseNotFound", /is not managed by this service/);
        }
        assert.deepEqual(await dbState(sql), before);
        assert.equal((await ok<StreamTable>(await get("/stream-tables/same_name"))).schedule, "1m");
      });

      await t.step(
        "an unknown stream table is 404 StreamTableNotFound on GET, PATCH, DELETE, refresh, history",
        async () => {
          const before = await dbState(sql);
          for (
            const [method, path, body] of [
              ["GET", "/stream-tables/nope"],
              ["PATCH", "/stream-tables/nope", { schedule: "5m" }],
              ["DELETE", "/stream-tables/nope"],
              ["POST", "/stream-tables/nope/refresh"],
              ["GET", "/stream-tables/nope/history"],
              ["GET", "/stream-tables/analytics.nope"],
              ["GET", "/stream-tables/y"],
            ] as [string, string, unknown?][]
          ) {
            const p = await problem(await req(method, path, body), 404, "StreamTableNotFound");
            assert.match(p.detail, /Stream table "(analytics\.)?(nope|y)" does not exist in database/);
          }
          assert.deepEqual(await dbState(sql), before, "a plain table is not a stream table and DELETE left it alone");
        },
      );

      await t.step("bad requests get a 4xx problem and leave the database unchanged", async () => {
        const before = await dbState(sql);
        const q = "SELECT id FROM y";
        const zero = "SELECT id, 1 / v AS x FROM zero_src";
        const raw = (init: RequestInit) => () => Promise.resolve(s.app.request("/stream-tables", init));
        // [what, POST /stream-tables body (a string is sent as is) or a request, status, code, detail]
        const cases: [string, unknown, number, string, RegExp][] = [
          ["malformed JSON", '{"name": "a", "query": ', 400, "BadRequest", /Malformed JSON/],
          ["a JSON array", `[{"name": "a", "query": "${q}"}]`, 400, "BadRequest", /expected object, received array/],
          ["a JSON string", `"${q}"`, 400, "BadRequest", /expected object, received string/],
          ["JSON null", "null", 400, "BadRequest", /expected object/],
          ["no body", raw({ method: "POST" }), 400, "BadRequest", /name.*query/],
          [
            "not JSON content",
            raw({
              method: "POST",
              headers: { "content-type": "text/plain" },
              body: JSON.stringify({ name: "a", query: q }),
            }),
            415,
            "UnsupportedMediaType",
            /must be JSON/,
          ],
          ["an unknown field", { name: "a", query: q, shedule: "5m" }, 400, "BadRequest", /"shedule"/],
          ["a missing query", { name: "a" }, 400, "BadRequest", /query/],
          ["a numeric name", { name: 5, query: q }, 400, "BadRequest", /name: .*expected string/],
          ["an array query", { name: "a", query: [q] }, 400, "BadRequest", /query: .*expected string/],
          ["a numeric schedule", { name: "a", query: q, schedule: 30 }, 400, "BadRequest", /schedule/],
          ["an unknown mode", { name: "a", query: q, refresh_mode: "SOMETIMES" }, 400, "BadRequest", /refresh_mode/],
          ["a string deadline", { name: "a", query: q, freshness_deadline_ms: "10" }, 400, "BadRequest", /deadline/],
          ["a negative deadline", { name: "a", query: q, freshness_deadline_ms: -5 }, 400, "BadRequest", /deadline/],
          ["a fractional deadline", { name: "a", query: q, freshness_deadline_ms: 1.5 }, 400, "BadRequest", /deadline/],
          [
            "an injection in the name",
            { name: 'x"; drop table y; --', query: q },
            400,
            "InvalidName",
            /Invalid stream table name "x\\"; drop table y; --"/,
          ],
          ["an injection after a name", { name: "ok; drop table y", query: q }, 400, "InvalidName", /an identifier/],
          ["a three-part name", { name: "a.b.c", query: q }, 400, "InvalidName", /"a\.b\.c"/],
          ["a leading digit", { name: "1abc", query: q }, 400, "InvalidName", /"1abc"/],
          ["an empty name", { name: "", query: q }, 400, "InvalidName", /Invalid stream table name ""/],
          ["a 64-byte name", { name: "n".repeat(64), query: q }, 400, "InvalidName", /at most 63 bytes/],
          ["a quoted name", { name: '"y"', query: q }, 400, "InvalidName", /expected an identifier/],
          ["a missing schema", { name: "nosuch.t", query: q }, 404, "SchemaNotFound", /"nosuch"/],
          ["a syntax error", { name: "a", query: "SELECT id FORM y" }, 422, "InvalidQuery", /at or near "y"/],
          [
            "two statements",
            { name: "a", query: "select 1 as a; drop table y" },
            422,
            "InvalidQuery",
            /exactly one SELECT statement; found 2/,
          ],
          ["a hidden second statement", { name: "a", query: `${q} /* ; */ ; DROP TABLE y` }, 422, "InvalidQuery", /2/],
          ["a DELETE", { name: "a", query: "delete from y" }, 422, "InvalidQuery", /must be a SELECT/],
          ["a DROP", { name: "a", query: "DROP TABLE y" }, 422, "InvalidQuery", /must be a SELECT/],
          ["SELECT INTO", { name: "a", query: "SELECT id INTO z FROM y" }, 422, "InvalidQuery", /SELECT \.\.\. INTO/],
          [
            "a data-modifying WITH",
            { name: "a", query: "WITH d AS (DELETE FROM y RETURNING id) SELECT id FROM d" },
            422,
            "InvalidQuery",
            /data-modifying/,
          ],
          [
            "a missing table",
            { name: "a", query: "SELECT id FROM nope" },
            422,
            "InvalidQuery",
            /"nope" does not exist/,
          ],
          [
            "a missing column",
            { name: "a", query: "SELECT nope FROM y" },
            422,
            "InvalidQuery",
            /"nope" does not exist/,
          ],
          ["an unnamed column", { name: "a", query: "SELECT id, v + 1 FROM y" }, 422, "InvalidQuery", /needs a name/],
          ["a reserved column", { name: "a", query: "SELECT id AS __pgt_x FROM y" }, 422, "InvalidQuery", /reserved/],
          ["no table read", { name: "a", query: "SELECT 1 AS one" }, 422, "InvalidQuery", /reads no table/],
          [
            "a view read",
            { name: "a", query: "SELECT id FROM yv" },
            422,
            "InvalidQuery",
            /"public\.yv", which is a view/,
          ],
          [
            "the catalog read",
            { name: "a", query: "SELECT pgt_id FROM pgtrickle.pgt_stream_tables" },
            422,
            "InvalidQuery",
            /cannot be sources/,
          ],
          ["an existing stream table", { name: "tick_copy", query: q }, 409, "StreamTableAlreadyExists", /"tick_copy"/],
          ["an existing plain table", { name: "y", query: q }, 409, "StreamTableAlreadyExists", /"y" already exists/],
          ["an existing view", { name: "yv", query: q }, 409, "StreamTableAlreadyExists", /"yv" already exists/],
          ["schedule 5x", { name: "a", query: q, schedule: "5x" }, 400, "InvalidSchedule", /"5x"/],
          ["schedule 0s", { name: "a", query: q, schedule: "0s" }, 400, "InvalidSchedule", /"0s": an interval must be/],
          ["a 3-field cron", { name: "a", query: q, schedule: "* * *" }, 400, "InvalidSchedule", /5 or 6 fields/],
          [
            "a 7-field cron",
            { name: "a", query: q, schedule: "0 0 0 * * * *" },
            400,
            "InvalidSchedule",
            /5 or 6 fields/,
          ],
          [
            "a bad cron field",
            { name: "a", query: q, schedule: "61 * * * *" },
            400,
            "InvalidSchedule",
            /not a valid cron/,
          ],
          [
            "DIFFERENTIAL with LIMIT",
            { name: "a", query: `${q} ORDER BY id LIMIT 2`, refresh_mode: "DIFFERENTIAL" },
            422,
            "UnsupportedQuery",
            /LIMIT/,
          ],
          [
            "DIFFERENTIAL with a window function",
            {
              name: "a",
              query: "SELECT id, row_number() OVER (ORDER BY id) AS rn FROM y",
              refresh_mode: "DIFFERENTIAL",
            },
            422,
            "UnsupportedQuery",
            /window function/,
          ],
          ["IMMEDIATE", { name: "a", query: q, refresh_mode: "IMMEDIATE" }, 422, "UnsupportedRefreshMode", /IMMEDIATE/],
          [
            "a failing initial refresh",
            { name: "a", query: zero },
            422,
            "InvalidQuery",
            /initial refresh failed: division/,
          ],
          [
            "the same in FULL",
            { name: "a", query: zero, refresh_mode: "FULL" },
            422,
            "InvalidQuery",
            /division by zero/,
          ],
          [
            "an injected path name",
            () => req("GET", `/stream-tables/${encodeURIComponent('x"; drop table y; --')}`),
            400,
            "InvalidName",
            /drop table y/,
          ],
          [
            "an injected path name on DELETE",
            () => req("DELETE", `/stream-tables/${encodeURIComponent("y; drop table y")}`),
            400,
            "InvalidName",
            /expected an identifier/,
          ],
          ["a three-part path", () => req("POST", "/stream-tables/a.b.c/refresh"), 400, "InvalidName", /"a\.b\.c"/],
          ...[
            "pgtrickle",
            "pgtrickle_changes",
            "pg_catalog",
            "information_schema",
            "pg_toast",
            "pg_temp",
            "pg_temp_3",
            "pg_toast_temp_3",
          ].map((schema): [string, unknown, number, string, RegExp] => [
            `a stream table in the reserved schema ${schema}`,
            { name: `${schema}.a`, query: q },
            400,
            "InvalidName",
            new RegExp(`schema "${schema}" is reserved`),
          ]),
          [
            "a name like a change buffer",
            async () => req("POST", "/stream-tables", { name: await bufferOf(sql, "y"), query: q }),
            400,
            "InvalidName",
            /schema "pgtrickle_changes" is reserved/,
          ],
          ...([
            ["GET", "/stream-tables/pg_catalog.pg_class"],
            ["GET", "/stream-tables/pgtrickle.pgt_stream_tables/history"],
            ["PATCH", "/stream-tables/pgtrickle.pgt_stream_tables", { schedule: "5m" }],
            ["DELETE", "/stream-tables/pgtrickle.pgt_stream_tables"],
            ["DELETE", "/stream-tables/information_schema.tables"],
            ["POST", "/stream-tables/pgtrickle_changes.x/refresh"],
          ] as [string, string, unknown?][]).map(([method, path, body]): [string, unknown, number, string, RegExp] => [
            `${method} ${path}`,
            () => req(method, path, body),
            400,
            "InvalidName",
            /schema "(pg_catalog|pgtrickle|pgtrickle_changes|information_schema)" is reserved/,
          ]),
          [
            "a body database other than ?database=",
            () => req("POST", `/stream-tables?database=${db2}`, { name: "a", query: q, database: s.db.name }),
            400,
            "BadRequest",
            new RegExp(`"${s.db.name}".*"${db2}"`),
          ],
          [
            "the same on PATCH",
            () => req("PATCH", `/stream-tables/tick_copy?database=${s.db.name}`, { schedule: "5m", database: db2 }),
            400,
            "BadRequest",
            new RegExp(`"${db2}".*"${s.db.name}"`),
          ],
        ];
        for (const [what, body, status, code, detail] of cases) {
          const res = typeof body === "function"
            ? await (body as () => Promise<Response>)()
            : await req("POST", "/stream-tables", body);
          const p = await problem(res, status, code, detail);
          assert.ok(!/internal error/i.test(p.detail), `${what}: ${p.detail}`);
          assert.deepEqual(await dbState(sql), before, `${what} changed the database`);
        }
        // The query errors say where, as PostgreSQL does (1-based, in the query as sent).
        const post = (body: unknown) => req("POST", "/stream-tables", body);
        const syntax = await problem(await post({ name: "a", query: "SELECT id FORM y" }), 422, "InvalidQuery");
        assert.equal(syntax.position, 16);
        const missing = await problem(await post({ name: "a", query: "SELECT id FROM nope" }), 422, "InvalidQuery");
        assert.equal(missing.position, 16);
        assert.equal(missing.sqlstate, "42P01");
        const first = await problem(await post({ name: "a", query: "selec id from y" }), 422, "InvalidQuery");
        assert.equal(first.position, 1);
        // No capture was left on the source of the failed initial refresh, and y is intact.
        assert.deepEqual(await captureTriggers(sql, "zero_src"), []);
        assert.deepEqual(before.y, ["1=10", "2=20", "3=30"]);
        assert.deepEqual(await dbState(sql), before);
      });

      await t.step("the longest valid name (63 bytes) can be created", async () => {
        const name = "n".repeat(63);
        const res = await req("POST", "/stream-tables", { name, query: "SELECT id FROM names" });
        await ok<StreamTable>(res, 201);
        assert.notEqual(await regclass(sql, name), null);
      });

      await t.step("a name ending in __pgt_key beside its stem can be created", async () => {
        await ok<StreamTable>(
          await req("POST", "/stream-tables", { name: "pair", query: "SELECT id FROM names" }),
          201,
        );
        await ok<StreamTable>(
          await req("POST", "/stream-tables", { name: "pair__pgt_key", query: "SELECT id FROM names" }),
          201,
        );
      });

      await t.step("GET /health, /ready, /openapi.json, /docs; an unknown route is a 404 problem", async () => {
        assert.deepEqual(await ok(await get("/health")), { status: "ok", version: VERSION });
        const ready = await ok<{ ready: boolean; databases: { name: string; ok: boolean }[] }>(await get("/ready"));
        assert.equal(ready.ready, true);
        assert.deepEqual(ready.databases.map((d) => [d.name, d.ok]), [[s.db.name, true], [db2, true]]);

        const doc = await ok<
          { openapi: string; info: { title: string; version: string }; paths: Record<string, object> }
        >(
          await get("/openapi.json"),
        );
        assert.match(doc.openapi, /^3\./);
        assert.equal(doc.info.version, VERSION);
        const methods = Object.fromEntries(Object.entries(doc.paths).map(([p, item]) => [p, Object.keys(item).sort()]));
        assert.deepEqual(methods["/stream-tables"], ["get", "post"]);
        assert.deepEqual(methods["/stream-tables/{name}"], ["delete", "get", "patch"]);
        assert.deepEqual(methods["/stream-tables/{name}/refresh"], ["post"]);
        assert.deepEqual(methods["/stream-tables/{name}/history"], ["get"]);
        assert.deepEqual(methods["/health"], ["get"]);
        assert.deepEqual(methods["/ready"], ["get"]);
        const create =
          (doc.paths["/stream-tables"] as Record<string, { responses: Record<string, { content?: object }> }>).post!;
        assert.ok(
          "application/problem+json" in (create.responses["422"]?.content ?? {}),
          "errors are documented as problems",
        );

        const docs = await get("/docs");
        assert.equal(docs.status, 200);
        assert.match(docs.headers.get("content-type") ?? "", /^text\/html/);
        const html = await docs.text();
        const fetched = /url: new URL\("([^"]+)", location\.href\)/.exec(html);
        assert.ok(fetched !== null, "the page reads the OpenAPI document (Swagger UI; tests/docs_page_test.ts)");
        assert.equal(new URL(fetched[1]!, "http://host/docs").pathname, "/openapi.json");

        const p = await problem(await get("/no/such/route"), 404, "NotFound", /GET \/no\/such\/route/);
        assert.equal(typeof p.request_id, "string");
        await problem(await req("PUT", "/stream-tables"), 405, "MethodNotAllowed", /allowed: GET, POST/);
      });

      await t.step("after all the bad requests, the service still serves", async () => {
        const st = await ok<StreamTable>(
          await req("POST", "/stream-tables", { name: "still_works", query: "SELECT id, v FROM y WHERE v > 10" }),
          201,
        );
        assert.equal(st.row_count, 2);
        await assertSameRows(sql, {
          table: "still_works",
          query: "SELECT id, v FROM y WHERE v > 10",
          columns: ["id", "v"],
        });
        await sql`INSERT INTO y VALUES (4, 40)`;
        const r = await ok<RefreshResult>(await req("POST", "/stream-tables/still_works/refresh"));
        assert.equal(r.delta_rows, 1);
        await assertSameRows(sql, {
          table: "still_works",
          query: "SELECT id, v FROM y WHERE v > 10",
          columns: ["id", "v"],
        });
        assert.equal(
          (await ok<StreamTable[]>(await get("/stream-tables"))).some((x) => x.table === "still_works"),
          true,
        );
      });
    } finally {
      await sql2.end({ timeout: 1 });
      await s.close();
    }
  },
});

const ADMIN = "a".repeat(32);
const READ = "r".repeat(32);
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

Deno.test({
  name: "stream tables API: bearer tokens and the body limit",
  ...dbTest,
  async fn(t) {
    const s = await startTestService({ adminToken: ADMIN, readToken: READ, bodyLimitBytes: 1024 });
    const sql = s.db.sql;
    const req = s.request;
    try {
      await sql`CREATE TABLE y (id int PRIMARY KEY, v int)`;
      await sql`INSERT INTO y VALUES (1, 10), (2, 20)`;
      const create = { name: "guarded", query: "SELECT id, v FROM y" };

      await t.step("no token: 401 with WWW-Authenticate, for reads and writes, and nothing is created", async () => {
        const before = await dbState(sql);
        for (const [method, path, body] of [["GET", "/stream-tables"], ["POST", "/stream-tables", create]] as const) {
          const res = await req(method, path, body);
          assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer /);
          await problem(res, 401, "Unauthorized", /bearer token/);
        }
        const basic = await req("GET", "/stream-tables", undefined, {
          authorization: `Basic ${btoa("admin:" + ADMIN)}`,
        });
        await problem(basic, 401, "Unauthorized");
        assert.deepEqual(await dbState(sql), before);
      });

      await t.step("a wrong token: 403, and nothing is created", async () => {
        const before = await dbState(sql);
        await problem(
          await req("GET", "/stream-tables", undefined, bearer("x".repeat(32))),
          403,
          "Forbidden",
          /not valid/,
        );
        await problem(await req("POST", "/stream-tables", create, bearer("x".repeat(32))), 403, "Forbidden");
        await problem(await req("POST", "/stream-tables", create, bearer(ADMIN.slice(1))), 403, "Forbidden");
        await problem(await req("POST", "/stream-tables", create, bearer(ADMIN + "a")), 403, "Forbidden");
        assert.deepEqual(await dbState(sql), before);
      });

      await t.step("the admin token creates, reads and changes", async () => {
        await ok<StreamTable>(await req("POST", "/stream-tables", create, bearer(ADMIN)), 201);
        assert.notEqual(await regclass(sql, "guarded"), null);
        await ok<StreamTable>(await req("GET", "/stream-tables/guarded", undefined, bearer(ADMIN)));
        await ok<StreamTable>(await req("PATCH", "/stream-tables/guarded", { schedule: "5m" }, bearer(ADMIN)));
        await ok<RefreshResult>(await req("POST", "/stream-tables/guarded/refresh", undefined, bearer(ADMIN)));
      });

      await t.step("the read token reads (200) but cannot write (403)", async () => {
        const list = await ok<StreamTable[]>(await req("GET", "/stream-tables", undefined, bearer(READ)));
        assert.deepEqual(list.map((x) => x.name), ["public.guarded"]);
        await ok<StreamTable>(await req("GET", "/stream-tables/guarded", undefined, bearer(READ)));
        await ok<HistoryEntry[]>(await req("GET", "/stream-tables/guarded/history", undefined, bearer(READ)));
        await ok(await req("GET", "/openapi.json", undefined, bearer(READ)));
        const before = await dbState(sql);
        for (
          const [method, path, body] of [
            ["POST", "/stream-tables", { ...create, name: "by_reader" }],
            ["PATCH", "/stream-tables/guarded", { schedule: "1h" }],
            ["DELETE", "/stream-tables/guarded"],
            ["POST", "/stream-tables/guarded/refresh"],
          ] as [string, string, unknown?][]
        ) {
          await problem(
            await req(method, path, body, bearer(READ)),
            403,
            "Forbidden",
            /read token does not allow changes/,
          );
        }
        assert.deepEqual(await dbState(sql), before);
        assert.equal(
          (await ok<StreamTable>(await req("GET", "/stream-tables/guarded", undefined, bearer(READ)))).schedule,
          "5m",
        );
      });

      await t.step("/health and /ready need no token; OpenAPI declares bearer auth", async () => {
        assert.equal((await ok<{ status: string }>(await req("GET", "/health"))).status, "ok");
        assert.equal((await ok<{ ready: boolean }>(await req("GET", "/ready"))).ready, true);
        const doc = await ok<{ security: unknown; components: { securitySchemes: Record<string, unknown> } }>(
          await req("GET", "/openapi.json", undefined, bearer(ADMIN)),
        );
        assert.deepEqual(doc.security, [{ bearer: [] }]);
        assert.deepEqual(doc.components.securitySchemes.bearer, { type: "http", scheme: "bearer" });
      });

      await t.step("a body over the limit is 413 and creates nothing; one under it works", async () => {
        const before = await dbState(sql);
        const big = { name: "too_big", query: `SELECT id, v FROM y -- ${"x".repeat(1100)}` };
        await problem(await req("POST", "/stream-tables", big, bearer(ADMIN)), 413, "PayloadTooLarge", /1024 bytes/);
        await problem(
          await req("PATCH", "/stream-tables/guarded", { schedule: "5m", pad: "x".repeat(2000) }, bearer(ADMIN)),
          413,
          "PayloadTooLarge",
        );
        assert.deepEqual(await dbState(sql), before);
        const fits = { name: "fits", query: `SELECT id, v FROM y -- ${"x".repeat(900)}` };
        assert.ok(JSON.stringify(fits).length < 1024);
        await ok<StreamTable>(await req("POST", "/stream-tables", fits, bearer(ADMIN)), 201);
      });

      await t.step("the admin token deletes", async () => {
        assert.equal((await req("DELETE", "/stream-tables/guarded", undefined, bearer(ADMIN))).status, 204);
        assert.equal(await regclass(sql, "guarded"), null);
      });
    } finally {
      await s.close();
    }
  },
});
