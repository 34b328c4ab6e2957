/** PATCH /stream-tables/{name}: schedule, deadline, refresh mode, suspend and resume; bad changes change nothing. */
import assert from "node:assert/strict";
import { dbTest } from "./support/service.ts";
import {
  assertSameRows,
  BIG_ORDERS_QUERY,
  created,
  createSources,
  type HistoryEntry,
  ok,
  problem,
  type RefreshResult,
  type StreamTable,
  withService,
} from "./support/api.ts";

Deno.test({
  name: "PATCH changes schedule, deadline and refresh mode; omitted fields stay",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      const patch = async (body: unknown) =>
        await ok<StreamTable>(await s.request("PATCH", "/stream-tables/big_orders", body));
      await createSources(sql);
      const before = await created(s, { name: "big_orders", query: BIG_ORDERS_QUERY });
      const a = await patch({ schedule: "5m" });
      assert.equal(a.schedule, "5m");
      assert.equal(a.refresh_mode, "AUTO");
      assert.equal(a.freshness_deadline_ms, null);
      assert.equal(a.frontier, before.frontier);
      assert.ok(new Date(a.updated_at) >= new Date(before.updated_at));
      const b = await patch({ schedule: " */10 * * * * " });
      assert.equal(b.schedule, "*/10 * * * *");
      const c = await patch({ freshness_deadline_ms: 5000 });
      assert.equal(c.freshness_deadline_ms, 5000);
      assert.equal(c.schedule, "*/10 * * * *");
      const d = await patch({ freshness_deadline_ms: null });
      assert.equal(d.freshness_deadline_ms, null);

      const full = await patch({ refresh_mode: "FULL" });
      assert.equal(full.refresh_mode, "FULL");
      assert.equal(full.effective_refresh_mode, "FULL");
      await sql`INSERT INTO orders VALUES (203, 3, 77)`;
      const r = await ok<RefreshResult>(await s.request("POST", "/stream-tables/big_orders/refresh"));
      assert.equal(r.action, "FULL");
      assert.match(r.reason ?? "", /refresh mode FULL/);
      await assertSameRows(sql, {
        table: "big_orders",
        query: BIG_ORDERS_QUERY,
        columns: ["id", "customer", "amount"],
      });

      const auto = await patch({ refresh_mode: "AUTO" });
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
    }),
});

Deno.test({
  name: "PATCH refuses bad changes with a problem and changes nothing",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const patch = (body: unknown) => s.request("PATCH", "/stream-tables/top_orders", body);
      await createSources(s.db.sql);
      await created(s, {
        name: "top_orders",
        query: "SELECT customer, sum(amount) AS total FROM orders GROUP BY ROLLUP (customer)",
        schedule: "1h",
      });
      const top = await ok<StreamTable>(await s.request("GET", "/stream-tables/top_orders"));
      const unsupported = await problem(
        await patch({ refresh_mode: "DIFFERENTIAL" }),
        422,
        "UnsupportedQuery",
        /ROLLUP/,
      );
      assert.match(String(unsupported.reason), /ROLLUP/);
      await problem(await patch({ refresh_mode: "IMMEDIATE" }), 422, "UnsupportedRefreshMode", /IMMEDIATE/);
      await problem(await patch({ schedule: "5x" }), 400, "InvalidSchedule", /"5x"/);
      await problem(await patch({ status: "ERROR" }), 400, "BadRequest", /status/);
      await problem(await patch({ shedule: "5m" }), 400, "BadRequest", /shedule/);
      await problem(await patch({ freshness_deadline_ms: 0 }), 400, "BadRequest", /freshness_deadline_ms/);
      await problem(await patch("{"), 400, "BadRequest", /JSON/);
      assert.deepEqual(await ok<StreamTable>(await s.request("GET", "/stream-tables/top_orders")), top);
    }),
});

Deno.test({
  name: "PATCH status SUSPENDED stops scheduled refreshes; ACTIVE resumes them",
  ...dbTest,
  fn: async () => {
    // A clock the test moves forward, so the scheduler finds the stream table due without waiting.
    const clock = { offsetMs: 0, now: () => new Date(Date.now() + clock.offsetMs) };
    await withService({ clock }, async (s) => {
      const sql = s.db.sql;
      await sql`CREATE TABLE ticks (id int PRIMARY KEY)`;
      await created(s, { name: "tick_copy", query: "SELECT id FROM ticks", schedule: "1s" });
      const entries = async () => await ok<HistoryEntry[]>(await s.request("GET", "/stream-tables/tick_copy/history"));
      const copied = async () => (await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM tick_copy`)[0]!.n;
      const patch = async (body: unknown) =>
        await ok<StreamTable>(await s.request("PATCH", "/stream-tables/tick_copy", body));
      assert.equal((await entries()).length, 1);

      const suspended = await patch({ status: "SUSPENDED" });
      assert.equal(suspended.status, "SUSPENDED");
      await sql`INSERT INTO ticks VALUES (1), (2)`;
      clock.offsetMs += 5_000; // due by its schedule
      await s.engine.scheduler.tick();
      await s.engine.scheduler.idle();
      assert.equal((await entries()).length, 1, "a suspended stream table is not refreshed by the scheduler");
      assert.equal(await copied(), 0);
      assert.equal((await ok<StreamTable>(await s.request("GET", "/stream-tables/tick_copy"))).status, "SUSPENDED");

      const resumed = await patch({ status: "ACTIVE" });
      assert.equal(resumed.status, "ACTIVE");
      clock.offsetMs += 5_000;
      await s.engine.scheduler.tick();
      await s.engine.scheduler.idle();
      const after = await entries();
      assert.equal(after[0]?.initiated_by, "SCHEDULER", JSON.stringify(after));
      assert.equal(await copied(), 2);
    });
  },
});
