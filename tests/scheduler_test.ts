/** The worker pool over two managed databases: limits hold, every due stream table is refreshed. */
import assert from "node:assert/strict";
import { createStreamTable } from "../engine/stream_tables.ts";
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
