/**
 * The service's sessions ended under it (an administrator's pg_terminate_backend, a failover, a pooler restart): the
 * process keeps running, takes its leadership and worker markers back, and keeps refreshing. postgres.js 3.4.9 ends
 * the whole process when a reserved connection whose server process died is queried twice (porsager/postgres#1208),
 * which the leader lock, the worker markers and the run slots once used.
 */
import assert from "node:assert/strict";
import type { Sql } from "../db/pool.ts";
import { LEADER_LOCK } from "../engine/scheduler/leadership.ts";
import { freshDatabase } from "./support/db.ts";
import { eventually, postJson, type ServiceProcess, spawnService, stopAll } from "./support/process.ts";
import { dbTest } from "./support/service.ts";
import { one } from "./support/rows.ts";

/** Ends every session of the service process `pid`, in every database; returns how many. */
async function terminateAll(sql: Sql, pid: number): Promise<number> {
  const rows = await sql<{ n: number }[]>`
    SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
    WHERE application_name = ${`trickle:${pid}`} OR application_name LIKE ${`trickle:${pid}:%`}`;
  return one(rows).n;
}

async function leads(sql: Sql, pid: number): Promise<boolean> {
  const rows = await sql`
    SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.objid = ${LEADER_LOCK} AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND a.application_name = ${`trickle:${pid}`}`;
  return rows.length === 1;
}

Deno.test({
  name: "every session of the service terminated, twice: it keeps serving, leads again and keeps refreshing",
  ...dbTest,
  fn: async () => {
    const db = await freshDatabase();
    const procs: ServiceProcess[] = [];
    try {
      await db.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      // The coordination database is the test's own: its markers are the ones ended below.
      const svc = await spawnService({
        databaseUrl: db.url,
        env: { TRICKLE_COORDINATION_DATABASE: db.name, TRICKLE_SCHEDULER_INTERVAL_MS: "100" },
      });
      procs.push(svc);
      const created = await postJson(svc, "/stream-tables", {
        name: "totals",
        query: "SELECT count(*) AS n, sum(v) AS s FROM src",
        schedule: "1s",
      });
      assert.equal(created.status, 201, await created.text());
      assert.ok(await eventually(() => leads(db.sql, svc.pid), 5000), "it leads");

      let exited = false;
      svc.status.then(() => (exited = true));
      for (let round = 1; round <= 2; round++) {
        await db.sql`INSERT INTO src VALUES (${round}, ${round * 10})`;
        assert.ok(await terminateAll(db.sql, svc.pid) > 0, `round ${round}: sessions to end`);
        // Several ticks: each queries the ended sessions again.
        await new Promise((r) => setTimeout(r, 700));
        assert.equal(exited, false, `round ${round}: the process is still running\n${svc.log().slice(-3000)}`);
        assert.ok(
          await eventually(() => leads(db.sql, svc.pid), 5000),
          `round ${round}: it leads again\n${svc.log().slice(-3000)}`,
        );
        assert.ok(
          await eventually(async () => {
            const [row] = await db.sql<{ n: number }[]>`SELECT n::int AS n FROM totals`;
            return row?.n === round;
          }, 5000),
          `round ${round}: the stream table caught up with the source`,
        );
        const health = await fetch(`${svc.url}/health`);
        assert.equal(health.status, 200, await health.text());
      }
    } finally {
      await stopAll(procs);
      await db.drop();
    }
  },
});

Deno.test({
  name: "sessions ended in the middle of a refresh: the request fails, the process lives, the next refresh works",
  ...dbTest,
  fn: async () => {
    const db = await freshDatabase();
    const procs: ServiceProcess[] = [];
    try {
      await db.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await db.sql`INSERT INTO src VALUES (1, 1)`;
      // A defining query that holds its refresh for a while when asked to (a settings table switches it).
      await db.sql`CREATE TABLE slow (seconds float8 NOT NULL)`;
      await db.sql`INSERT INTO slow VALUES (0)`;
      await db.sql`CREATE FUNCTION nap(v int) RETURNS int LANGUAGE sql VOLATILE AS
        'SELECT v FROM (SELECT pg_sleep((SELECT seconds FROM slow))) s'`;
      const svc = await spawnService({
        databaseUrl: db.url,
        env: { TRICKLE_COORDINATION_DATABASE: db.name },
      });
      procs.push(svc);
      const created = await postJson(svc, "/stream-tables", {
        name: "napping",
        query: "SELECT id, nap(v) AS v FROM src",
        schedule: "1d",
        refresh_mode: "FULL",
      });
      assert.equal(created.status, 201, await created.text());
      let exited = false;
      svc.status.then(() => (exited = true));
      for (let round = 1; round <= 3; round++) {
        await db.sql`UPDATE slow SET seconds = 3`;
        await db.sql`UPDATE src SET v = v + 1`;
        const refreshing = postJson(svc, "/stream-tables/napping/refresh");
        assert.ok(
          await eventually(async () =>
            (await db.sql`
              SELECT 1 FROM pg_stat_activity WHERE application_name = ${`trickle:${svc.pid}`}
                AND query LIKE '%nap(v)%' AND state = 'active'`).length > 0, 5000),
          `round ${round}: the refresh is running`,
        );
        assert.ok(await terminateAll(db.sql, svc.pid) > 0);
        const res = await refreshing.catch(async (e) => {
          // The log to its end: a process that died has written why by the time its exit is seen.
          await Promise.race([svc.status, new Promise((r) => setTimeout(r, 2000))]);
          throw new Error(`round ${round}: no answer (${e}); the service's log:\n${svc.log().slice(-4000)}`);
        });
        const text = await res.text();
        assert.ok(res.status >= 500, `round ${round}: the cut refresh is not reported done: ${res.status} ${text}`);
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(exited, false, `round ${round}: the process is still running\n${svc.log().slice(-3000)}`);
        await db.sql`UPDATE slow SET seconds = 0`;
        const again = await postJson(svc, "/stream-tables/napping/refresh");
        assert.equal(again.status, 200, await again.text());
        const [row] = await db.sql<{ v: number }[]>`SELECT v FROM napping`;
        assert.equal(row!.v, 1 + round, `round ${round}: the next refresh brought the change`);
      }
    } finally {
      await stopAll(procs);
      await db.drop();
    }
  },
});
