/** The engine's events: what subscribers hear, and the hook that writes inside the refresh transaction. */
import assert from "node:assert/strict";
import type { EngineEvent } from "../engine/events.ts";
import { refreshStreamTable } from "../engine/refresh/refresh.ts";
import { alterStreamTable, createStreamTable, dropStreamTable } from "../engine/stream_tables.ts";
import { dbTest, startTestService } from "./support/service.ts";
import { one } from "./support/rows.ts";

Deno.test({
  name:
    "events: created, refresh committed with its figures, altered, failed, dropped; a throwing subscriber is harmless",
  ...dbTest,
  fn: async () => {
    const svc = await startTestService();
    const ctx = svc.engine.db();
    try {
      const seen: EngineEvent[] = [];
      ctx.events.subscribe("*", () => {
        throw new Error("a broken subscriber");
      });
      const stop = ctx.events.subscribe("*", (e) => seen.push(e));
      const committed: number[] = [];
      ctx.events.subscribe("refresh_committed", (e) => committed.push(e.rows_inserted));
      await ctx.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await ctx.sql`INSERT INTO src SELECT i, i FROM generate_series(1, 100) i`;
      const name = { schema: "public", name: "ev" };
      const st = await createStreamTable(ctx, {
        name,
        query: "SELECT id, v FROM src",
        schedule: "1m",
        refreshMode: "DIFFERENTIAL",
        freshnessDeadlineMs: null,
      });
      await ctx.sql`INSERT INTO src VALUES (101, 1), (102, 2)`;
      await ctx.sql`DELETE FROM src WHERE id = 1`;
      await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
      await alterStreamTable(ctx, name, { schedule: "5m" });
      await ctx.sql`ALTER TABLE src RENAME TO src_gone`;
      await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" }).catch(() => {});
      await ctx.sql`ALTER TABLE src_gone RENAME TO src`;
      await dropStreamTable(ctx, name);
      stop();
      await ctx.sql`CREATE TABLE after_stop (id int PRIMARY KEY)`;
      await createStreamTable(ctx, {
        name: { schema: "public", name: "unheard" },
        query: "SELECT id FROM after_stop",
        schedule: "1m",
        refreshMode: "AUTO",
        freshnessDeadlineMs: null,
      });

      const facts = { db_name: ctx.name, db_oid: ctx.oid, pgt_id: st.pgt_id, stream_table: "public.ev" };
      assert.deepEqual(seen.map((e) => e.type), [
        "refresh_committed", // the initial refresh
        "stream_table_created",
        "refresh_committed",
        "stream_table_altered",
        "refresh_failed",
        "stream_table_dropped",
      ]);
      const [initial, created, manual, altered, failed, dropped] = seen;
      assert.deepEqual({ ...initial, duration_ms: 0 }, {
        type: "refresh_committed",
        ...facts,
        action: "FULL",
        reason: "initial refresh",
        initiated_by: "CREATE",
        duration_ms: 0,
        rows_inserted: 100,
        rows_deleted: 0,
        delta_rows: 0,
      });
      assert.deepEqual(created, { type: "stream_table_created", ...facts, refresh_mode: "DIFFERENTIAL" });
      assert.equal(manual?.type, "refresh_committed");
      if (manual?.type === "refresh_committed") {
        assert.deepEqual(
          [manual.action, manual.initiated_by, manual.rows_inserted, manual.rows_deleted, manual.delta_rows],
          ["DIFFERENTIAL", "MANUAL", 2, 1, 3],
        );
        assert.ok(manual.duration_ms > 0);
      }
      assert.deepEqual(altered, { type: "stream_table_altered", ...facts, changes: ["schedule"] });
      assert.equal(failed?.type, "refresh_failed");
      if (failed?.type === "refresh_failed") {
        assert.equal(failed.stream_table, "public.ev");
        assert.equal(failed.consecutive_errors, 1);
        assert.equal(failed.status, "ERROR", "a source gone is ERROR at once");
        assert.match(failed.error, /src/);
      }
      assert.deepEqual(dropped, { type: "stream_table_dropped", ...facts });
      assert.deepEqual(committed, [100, 2, 0], "a typed subscription hears its own type, until unsubscribed: none");
    } finally {
      await svc.close();
    }
  },
});

Deno.test({
  name: "events: a committing hook writes in the refresh transaction; when it fails, the refresh rolls back",
  ...dbTest,
  fn: async () => {
    const svc = await startTestService();
    const ctx = svc.engine.db();
    try {
      await ctx.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await ctx.sql`CREATE TABLE outbox (pgt_id int8, action text, rows_inserted int8, history_rows int)`;
      await ctx.sql`INSERT INTO src VALUES (1, 1)`;
      let fail = false;
      const unregister = ctx.events.onRefreshCommitting(async (tx, f) => {
        // The refresh's own history row, not yet committed, is visible only inside its transaction.
        await tx`INSERT INTO outbox SELECT ${f.pgt_id}, ${f.action}, ${f.rows_inserted}, count(*)
          FROM pgtrickle.pgt_refresh_history WHERE pgt_id = ${f.pgt_id}`;
        if (fail) throw new Error("the outbox is full");
      });
      const st = await createStreamTable(ctx, {
        name: { schema: "public", name: "hooked" },
        query: "SELECT id, v FROM src",
        schedule: "1m",
        refreshMode: "DIFFERENTIAL",
        freshnessDeadlineMs: null,
      });
      assert.deepEqual(
        [...await ctx.sql`SELECT pgt_id::int, action, rows_inserted::int, history_rows FROM outbox`],
        [{ pgt_id: st.pgt_id, action: "FULL", rows_inserted: 1, history_rows: 1 }],
        "the hook ran in the refresh's transaction, before its commit, with its figures",
      );

      const before = one(
        await ctx.sql<{ f: string }[]>`
        SELECT frontier::text AS f FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${st.pgt_id}`,
      ).f;
      fail = true;
      await ctx.sql`INSERT INTO src VALUES (2, 2)`;
      await assert.rejects(refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" }), /the outbox is full/);
      const after = one(
        await ctx.sql<{ f: string; n: number; outbox: number }[]>`
        SELECT frontier::text AS f, (SELECT count(*)::int FROM hooked) AS n, (SELECT count(*)::int FROM outbox) AS outbox
        FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${st.pgt_id}`,
      );
      assert.deepEqual(after, { f: before, n: 1, outbox: 1 }, "neither the refresh nor the hook's row committed");

      unregister();
      await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
      assert.equal(one(await ctx.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM hooked`).n, 2);
      assert.equal(one(await ctx.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM outbox`).n, 1);
    } finally {
      await svc.close();
    }
  },
});
