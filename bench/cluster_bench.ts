/**
 * Cluster-wide worker fairness (docs/SCALING.md, "Cluster-wide worker fairness"): three databases on one engine with
 * `max_workers` 4, one busy (200 stream tables due every second, far more than 4 workers can refresh) and two quiet
 * (5 each), their sources written every 100 ms so each refresh has work (FULL, its query sleeping REFRESH_SLEEP_S).
 * For BENCH_CLUSTER_SECONDS (default 60) the scheduler runs; then, from the refresh history and from the worker summary
 * sampled every 50 ms:
 *
 * 1. each quiet database's refresh delay, from due (the previous refresh's start + its schedule) to started, p95,
 *    against two scheduler ticks;
 * 2. the use of max_workers over the run (the summary's workers_active / max_workers, mean of the samples): the idle
 *    share against the whole, goal at most 10 % idle, so the busy database takes what the quiet ones leave;
 * 3. the share of refreshes per database (in the second figure's description).
 */
import type { Sql } from "../db/pool.ts";
import { percentile } from "../engine/cost_model.ts";
import { createStreamTable } from "../engine/stream_tables.ts";
import { startTestService, type TestService } from "../tests/support/service.ts";
import type { BenchOptions, Figure } from "./support.ts";

const MAX_WORKERS = 4;
const TICK_MS = 250;
const BUSY_TABLES = 200;
const QUIET_TABLES = 5;
const REFRESH_SLEEP_S = 0.05;
const SCHEDULE_MS = 1000;

/** How long the scheduler runs, in seconds: BENCH_CLUSTER_SECONDS, default 60 (10 is enough for a quick look). */
function durationSeconds(): number {
  const v = Number(Deno.env.get("BENCH_CLUSTER_SECONDS") ?? "60");
  if (!Number.isFinite(v) || v < 5) throw new Error(`BENCH_CLUSTER_SECONDS should be 5 or more, got "${v}"`);
  return v;
}

/** Runs the cluster benchmark; returns its figures. */
export async function runClusterBench(opts: BenchOptions): Promise<Figure[]> {
  const seconds = durationSeconds();
  const svc = await startTestService({
    settings: { maxWorkers: MAX_WORKERS, perDatabaseQuota: 0, schedulerIntervalMs: TICK_MS },
    extraDatabases: 2,
  });
  const names = [svc.db.name, ...svc.databases];
  const counts = [BUSY_TABLES, QUIET_TABLES, QUIET_TABLES];
  let writing = true;
  const writers: Promise<void>[] = [];
  try {
    for (const [i, name] of names.entries()) {
      const sql = svc.engine.db(name).sql;
      await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await sql`INSERT INTO src VALUES (1, 0)`;
      // The bench's own literal, no outside input.
      await sql.unsafe(`CREATE FUNCTION nap(v int) RETURNS int LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(${REFRESH_SLEEP_S}); RETURN v; END $$`);
      opts.progress(`cluster: creating ${counts[i]} stream tables in ${i === 0 ? "the busy" : "a quiet"} database`);
      for (let n = 0; n < counts[i]!; n++) {
        await createStreamTable(svc.engine.db(name), {
          name: { schema: "public", name: `st_${n}` },
          query: "SELECT id, nap(v) AS v FROM src",
          schedule: `${SCHEDULE_MS / 1000}s`,
          refreshMode: "FULL",
          freshnessDeadlineMs: null,
        });
      }
      writers.push((async () => {
        while (writing) {
          await sql`UPDATE src SET v = v + 1`;
          await new Promise((r) => setTimeout(r, 100));
        }
      })());
    }
    const from = new Date();
    opts.progress(`cluster: running the scheduler for ${seconds} s (max_workers ${MAX_WORKERS}, tick ${TICK_MS} ms)`);
    svc.engine.scheduler.start();
    const samples = await sampleUse(svc, seconds * 1000);
    await svc.engine.scheduler.stop(5_000);
    const to = new Date();
    writing = false;
    await Promise.all(writers);
    return await figures(svc, opts, { names, from, to, samples, seconds });
  } finally {
    writing = false;
    await Promise.allSettled(writers);
    await svc.close();
  }
}

