/**
 * Alerts with real refreshes: a stream table whose query slows down (a pg_sleep in a function it calls, switched by a
 * settings table) gets predicted_sla_breach once, then freshness_deadline_missed, then a resolve of each; each alert is
 * in the outbox and NOTIFYed; a restarted service does not fire again within the cooldown.
 */
import assert from "node:assert/strict";
import { refreshStreamTable } from "../engine/refresh/refresh.ts";
import { createStreamTable } from "../engine/stream_tables.ts";
import { ok } from "./support/api.ts";
import { capturingLogger, OffsetClock, planning, reopen } from "./support/alerts.ts";
import { dbTest, startTestService } from "./support/service.ts";

const DEADLINE_MS = 2000;

Deno.test({
  name: "alerts: a slowing query gets predicted_sla_breach once, then freshness_deadline_missed, then resolves",
  ...dbTest,
  fn: async () => {
    const clock = new OffsetClock();
    const plan = await planning({});
    const s = await startTestService({ clock, planning: plan });
    const ctx = s.engine.db();
    const notified: Record<string, unknown>[] = [];
    const listener = await s.db.sql.listen("pg_trickle_alert", (p) => notified.push(JSON.parse(p)));
    try {
      // Test-only SQL: constant text. The function is declared IMMUTABLE so the query stays DIFFERENTIAL; it sleeps
      // `delay` seconds per row it computes, as the settings table says.
      await s.db.sql.unsafe(`
        CREATE TABLE slow_settings (delay float8 NOT NULL);
        INSERT INTO slow_settings VALUES (0);
        CREATE FUNCTION slow_v(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS
          'BEGIN PERFORM pg_sleep((SELECT delay FROM public.slow_settings)); RETURN v; END';
        CREATE TABLE src (id int PRIMARY KEY, v int NOT NULL);
        INSERT INTO src SELECT i, i FROM generate_series(1, 1000) i;
        ANALYZE src;
      `);
      const st = await createStreamTable(ctx, {
        name: { schema: "public", name: "slowing" },
        query: "SELECT id, slow_v(v) AS v FROM src",
        schedule: "1s",
        refreshMode: "DIFFERENTIAL",
        freshnessDeadlineMs: DEADLINE_MS,
      });
      let next = 10_000;
      const round = async (rows: number) => {
        await s.db.sql`INSERT INTO src SELECT i, i FROM generate_series(${next + 1}::int, ${next + rows}::int) i`;
        next += rows;
        return await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "SCHEDULER" });
      };
      const pass = () => s.engine.planner.pass(ctx, { recommend: false });
      const outbox = async () =>
        (await s.db.sql<{ kind: string; state: string; payload: Record<string, number> }[]>`
          SELECT kind, state, payload FROM pgtrickle.pgt_alerts ORDER BY alert_id`).map((a) => `${a.kind}:${a.state}`);

      for (let i = 0; i < 5; i++) assert.equal((await round(1)).action, "DIFFERENTIAL");
      assert.deepEqual((await pass()).alerts, [], "fast refreshes: nothing to say");

      // The query slows down: 100 ms per changed row.
      await s.db.sql`UPDATE slow_settings SET delay = 0.1`;
      for (let i = 0; i < 5; i++) assert.ok((await round(1)).duration_ms >= 100);
      assert.deepEqual((await pass()).alerts, [], "one pending row at 100 ms is still well within 2 s");

      // 40 changes arrive (4 % of the rows: DIFFERENTIAL): the next refresh would take about 4 s, the deadline is 2 s.
      await s.db.sql`INSERT INTO src SELECT i, i FROM generate_series(5001, 5040) i`;
      assert.deepEqual((await pass()).alerts, ["predicted_sla_breach:firing:public.slowing"]);
      assert.deepEqual((await pass()).alerts, [], "not again within the cooldown");
      const [predicted] = await s.db.sql<{ payload: Record<string, number> }[]>`
        SELECT payload FROM pgtrickle.pgt_alerts WHERE kind = 'predicted_sla_breach'`;
      assert.ok(predicted!.payload.predicted_ms! > DEADLINE_MS * 1.2, JSON.stringify(predicted!.payload));
      assert.ok(predicted!.payload.predicted_ms! >= 40 * 100);
      assert.equal(predicted!.payload.sla_ms, DEADLINE_MS);
      assert.equal(predicted!.payload.stream_table as unknown, "public.slowing");

      // A restarted service reads the persisted last-fired time: the condition still holds, nothing fires again.
      const restarted = await reopen(s, { clock, planning: plan, log: capturingLogger([]) });
      try {
        assert.deepEqual((await restarted.planner.pass(restarted.db(), { recommend: false })).alerts, []);
      } finally {
        await restarted.close(1000);
      }

      // No refresh for longer than the deadline: the data really is too old now.
      clock.advance(DEADLINE_MS + 1000);
      assert.deepEqual((await pass()).alerts, ["freshness_deadline_missed:firing:public.slowing"]);
      assert.deepEqual((await pass()).alerts, []);

      // Fast again; the refresh that brings the data back within its deadline resolves the missed deadline in its
      // own transaction, and the next pass sees the breach no longer predicted.
      await s.db.sql`UPDATE slow_settings SET delay = 0`;
      const caughtUp = await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "SCHEDULER" });
      assert.equal(caughtUp.delta_rows, 40);
      assert.deepEqual(await outbox(), [
        "predicted_sla_breach:firing",
        "freshness_deadline_missed:firing",
        "freshness_deadline_missed:resolved",
      ]);
      assert.deepEqual((await pass()).alerts, ["predicted_sla_breach:resolved:public.slowing"]);
      assert.deepEqual((await pass()).alerts, []);
      assert.deepEqual(await outbox(), [
        "predicted_sla_breach:firing",
        "freshness_deadline_missed:firing",
        "freshness_deadline_missed:resolved",
        "predicted_sla_breach:resolved",
      ]);

      // Each alert was NOTIFYed on pg_trickle_alert with its JSON, once, after its transaction committed.
      for (let i = 0; i < 50 && notified.length < 4; i++) await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(notified.map((n) => `${n.kind}:${n.state}`), await outbox());
      assert.ok(notified.every((n) => typeof n.webhook_id === "string" && n.stream_table === "public.slowing"));

      // GET /alerts lists them newest first (no sink configured: no deliveries).
      const listed = await ok<{ kind: string; state: string; deliveries: unknown[] }[]>(
        await s.request("GET", "/alerts"),
      );
      assert.deepEqual(listed.map((a) => `${a.kind}:${a.state}`), (await outbox()).reverse());
      assert.ok(listed.every((a) => a.deliveries.length === 0));

      // Raised alerts are counted by kind (resolves are not raises) in GET /metrics.
      const metrics = await (await s.request("GET", "/metrics")).text();
      const count = (kind: string) =>
        metrics.split("\n").find((l) => l.startsWith("pg_trickle_alerts_total{") && l.includes(`kind="${kind}"`))
          ?.split(" ").at(-1);
      assert.equal(count("predicted_sla_breach"), "1", metrics);
      assert.equal(count("freshness_deadline_missed"), "1");
    } finally {
      await listener.unlisten();
      await s.close();
    }
  },
});

