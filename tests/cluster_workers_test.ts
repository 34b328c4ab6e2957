/**
 * The cluster worker summary against what the server really runs: three databases whose stream tables hold a worker
 * (pg_sleep), many due at once. Sampled while they run, the summary's active and queued per database match the
 * refreshes in pg_stat_activity and the jobs waiting; no database runs over its quota while another waits under its
 * own; the cluster never runs more than max_workers; a second service instance answers the same. Then the busy database
 * borrows the quiet ones' workers, and gives them back within one refresh once they have work again.
 */
import assert from "node:assert/strict";
import { connect, type Sql, urlForDatabase } from "../db/pool.ts";
import type { ClusterWorkers } from "../engine/scheduler/pool.ts";
import { createStreamTable } from "../engine/stream_tables.ts";
import { type ServiceProcess, spawnService } from "./support/process.ts";
import { dbTest, startTestService, type TestService } from "./support/service.ts";

const SLEEP_S = 2;
/**
 * Stream tables per database: more than the quota in each, so every database has work waiting at first; the first
 * has the most, so it is still busy when the others are done and borrows their workers.
 */
const TABLES = [10, 3, 3];

/** Three managed databases, each with `count` stream tables whose refresh sleeps SLEEP_S while src.v > 0. */
async function setUp(svc: TestService, names: string[]): Promise<Sql[]> {
  const sqls = names.map((n) => connect(urlForDatabase(svc.db.serverUrl, n), { max: 2, applicationName: "test" }));
  for (const [i, sql] of sqls.entries()) {
    await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
    await sql`INSERT INTO src VALUES (1, 0)`;
    await sql.unsafe(`CREATE FUNCTION nap(v int) RETURNS int LANGUAGE plpgsql AS
      $$ BEGIN IF v > 0 THEN PERFORM pg_sleep(${SLEEP_S}); END IF; RETURN v; END $$`);
    for (let n = 0; n < TABLES[i]!; n++) {
      await createStreamTable(svc.engine.db(names[i]!), {
        name: { schema: "public", name: `slow_${n}` },
        query: "SELECT id, nap(v) AS v FROM src",
        schedule: "1s",
        refreshMode: "FULL",
        freshnessDeadlineMs: null,
      });
    }
  }
  return sqls;
}

/**
 * The summary and the refreshes sleeping per database, read in one transaction: one pg_stat_activity snapshot. The
 * functions are called without naming the coordination database: they find it from the current database's leader.
 */
async function sample(sql: Sql, names: string[]) {
  return await sql.begin(async (tx) => {
    const rows = await tx<{ db_name: string; workers_active: number; workers_queued: number; quota: number }[]>`
      SELECT db_name, workers_active, workers_queued, quota FROM pgtrickle.cluster_worker_summary()`;
    const sleeping = await tx<{ db: string; n: number }[]>`
      SELECT datname AS db, count(*)::int AS n FROM pg_stat_activity
      WHERE wait_event = 'PgSleep' AND datname = ANY(${names}) GROUP BY datname`;
    const [total] = await tx<{ max_workers: number }[]>`
      SELECT max_workers FROM pgtrickle.cluster_worker_totals()`;
    // Who sleeps and which markers exist, in the same snapshot: said when the two disagree.
    const who = await tx<{ line: string }[]>`
      SELECT datname || ' ' || application_name || ' ' || coalesce(wait_event, state) || ' ' || left(query, 60) AS line
      FROM pg_stat_activity WHERE (wait_event = 'PgSleep' AND datname = ANY(${names}))
        OR application_name LIKE 'trickle:%:run:%'`;
    return {
      who: who.map((w) => w.line),
      at: Date.now(),
      rows: new Map(rows.map((r) => [r.db_name, r])),
      sleeping: new Map(sleeping.map((r) => [r.db, r.n])),
      maxWorkers: total!.max_workers,
    };
  });
}

/** What must agree between two answers (the oldest wait grows with the clock, so it is left out). */
function stable(w: ClusterWorkers) {
  return {
    databases: w.databases.map((d) => [d.db_name, d.workers_active, d.workers_queued, d.quota, d.leader]),
    totals: [w.workers_active, w.workers_queued, w.max_workers, w.quota],
    instances: w.instances.map((i) => i.instance).sort(),
    leaders: w.leaders.map((l) => [l.db_name, l.instance]),
  };
}

