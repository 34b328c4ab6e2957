/**
 * The service as operators run it: real processes on one cluster. Two instances: only the leader refreshes, the
 * standby takes over when the leader dies. Signals: SIGTERM finishes what runs and exits cleanly; a crash (SIGKILL)
 * mid-refresh leaves the last committed state.
 */
import assert from "node:assert/strict";
import { connect, type Sql } from "../db/pool.ts";
import { freshDatabase } from "./support/db.ts";
import {
  eventually,
  launchService,
  logLines,
  postJson,
  type ServiceProcess,
  spawnService,
  stopAll,
} from "./support/process.ts";
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
      const created = await postJson(a, "/stream-tables", {
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
      const created = await postJson(svc, "/stream-tables", {
        name: "slow",
        query,
        schedule: "1d",
        refresh_mode: "FULL",
      });
      assert.equal(created.status, 201, await created.text());
      const frontier0 =
        one(await db.sql<{ f: string }[]>`SELECT frontier::text AS f FROM pgtrickle.pgt_stream_tables`).f;

      // SIGTERM while a manual refresh runs: the refresh completes and commits, the process exits 0.
      await db.sql`UPDATE src SET v = v + 100 WHERE id <= 5`;
      const refreshing = postJson(svc, "/stream-tables/slow/refresh", {}).catch((e) => e);
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
      const doomed = postJson(svc2, "/stream-tables/slow/refresh", {}).catch((e) => e);
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
      const r = await postJson(svc3, "/stream-tables/slow/refresh", {});
      assert.equal(r.status, 200, await r.text());
      const n = one(await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM slow WHERE v > 1000`).n;
      assert.equal(n, 5);
    } finally {
      await stopAll(procs);
      await db.drop();
    }
  },
});

Deno.test({
  name: "a standby stops within 2 s of SIGTERM and exits 0, also when the leader took its embedded server down",
  ...dbTest,
  fn: async () => {
    const dataDir = await Deno.makeTempDir({ prefix: "trickle-standby-" });
    await Deno.chmod(dataDir, 0o755); // as root, the embedded server's OS user must reach it
    const procs: ServiceProcess[] = [];
    let sql: Sql | null = null;
    try {
      // The first instance runs the embedded server; the second uses it by its URL, as operators do.
      const first = await spawnService({ env: { TRICKLE_DATA_DIR: dataDir } });
      procs.push(first);
      const url = (await Deno.readTextFile(`${dataDir}/database_url`)).trim();
      sql = connect(url, { max: 1, applicationName: "test" });
      assert.ok(await eventually(async () => (await leaderPid(sql!)) === first.pid, 5000), "the first one leads");
      const standby = await spawnService({ databaseUrl: url });
      procs.push(standby);
      await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      const created = await postJson(standby, "/stream-tables", {
        name: "totals",
        query: "SELECT sum(v) AS s FROM src",
      });
      assert.equal(created.status, 201, standby.log());
      await new Promise((r) => setTimeout(r, 600)); // a few scheduler ticks: each tries for the leader lock
      assert.equal(await leaderPid(sql), first.pid, "the second one stands by");

      // Ordinary case: the server is up.
      const second = await spawnService({ databaseUrl: url });
      procs.push(second);
      await new Promise((r) => setTimeout(r, 600));
      let t0 = Date.now();
      second.kill("SIGTERM");
      assert.equal((await second.status).code, 0, second.log());
      assert.ok(Date.now() - t0 < 2000, `a standby took ${Date.now() - t0} ms to stop`);

      // The leader stops, and its embedded server with it: the standby's connections fail from then on.
      await sql.end();
      sql = null;
      first.kill("SIGTERM");
      assert.equal((await first.status).code, 0, first.log());
      await new Promise((r) => setTimeout(r, 1000)); // the standby's ticks now fail to connect
      t0 = Date.now();
      standby.kill("SIGTERM");
      const status = await standby.status;
      const ms = Date.now() - t0;
      assert.equal(status.code, 0, standby.log());
      assert.ok(ms < 2000, `the standby took ${ms} ms to stop`);
      assert.equal(logLines(standby, "stopped").length, 1, standby.log());
    } finally {
      await sql?.end();
      await stopAll(procs);
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "a taken HTTP port fails the start at once with PortInUse, before the embedded server is set up",
  ...dbTest,
  fn: async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    const dataDir = await Deno.makeTempDir({ prefix: "trickle-port-" });
    await Deno.chmod(dataDir, 0o755); // as root, the embedded server's OS user must reach it
    try {
      const t0 = Date.now();
      const proc = await launchService({ port, env: { TRICKLE_DATA_DIR: dataDir } });
      const status = await proc.status;
      const ms = Date.now() - t0;
      assert.equal(status.code, 1, proc.log());
      const [line] = logLines(proc, "could not listen");
      const error = line?.error as { code?: string; message?: string } | undefined;
      assert.equal(error?.code, "PortInUse", proc.log());
      assert.match(error?.message ?? "", new RegExp(`Port ${port} on 127\\.0\\.0\\.1`));
      assert.ok(ms < 1500, `the start took ${ms} ms to fail`);
      const created = [...Deno.readDirSync(dataDir)].map((e) => e.name);
      assert.deepEqual(created, [], "nothing was set up in the data directory");
    } finally {
      listener.close();
      await Deno.remove(dataDir, { recursive: true });
    }
  },
});