/** workers_active / max_workers from the worker summary, every 50 ms for `ms`. */
async function sampleUse(svc: TestService, ms: number): Promise<number[]> {
  const out: number[] = [];
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const w = await svc.engine.scheduler.clusterWorkers();
    if (w.max_workers > 0) out.push(w.workers_active / w.max_workers);
    await new Promise((r) => setTimeout(r, 50));
  }
  return out;
}

async function figures(
  svc: TestService,
  opts: BenchOptions,
  run: { names: string[]; from: Date; to: Date; samples: number[]; seconds: number },
): Promise<Figure[]> {
  const out: Figure[] = [];
  const refreshes: number[] = [];
  for (const [i, name] of run.names.entries()) {
    const sql = svc.engine.db(name).sql;
    refreshes.push(await scheduled(sql, run.from, run.to));
    if (i === 0) continue;
    const delays = await delaysMs(sql, run.from, run.to);
    out.push({
      name: `cluster: quiet database ${i} refresh delay, due -> started, p95 (${delays.length} refreshes)`,
      measuredMs: delays.length === 0 ? Infinity : percentile(delays, 0.95),
      baselineMs: 2 * TICK_MS,
      baseline: `two scheduler ticks (${TICK_MS} ms each); busy database: ${BUSY_TABLES} stream tables due every ` +
        `${SCHEDULE_MS} ms, max_workers ${MAX_WORKERS}`,
      goal: { kind: "ratio", max: 1 },
      runs: delays.length,
    });
  }
  const use = run.samples.reduce((s, v) => s + v, 0) / Math.max(1, run.samples.length);
  const capacityMs = MAX_WORKERS * run.seconds * 1000;
  const total = refreshes.reduce((s, n) => s + n, 0);
  const share = (i: number) => `${(100 * refreshes[i]! / Math.max(1, total)).toFixed(1)} %`;
  const shares = `refreshes per database: ` +
    run.names.map((_, i) => `${i === 0 ? "busy" : `quiet ${i}`} ${refreshes[i]} (${share(i)})`).join(", ") +
    `; ${(total / run.seconds).toFixed(1)} refreshes/s`;
  opts.progress(`cluster: ${shares}`);
  out.push({
    name: `cluster: max_workers left idle while the busy database has work (${(use * 100).toFixed(1)} % used)`,
    measuredMs: (1 - use) * capacityMs,
    baselineMs: capacityMs,
    baseline: `max_workers x the run (${MAX_WORKERS} x ${run.seconds} s), use sampled from /cluster/workers ` +
      `every 50 ms; ${shares}`,
    goal: { kind: "ratio", max: 0.1 },
    runs: run.samples.length,
  });
  return out;
}

/** Scheduled refreshes that started in the run. */
async function scheduled(sql: Sql, from: Date, to: Date): Promise<number> {
  const [row] = await sql<{ n: number }[]>`
    SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history
    WHERE initiated_by = 'SCHEDULER' AND started_at BETWEEN ${from} AND ${to}`;
  return row!.n;
}

/**
 * Due -> started of each scheduled refresh after the first of its stream table: a refresh makes its stream table due
 * again at its own start + the schedule (engine/refresh/refresh.ts), so the next start minus that is the delay.
 */
async function delaysMs(sql: Sql, from: Date, to: Date): Promise<number[]> {
  const rows = await sql<{ ms: number }[]>`
    SELECT extract(epoch FROM started_at - (prev + ${SCHEDULE_MS} * interval '1 millisecond')) * 1000 AS ms
    FROM (
      SELECT started_at, lag(started_at) OVER (PARTITION BY pgt_id ORDER BY started_at) AS prev
      FROM pgtrickle.pgt_refresh_history
      WHERE initiated_by = 'SCHEDULER' AND started_at BETWEEN ${from} AND ${to}
    ) h
    WHERE prev IS NOT NULL`;
  return rows.map((r) => Math.max(0, Number(r.ms)));
}
