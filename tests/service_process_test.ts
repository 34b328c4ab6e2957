/**
 * The service as operators run it: real processes on one cluster. Two instances: only the leader refreshes, the
 * standby takes over when the leader dies. Signals: SIGTERM finishes what runs and exits cleanly; a crash (SIGKILL)
 * mid-refresh leaves the last committed state.
 */
import assert from "node:assert/strict";
import type { Sql } from "../db/pool.ts";
import { freshDatabase } from "./support/db.ts";
import { eventually, type ServiceProcess, spawnService } from "./support/process.ts";
import { dbTest } from "./support/service.ts";
import { one } from "./support/rows.ts";

const LEADER_LOCK = 7_417_003;

/** The pid of the service process holding the database's scheduler lock, from its application_name. */
async function leaderPid(sql: Sql): Promise<number | null> {
  const rows = await sql<{ app: string }[]>`
    SELECT a.application_name AS app FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.objid = ${LEADER_LOCK} AND l.granted AND l.database =
      (SELECT oid FROM pg_database WHERE datname = current_database())`;
  const m = rows.length === 1 ? /^trickle:(\d+)$/.exec(rows[0]!.app) : null;
  return m === null ? null : Number(m[1]);
}

async function refreshesBy(sql: Sql, pid: number): Promise<number> {
  return one(
    await sql<{ n: number }[]>`
    SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history
    WHERE initiated_by = 'SCHEDULER' AND instance = ${"trickle:" + pid}`,
  ).n;
}

/** Kills whatever is still running of `procs` and waits for each to exit. */
async function stopAll(procs: ServiceProcess[]): Promise<void> {
  for (const p of procs) {
    try {
      p.kill("SIGKILL");
    } catch {
      // already gone
    }
    await p.status;
  }
}

async function post(proc: ServiceProcess, path: string, body: unknown): Promise<Response> {
  return await fetch(proc.url + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

Deno.test({
  name: "two instances: one leads and refreshes, the other takes over when it dies",
  ...dbTest,
  fn: async () => {
    const db = await freshDatabase();
    const procs: ServiceProcess[] = [];
    try {
      await db.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await db.sql`INSERT INTO src SELECT i, i FROM generate_series(1, 10) i`;
      procs.push(await spawnService({ databaseUrl: db.url }));
      procs.push(await spawnService({ databaseUrl: db.url }));
      const [a, b] = procs as [ServiceProcess, ServiceProcess];
      const created = await post(a, "/stream-tables", {
        name: "totals",
        query: "SELECT sum(v) AS s FROM src",
        schedule: "1s",
      });
      assert.equal(created.status, 201, await created.text());

      assert.ok(await eventually(async () => (await leaderPid(db.sql)) !== null, 5000), "someone leads");
      const leader = (await leaderPid(db.sql))!;
      const standby = leader === a.pid ? b : a;
      const leaderProc = leader === a.pid ? a : b;
      assert.ok(await eventually(async () => (await refreshesBy(db.sql, leader)) >= 2, 5000), "the leader refreshes");
      assert.equal(await refreshesBy(db.sql, standby.pid), 0, "the standby does not");

      leaderProc.kill("SIGKILL");
      await leaderProc.status;
      const t0 = Date.now();
      assert.ok(
        await eventually(async () => (await leaderPid(db.sql)) === standby.pid, 10_000),
        "the standby takes over",
      );
      await db.sql`INSERT INTO src VALUES (11, 1000)`;
      assert.ok(
        await eventually(
          async () => one(await db.sql<{ s: number }[]>`SELECT s::int AS s FROM totals`).s === 1055,
          5000,
        ),
        "the new leader keeps the stream table fresh",
      );
      assert.ok(Date.now() - t0 < 10_000, "within a few seconds");
      assert.ok((await refreshesBy(db.sql, standby.pid)) >= 1);
    } finally {
      await stopAll(procs);
      await db.drop();
    }
  },
});

Deno.test({
  name: "SIGTERM during a refresh finishes it and exits 0; SIGKILL mid-refresh leaves the last committed state",
  ...dbTest,
  fn: async () => {
    const db = await freshDatabase();
    const procs: ServiceProcess[] = [];
    try {
      await db.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await db.sql`INSERT INTO src SELECT i, i FROM generate_series(1, 10) i`;
      const svc = await spawnService({ databaseUrl: db.url });
      procs.push(svc);
      // Each refresh of this stream table takes about 1.5 s (pg_sleep in a one-row cross join).
      const query = "SELECT s.id, s.v FROM src s CROSS JOIN (SELECT pg_sleep(1.5) AS z) z";
      const created = await post(svc, "/stream-tables", { name: "slow", query, schedule: "1d", refresh_mode: "FULL" });
      assert.equal(created.status, 201, await created.text());
      const frontier0 =
        one(await db.sql<{ f: string }[]>`SELECT frontier::text AS f FROM pgtrickle.pgt_stream_tables`).f;

      // SIGTERM while a manual refresh runs: the refresh completes and commits, the process exits 0.
      await db.sql`UPDATE src SET v = v + 100 WHERE id <= 5`;
      const refreshing = post(svc, "/stream-tables/slow/refresh", {}).catch((e) => e);
      await new Promise((r) => setTimeout(r, 500));
      svc.kill("SIGTERM");
      const status = await svc.status;
      assert.equal(status.code, 0, svc.log());
      const answer = await refreshing;
      assert.ok(answer instanceof Response && answer.status === 200, "the running request was answered");
      const after = one(
        await db.sql<{ f: string; n: number }[]>`
        SELECT frontier::text AS f, (SELECT count(*)::int FROM slow WHERE v > 100) AS n FROM pgtrickle.pgt_stream_tables`,
      );
      assert.notEqual(after.f, frontier0);
      assert.equal(after.n, 5, "the refresh committed whole");

      // SIGKILL while a refresh runs: nothing of it is committed, the content and frontier are the previous ones.
      const svc2 = await spawnService({ databaseUrl: db.url });
      procs.push(svc2);
      await db.sql`UPDATE src SET v = v + 1000 WHERE id > 5`;
      const doomed = post(svc2, "/stream-tables/slow/refresh", {}).catch((e) => e);
      await new Promise((r) => setTimeout(r, 500));
      svc2.kill("SIGKILL");
      await svc2.status;
      await doomed;
      // The server rolls the transaction back when the connection drops.
      assert.ok(
        await eventually(async () =>
          one(
            await db.sql<{ n: number }[]>`
            SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${"trickle:" + svc2.pid}`,
          ).n === 0, 5000),
      );
      const crashed = one(
        await db.sql<{ f: string; n: number }[]>`
        SELECT frontier::text AS f, (SELECT count(*)::int FROM slow WHERE v > 1000) AS n FROM pgtrickle.pgt_stream_tables`,
      );
      assert.equal(crashed.f, after.f, "the frontier is the last committed one");
      assert.equal(crashed.n, 0, "no row of the killed refresh is visible");

      // A new instance catches up exactly.
      const svc3 = await spawnService({ databaseUrl: db.url });
      procs.push(svc3);
      const r = await post(svc3, "/stream-tables/slow/refresh", {});
      assert.equal(r.status, 200, await r.text());
      const n = one(await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM slow WHERE v > 1000`).n;
      assert.equal(n, 5);
    } finally {
      await stopAll(procs);
      await db.drop();
    }
  },
});