Deno.test({
  name: "cluster workers: three databases, many due at once; the summary matches what runs, quotas and max hold",
  ...dbTest,
  fn: async () => {
    let now = Date.now();
    const svc = await startTestService({
      settings: { maxWorkers: 4, perDatabaseQuota: 0 },
      extraDatabases: 2,
      clock: { now: () => new Date(now) },
    });
    const names = [svc.db.name, ...svc.databases];
    let sqls: Sql[] = [];
    let second: ServiceProcess | null = null;
    try {
      sqls = await setUp(svc, names);
      // This instance leads every database before the second one starts, which then stands by.
      await svc.engine.scheduler.tick();
      second = await spawnService({
        databaseUrl: svc.db.serverUrl,
        env: {
          TRICKLE_DATABASES: names.join(","),
          TRICKLE_MAX_WORKERS: "4",
          TRICKLE_COORDINATION_DATABASE: svc.db.name,
        },
      });
      for (const sql of sqls) await sql`UPDATE src SET v = 1`;
      now += 5000; // every stream table is due at once
      await svc.engine.scheduler.tick();

      const samples: Awaited<ReturnType<typeof sample>>[] = [];
      const local: Map<string, number>[] = [];
      let compared = false;
      /** When the quiet databases got work again while the busy one borrowed their workers. */
      let returnedAt: number | null = null;
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline) {
        const s = await sample(sqls[2]!, names);
        samples.push(s);
        local.push(new Map(svc.engine.scheduler.workers().map((w) => [w.db_name, w.workers_queued])));
        const active = [...s.rows.values()].reduce((n, r) => n + r.workers_active, 0);
        const queued = [...s.rows.values()].reduce((n, r) => n + r.workers_queued, 0);
        if (!compared && active === 4 && queued > 0) {
          // Both instances, at a moment when nothing changes (a refresh lasts SLEEP_S): the same numbers.
          for (let attempt = 0; attempt < 10 && !compared; attempt++) {
            const mine = await (await svc.request("GET", "/cluster/workers")).json() as ClusterWorkers;
            const theirs = await (await fetch(`${second.url}/cluster/workers`)).json() as ClusterWorkers;
            const again = await (await svc.request("GET", "/cluster/workers")).json() as ClusterWorkers;
            if (JSON.stringify(stable(mine)) !== JSON.stringify(stable(again))) continue; // changed meanwhile
            assert.deepEqual(stable(theirs), stable(mine), "the second instance answers the same");
            assert.equal(theirs.instances.length, 2, "both instances are listed");
            assert.ok(theirs.leaders.every((l) => l.instance === `trickle:${Deno.pid}`), "the first leads all");
            compared = true;
          }
        }
        const busiest = s.rows.get(names[0]!);
        if (
          returnedAt === null && busiest !== undefined && busiest.workers_active > busiest.quota &&
          names.slice(1).every((n) => (s.rows.get(n)?.workers_queued ?? 0) === 0)
        ) {
          now += 5000; // the quiet databases' stream tables are due again (and the busy one's refreshed ones)
          await svc.engine.scheduler.tick();
          returnedAt = Date.now();
        }
        if (active === 0 && queued === 0 && samples.length > 5) break;
        await new Promise((r) => setTimeout(r, 40));
      }
      assert.ok(compared, "the two instances were compared while the refreshes ran");
      assert.ok(returnedAt !== null, "the busy database borrowed the workers the quiet ones left");

      // Every refresh ran: each stream table refreshed by the scheduler, slowly.
      for (const [i, sql] of sqls.entries()) {
        const [row] = await sql<{ n: number }[]>`
          SELECT count(DISTINCT pgt_id)::int AS n FROM pgtrickle.pgt_refresh_history
          WHERE initiated_by = 'SCHEDULER' AND status = 'SUCCESS' AND duration_ms >= ${SLEEP_S * 1000}`;
        assert.equal(row!.n, TABLES[i], `every stream table of ${names[i]} refreshed`);
      }

      const busy = samples.filter((s) => [...s.rows.values()].some((r) => r.workers_active > 0));
      assert.ok(busy.length >= 20, `sampled while refreshes ran (${busy.length} samples)`);
      let activeExact = 0;
      let queuedExact = 0;
      /** Since when a database has run over its quota while another waited under its own (after the return). */
      let overSince: number | null = null;
      let longestOverMs = 0;
      for (const [k, s] of samples.entries()) {
        const lending = s.at >= returnedAt!;
        let over = false;
        assert.equal(s.maxWorkers, 4);
        const activeTotal = [...s.rows.values()].reduce((n, r) => n + r.workers_active, 0);
        const sleepingTotal = [...s.sleeping.values()].reduce((n, v) => n + v, 0);
        assert.ok(activeTotal <= 4 && sleepingTotal <= 4, `never more than max_workers: ${activeTotal}`);
        let activeOk = true;
        let queuedOk = true;
        for (const name of names) {
          const r = s.rows.get(name);
          const active = r?.workers_active ?? 0;
          const sleeping = s.sleeping.get(name) ?? 0;
          // A refresh holds its worker marker from before its query starts until after it commits.
          assert.ok(
            sleeping <= active,
            `${name}: ${sleeping} refreshes sleeping, ${active} active in the summary:\n${s.who.join("\n")}`,
          );
          if (sleeping !== active) activeOk = false;
          if ((r?.workers_queued ?? 0) !== (local[k]!.get(name) ?? 0)) queuedOk = false;
          // No database runs over its quota while another has work waiting under its own.
          if (r !== undefined && r.workers_active > r.quota) {
            const starved = [...s.rows.values()].filter((o) =>
              o.db_name !== name && o.workers_queued > 0 && o.workers_active < o.quota
            );
            // Before the busy one borrowed, never; once it has, its borrowed refreshes finish before the quiet ones
            // get their workers back (refreshes are not interrupted), so at most one refresh long (below).
            if (!lending) {
              assert.deepEqual(starved.map((o) => o.db_name), [], `${name} runs ${r.workers_active} > ${r.quota}`);
            }
            if (starved.length > 0) over = true;
          }
        }
        overSince = over ? overSince ?? s.at : null;
        if (overSince !== null) longestOverMs = Math.max(longestOverMs, s.at - overSince);
        if (activeOk) activeExact++;
        if (queuedOk) queuedExact++;
      }
      // The refresh's own steps around its query (lock, checks, commit) and the queue's publication take a few
      // milliseconds each, so a sample may fall between; most must match exactly.
      assert.ok(activeExact >= samples.length * 0.75, `active matched in ${activeExact} of ${samples.length}`);
      assert.ok(queuedExact >= samples.length * 0.75, `queued matched in ${queuedExact} of ${samples.length}`);
      // The fair share while all three had work: each ran at least one, none more than ceil(4 / 3) = 2.
      const first = busy[0]!;
      assert.deepEqual(
        names.map((n) => first.rows.get(n)?.quota),
        [2, 2, 2],
        "the quota is the fair share of three databases",
      );
      // Every slot taken while all three have work waiting: each runs one or two (no database is left out).
      const contended = busy.filter((s) =>
        s.at < returnedAt! && [...s.rows.values()].reduce((n, r) => n + r.workers_active, 0) === 4 &&
        names.every((n) => (s.rows.get(n)?.workers_queued ?? 0) > 0)
      );
      assert.ok(contended.length > 0, "sampled while all three databases had work waiting");
      for (const s of contended) {
        const shares = names.map((n) => s.rows.get(n)?.workers_active ?? 0);
        assert.ok(shares.every((a) => a >= 1 && a <= 2), `every database has work waiting; running: ${shares}`);
      }
      // Borrowed workers go back as their refreshes end: none is given to the busy database while a quiet one waits.
      assert.ok(
        longestOverMs <= SLEEP_S * 1000 + 1000,
        `the busy database kept borrowed workers for ${longestOverMs} ms while another waited`,
      );
    } finally {
      if (second !== null) {
        second.kill("SIGTERM");
        await second.status;
      }
      for (const sql of sqls) await sql.end();
      await svc.close();
    }
  },
});

