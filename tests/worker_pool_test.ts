/**
 * The worker pool across service instances: `max_workers` holds for the whole cluster, not per process, and the
 * worker state is read from PostgreSQL, the same from every instance.
 */
import assert from "node:assert/strict";
import { connect, urlForDatabase } from "../db/pool.ts";
import { freshDatabase, serverUrl } from "./support/db.ts";
import { eventually, type ServiceProcess, spawnService, stopAll } from "./support/process.ts";
import { dbTest, startTestService } from "./support/service.ts";
import { one } from "./support/rows.ts";
import type { ClusterWorkers } from "../engine/scheduler/pool.ts";
import { createStreamTable } from "../engine/stream_tables.ts";

Deno.test({
  name: "two instances, each leading one database, never run more than max_workers refreshes at once cluster-wide",
  ...dbTest,
  fn: async () => {
    const dbs = [await freshDatabase(), await freshDatabase()];
    const procs: ServiceProcess[] = [];
    const admin = connect(serverUrl(), { max: 1, applicationName: "test" });
    try {
      for (const db of dbs) {
        await db.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
        await db.sql`INSERT INTO src VALUES (1, 0)`;
        // A refresh sleeps 0.4 s while v > 0, so the test decides when refreshes are slow.
        await db.sql`CREATE FUNCTION nap(v int) RETURNS int LANGUAGE plpgsql AS
          $$ BEGIN IF v > 0 THEN PERFORM pg_sleep(0.4); END IF; RETURN v; END $$`;
      }
      for (const db of dbs) {
        const env = { TRICKLE_MAX_WORKERS: "2" };
        procs.push(await spawnService({ databaseUrl: db.url, env }));
      }
      for (const [i, db] of dbs.entries()) {
        for (let n = 0; n < 3; n++) {
          const r = await fetch(procs[i]!.url + "/stream-tables", {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
              name: `slow_${n}`,
              query: "SELECT id, nap(v) AS v FROM src",
              schedule: "1s",
              refresh_mode: "FULL",
            }),
          });
          assert.equal(r.status, 201, await r.text());
        }
        void db;
      }
      for (const db of dbs) await db.sql`UPDATE src SET v = 1`;
      // Sample what the server runs: backends sleeping in a refresh of either database.
      let most = 0;
      const names = dbs.map((d) => d.name);
      const done = async () => {
        let n = 0;
        for (const db of dbs) {
          n += one(
            await db.sql<{ n: number }[]>`
            SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history
            WHERE initiated_by = 'SCHEDULER' AND status = 'SUCCESS' AND rows_inserted = 1
              AND started_at > (SELECT max(started_at) FROM pgtrickle.pgt_refresh_history WHERE initiated_by = 'CREATE')`,
          )
            .n;
        }
        return n;
      };
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline) {
        const running = one(
          await admin<{ n: number }[]>`
          SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = ANY(${names})`,
        ).n;
        most = Math.max(most, running);
        if (await done() >= 6) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(await done() >= 6, "every slow stream table refreshed");
      assert.equal(most, 2, "the cluster ran up to max_workers refreshes at once, never more");
    } finally {
      await stopAll(procs);
      await admin.end();
      for (const db of dbs) await db.drop();
    }
  },
});

Deno.test({
  name: "cluster workers: per database active, queued, quota and oldest wait, and who leads, read from any instance",
  ...dbTest,
  fn: async () => {
    let now = Date.now();
    const settings = { maxWorkers: 2, perDatabaseQuota: 0 };
    const a = await startTestService({ settings, extraDatabases: 1, clock: { now: () => new Date(now) } });
    const dbNames = [a.db.name, a.databases[0]!];
    try {
      const second = connect(urlForDatabase(a.db.serverUrl, dbNames[1]!), { max: 1 });
      for (const [name, sql] of [[dbNames[0]!, a.db.sql], [dbNames[1]!, second]] as const) {
        await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
        await sql`INSERT INTO src VALUES (1, 0)`;
        await sql`CREATE FUNCTION nap(v int) RETURNS int LANGUAGE plpgsql AS
          $$ BEGIN IF v > 0 THEN PERFORM pg_sleep(0.5); END IF; RETURN v; END $$`;
        const ctx = a.engine.db(name);
        for (let n = 0; n < 3; n++) {
          await createStreamTable(ctx, {
            name: { schema: "public", name: `slow_${n}` },
            query: "SELECT id, nap(v) AS v FROM src",
            schedule: "1s",
            refreshMode: "FULL",
            freshnessDeadlineMs: null,
          });
        }
        await sql`UPDATE src SET v = 1`;
      }
      await second.end();
      now += 5000;
      await a.engine.scheduler.tick();
      let seen: ClusterWorkers | null = null;
      assert.ok(
        await eventually(async () => {
          seen = await a.engine.scheduler.clusterWorkers();
          return seen.workers_active === 2 && seen.workers_queued === 4;
        }, 3000),
        `two running, four queued: ${JSON.stringify(seen)}`,
      );
      const w = seen!;
      assert.equal(w.max_workers, 2);
      assert.deepEqual(
        w.databases.map((d) => [d.db_name, d.workers_active, d.workers_queued, d.quota]).sort(),
        [
          [dbNames[0], 1, 2, 1],
          [dbNames[1], 1, 2, 1],
        ].sort(),
        "the fair share is one worker each while both have work",
      );
      for (const d of w.databases) {
        assert.equal(d.quota_utilization_pct, 100);
        assert.ok(d.oldest_queued_wait_ms !== null && d.oldest_queued_wait_ms >= 0);
      }
      assert.deepEqual(
        w.leaders.map((l) => [l.db_name, l.instance]).sort(),
        [
          [dbNames[0], `trickle:${Deno.pid}`],
          [dbNames[1], `trickle:${Deno.pid}`],
        ].sort(),
      );
      assert.deepEqual(w.instances, [{ instance: `trickle:${Deno.pid}`, max_workers: 2, per_database_quota: 0 }]);
      await a.engine.scheduler.idle();
      const after = await a.engine.scheduler.clusterWorkers();
      assert.equal(after.workers_active + after.workers_queued, 0, "all done, nothing left behind");
    } finally {
      await a.close();
    }
  },
});
