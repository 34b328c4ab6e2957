/** The worker pool over two managed databases: limits hold, every due stream table is refreshed. */
import assert from "node:assert/strict";
import { alterStreamTable, createStreamTable } from "../engine/stream_tables.ts";
import { refreshStreamTable } from "../engine/refresh/refresh.ts";
import { connect, urlForDatabase } from "../db/pool.ts";
import { dbTest, startTestService } from "./support/service.ts";

Deno.test({
  name: "at most max_workers refreshes run, and at most the quota per database",
  ...dbTest,
  fn: async () => {
    let now = Date.now();
    const svc = await startTestService({
      extraDatabases: 1,
      settings: { maxWorkers: 3, perDatabaseQuota: 2 },
      clock: { now: () => new Date(now) },
    });
    const second = connect(urlForDatabase(svc.db.serverUrl, svc.databases[0]!), { max: 2 });
    try {
      for (const [name, sql] of [[svc.db.name, svc.db.sql], [svc.databases[0]!, second]] as const) {
        await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
        await sql`INSERT INTO src VALUES (1, 1)`;
        for (let i = 0; i < 4; i++) {
          // FULL refreshes of about 300 ms each.
          await createStreamTable(svc.engine.db(name), {
            name: { schema: "public", name: `slow_${i}` },
            query: `SELECT s.id, s.v + ${i} AS v FROM src s CROSS JOIN (SELECT pg_sleep(0.3) AS z) z`,
            schedule: "1s",
            refreshMode: "FULL",
            freshnessDeadlineMs: null,
          });
        }
        await sql`UPDATE src SET v = 2`;
      }
      now += 5000;
      await svc.engine.scheduler.tick();
      let maxTotal = 0;
      let maxPerDb = 0;
      let sawQueued = false;
      const sampling = (async () => {
        for (;;) {
          const w = svc.engine.scheduler.workers();
          maxTotal = Math.max(maxTotal, w.reduce((s, d) => s + d.workers_active, 0));
          maxPerDb = Math.max(maxPerDb, ...w.map((d) => d.workers_active));
          sawQueued ||= w.some((d) => d.workers_queued > 0);
          if (w.every((d) => d.workers_active === 0 && d.workers_queued === 0)) return;
          await new Promise((r) => setTimeout(r, 10));
        }
      })();
      await svc.engine.scheduler.idle();
      await sampling;
      assert.equal(maxTotal, 3, "the pool is used up to max_workers and no further");
      assert.equal(maxPerDb, 2, "no database runs more than its quota");
      assert.ok(sawQueued, "the rest waited in the queue");
      assert.deepEqual(
        svc.engine.scheduler.workers().map((w) => ({ leader: w.leader, quota: w.quota })),
        [{ leader: true, quota: 2 }, { leader: true, quota: 2 }],
      );
      for (const sql of [svc.db.sql, second]) {
        const rows = await sql<{ n: number }[]>`
          SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history WHERE initiated_by = 'SCHEDULER' AND status = 'SUCCESS'`;
        assert.equal(rows[0]!.n, 4, "every due stream table refreshed once");
        const stale = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM slow_0 WHERE v <> 2`;
        assert.equal(stale[0]!.n, 0);
      }
    } finally {
      await second.end();
      await svc.close();
    }
  },
});

Deno.test({
  name: "next_due_at: set when a refresh commits and when the schedule changes; a tick queues what is due by it",
  ...dbTest,
  fn: async () => {
    let now = Date.parse("2026-03-01T10:00:00Z");
    const svc = await startTestService({ clock: { now: () => new Date(now) } });
    const ctx = svc.engine.db();
    try {
      const dueAt = async () =>
        (await ctx.sql<{ at: Date | null }[]>`SELECT next_due_at AS at FROM pgtrickle.pgt_stream_tables`)[0]!.at
          ?.toISOString() ?? null;
      await ctx.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await createStreamTable(ctx, {
        name: { schema: "public", name: "due" },
        query: "SELECT id, v FROM src",
        schedule: "1m",
        refreshMode: "DIFFERENTIAL",
        freshnessDeadlineMs: null,
      });
      assert.equal(await dueAt(), "2026-03-01T10:01:00.000Z", "one interval after the initial refresh");
      now += 10_000;
      await alterStreamTable(ctx, { schema: "public", name: "due" }, { schedule: "0 12 * * *" });
      assert.equal(await dueAt(), "2026-03-01T12:00:00.000Z", "the new schedule's next firing after the last refresh");
      const refreshes = async () =>
        (await ctx.sql<{ n: number }[]>`
          SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history WHERE initiated_by = 'SCHEDULER'`)[0]!.n;
      now = Date.parse("2026-03-01T11:59:59Z");
      await svc.engine.scheduler.tick();
      await svc.engine.scheduler.idle();
      assert.equal(await refreshes(), 0, "not due yet");
      now = Date.parse("2026-03-01T12:00:00Z");
      await svc.engine.scheduler.tick();
      await svc.engine.scheduler.idle();
      assert.equal(await refreshes(), 1, "due at next_due_at");
      assert.equal(await dueAt(), "2026-03-02T12:00:00.000Z", "and the next firing is set by that refresh");
    } finally {
      await svc.close();
    }
  },
});

Deno.test({
  name: "a schedule that no longer parses is logged and shown on the stream table, which is not scheduled",
  ...dbTest,
  fn: async () => {
    let now = Date.parse("2026-03-01T10:00:00Z");
    const svc = await startTestService({ clock: { now: () => new Date(now) } });
    const ctx = svc.engine.db();
    try {
      await ctx.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      const st = await createStreamTable(ctx, {
        name: { schema: "public", name: "odd" },
        query: "SELECT id, v FROM src",
        schedule: "1s",
        refreshMode: "DIFFERENTIAL",
        freshnessDeadlineMs: null,
      });
      // As a catalog edited by hand, or written by a version that accepted more, would have it.
      await ctx.sql`UPDATE pgtrickle.pgt_stream_tables SET schedule = 'every tuesday' WHERE pgt_id = ${st.pgt_id}`;
      await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
      const res = await svc.request("GET", "/stream-tables/odd");
      const body = await res.json();
      assert.equal(body.status, "ACTIVE", "its status stays");
      assert.match(body.last_error ?? "", /schedule no longer parses.*"every tuesday"/);
      const before = await ctx.sql`SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history`;
      now += 3_600_000;
      await svc.engine.scheduler.tick();
      await svc.engine.scheduler.idle();
      const after = await ctx.sql`SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history`;
      assert.deepEqual(after, before, "a tick does not refresh it");
      // Fixing the schedule schedules it again.
      await alterStreamTable(ctx, { schema: "public", name: "odd" }, { schedule: "1s" });
      await svc.engine.scheduler.tick();
      await svc.engine.scheduler.idle();
      const fixed = await ctx.sql<{ e: string | null }[]>`SELECT last_error AS e FROM pgtrickle.pgt_stream_tables`;
      assert.equal(fixed[0]!.e, null, "its next refresh clears the message");
    } finally {
      await svc.close();
    }
  },
});

Deno.test({
  name: "a running scheduler refreshes a stream table when it falls due, not at its next tick",
  ...dbTest,
  fn: async () => {
    // Ticks every 10 s: a 1 s schedule is kept only if the scheduler wakes for what falls due between ticks.
    const svc = await startTestService({ settings: { schedulerIntervalMs: 10_000 } });
    const ctx = svc.engine.db();
    try {
      await ctx.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await createStreamTable(ctx, {
        name: { schema: "public", name: "every_second" },
        query: "SELECT id, v FROM src",
        schedule: "1s",
        refreshMode: "DIFFERENTIAL",
        freshnessDeadlineMs: null,
      });
      svc.engine.scheduler.start();
      await new Promise((r) => setTimeout(r, 4_500));
      const [row] = await ctx.sql<{ n: number }[]>`
        SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history WHERE initiated_by = 'SCHEDULER'`;
      // Due at 1, 2, 3 and 4 s after creation; one tick alone (at start) would give 1.
      assert.ok(row!.n >= 3, `${row!.n} scheduled refreshes in 4.5 s of a 1 s schedule`);
    } finally {
      await svc.close();
    }
  },
});