Deno.test({
  name: "alerts: a stream table being refreshed (its row locked) is skipped by the pass, not waited for",
  ...dbTest,
  fn: async () => {
    const s = await startTestService();
    const ctx = s.engine.db();
    try {
      await s.db.sql`CREATE TABLE src (id int PRIMARY KEY)`;
      const st = await createStreamTable(ctx, {
        name: { schema: "public", name: "busy" },
        query: "SELECT id FROM src",
        schedule: "1h",
        refreshMode: "AUTO",
        freshnessDeadlineMs: 1, // too old at once
      });
      await new Promise((r) => setTimeout(r, 5));
      const holder = await s.db.sql.reserve();
      try {
        await holder`BEGIN`;
        await holder`SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${st.pgt_id} FOR UPDATE`;
        const t0 = performance.now();
        assert.deepEqual((await s.engine.planner.pass(ctx, { recommend: false })).alerts, []);
        assert.ok(performance.now() - t0 < 5000, "the pass did not wait for the lock");
        await holder`COMMIT`;
      } finally {
        holder.release();
      }
      const alerts = (await s.engine.planner.pass(ctx, { recommend: false })).alerts;
      assert.ok(alerts.includes("freshness_deadline_missed:firing:public.busy"), JSON.stringify(alerts));
    } finally {
      await s.close();
    }
  },
});