Deno.test({
  name: "cluster workers: an unknown database in the filter is 404 problem+json; a filter keeps that database; OpenAPI",
  ...dbTest,
  fn: async () => {
    const svc = await startTestService({ extraDatabases: 1 });
    try {
      await svc.engine.scheduler.tick(); // leads both databases: their rows exist
      for (const path of ["/cluster/workers?database=nope", "/cluster/summary?database=nope"]) {
        const r = await svc.request("GET", path);
        assert.equal(r.status, 404, path);
        assert.equal(r.headers.get("content-type"), "application/problem+json");
        const body = await r.json() as { code: string; detail: string };
        assert.equal(body.code, "DatabaseNotFound");
        assert.match(body.detail, /"nope"/);
      }
      const r = await svc.request("GET", `/cluster/workers?database=${svc.databases[0]}`);
      assert.equal(r.status, 200);
      const w = await r.json() as ClusterWorkers;
      assert.deepEqual(w.databases.map((d) => d.db_name), [svc.databases[0]]);
      assert.deepEqual(w.leaders.map((l) => l.db_name), [svc.databases[0]]);
      assert.deepEqual(w.databases.map((d) => d.quota), [2], "ceil(4 / 2)");
      const all = await (await svc.request("GET", "/cluster/workers")).json() as ClusterWorkers;
      assert.deepEqual(all.databases.map((d) => d.db_name).sort(), [svc.db.name, svc.databases[0]].sort());
      const doc = await (await svc.request("GET", "/openapi.json")).json() as { paths: Record<string, unknown> };
      for (const path of ["/cluster/workers", "/cluster/summary"]) assert.ok(path in doc.paths, `${path} documented`);
    } finally {
      await svc.close();
    }
  },
});

Deno.test({
  name: "cluster workers: the quota is per_database_quota when set; the instance is listed with its settings",
  ...dbTest,
  fn: async () => {
    const svc = await startTestService({ settings: { maxWorkers: 5, perDatabaseQuota: 3 }, extraDatabases: 2 });
    try {
      await svc.engine.scheduler.tick();
      const w = await svc.engine.scheduler.clusterWorkers();
      assert.equal(w.quota, 3);
      assert.deepEqual(w.databases.map((d) => d.quota), [3, 3, 3]);
      assert.deepEqual(w.instances, [{ instance: `trickle:${Deno.pid}`, max_workers: 5, per_database_quota: 3 }]);
      assert.equal(w.utilization_pct, 0);
    } finally {
      await svc.close();
    }
  },
});
