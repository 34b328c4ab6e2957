/**
 * The planner's figures (suite "planner"), each against a baseline measured in the same run:
 *
 * 1. a planner pass (read history, facts, rules, store every recommendation, alert checks) over 1,000 stream tables
 *    with 1,000 history rows each, goal under 2 s; the baseline is the pass's own read of that history alone;
 * 2. DIFFERENTIAL refresh latency while the planner runs as the service runs it (a tick every second: an alert pass
 *    over the stream tables with a deadline, and a full pass every planner interval, here 3 s), against
 *    the same refreshes with the planner idle; blocks alternate so load drifts fall on both sides. Goal ratio <= 1.1.
 */
import type { DatabaseContext } from "../engine/context.ts";
import { DEFAULT_PLANNING } from "../engine/engine.ts";
import { loadRules } from "../engine/planner/rules.ts";
import { HISTORY_WINDOW } from "../engine/planner/pass.ts";
import { refreshStreamTable } from "../engine/refresh/refresh.ts";
import { createStreamTable } from "../engine/stream_tables.ts";
import { startTestService, type TestService } from "../tests/support/service.ts";
import { type BenchOptions, exec, type Figure, median, timeMs } from "./support.ts";

const STREAM_TABLES = 1000;
const HISTORY_ROWS = 1000;
const PASS_RUNS = 5;
const BLOCKS = 10;
/** Each block refreshes for this long: several ticks, and (planner interval 3 s) a full pass in each. */
const BLOCK_MS = 3000;
const TICK_MS = 1000;
/** 20 times the default planner interval (60 s), so that every block with the planner holds a full pass. */
const PLANNER_INTERVAL_SECONDS = 3;

/** Runs both planner benchmarks on one fresh database and returns their figures. */
export async function runPlannerBench(opts: BenchOptions): Promise<Figure[]> {
  const svc = await startTestService({
    planning: {
      ...DEFAULT_PLANNING,
      rules: await loadRules(null),
      settings: { ...DEFAULT_PLANNING.settings, intervalSeconds: PLANNER_INTERVAL_SECONDS },
    },
  });
  try {
    const ctx = svc.engine.db();
    opts.progress(`planner: ${STREAM_TABLES} stream tables x ${HISTORY_ROWS} history rows`);
    await syntheticCatalog(ctx);
    return [...await passFigures(svc, opts), await latencyFigure(svc, opts)];
  } finally {
    await svc.close();
  }
}

/**
 * Catalog rows and history as a busy service would have them: half the stream tables with a deadline, a week of
 * refreshes every ten minutes, the costlier in office hours. They have no storage tables: the planner reads only the
 * catalog and history, so none are needed to measure it.
 */
async function syntheticCatalog(ctx: DatabaseContext): Promise<void> {
  await exec(
    ctx.sql,
    `INSERT INTO pgtrickle.pgt_stream_tables (pgt_relid, pgt_schema, pgt_name, defining_query, refresh_mode,
       effective_refresh_mode, schedule, freshness_deadline_ms, status, plan, last_refresh_at, next_due_at)
     SELECT (4000000000 - i)::oid, 'bench', 'st_' || i, 'SELECT 1', 'DIFFERENTIAL', 'DIFFERENTIAL',
       CASE WHEN i % 3 = 0 THEN '*/5 * * * *' ELSE '5m' END, CASE WHEN i % 2 = 0 THEN 600000 END, 'ACTIVE',
       '{}'::jsonb, now(), now() + interval '1 day'
     FROM generate_series(1, ${STREAM_TABLES}) i`,
  );
  await exec(
    ctx.sql,
    `INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, started_at, finished_at, duration_ms, action, status,
       delta_rows, initiated_by)
     SELECT st.pgt_id, now() - h * interval '10 minutes', now() - h * interval '10 minutes',
       (CASE WHEN extract(hour FROM now() - h * interval '10 minutes') BETWEEN 9 AND 16 THEN 400 ELSE 100 END)
         + (h * 7 + st.pgt_id) % 50,
       CASE WHEN h % 10 = 0 THEN 'FULL' ELSE 'DIFFERENTIAL' END, 'SUCCESS', 1 + h % 20, 'SCHEDULER'
     FROM pgtrickle.pgt_stream_tables st, generate_series(1, ${HISTORY_ROWS}) h
     WHERE st.pgt_schema = 'bench'`,
  );
  await exec(ctx.sql, "VACUUM ANALYZE pgtrickle.pgt_refresh_history, pgtrickle.pgt_stream_tables");
}

/** The pass's history read alone (same rows, same window): the baseline of the cold pass. */
async function readHistory(ctx: DatabaseContext): Promise<void> {
  await ctx.sql`
    SELECT st.pgt_id, h.* FROM pgtrickle.pgt_stream_tables st
    LEFT JOIN LATERAL (
      SELECT array_agg(x.action) AS actions, array_agg(x.duration_ms) AS durations,
        array_agg(x.delta_rows::float8) AS deltas, array_agg(extract(epoch FROM x.started_at)::float8) AS starts
      FROM (SELECT action, duration_ms, delta_rows, started_at FROM pgtrickle.pgt_refresh_history
        WHERE pgt_id = st.pgt_id AND status = 'SUCCESS' AND action IN ('FULL', 'DIFFERENTIAL')
        ORDER BY started_at DESC LIMIT ${HISTORY_WINDOW}) x) h ON true`;
}

/**
 * Figures 1 and 2. The first pass after start reads and summarises all the history (cold); later passes read only
 * what grew since: before each, a fifth of the stream tables (200) get a new refresh, as between two passes a minute
 * apart of stream tables refreshed every five minutes.
 */
async function passFigures(svc: TestService, opts: BenchOptions): Promise<Figure[]> {
  const ctx = svc.engine.db();
  const read = await timeMs(() => readHistory(ctx));
  let n = 0;
  let phases = {};
  const cold = await timeMs(async () => {
    const r = await svc.engine.planner.pass(ctx, { recommend: true });
    n = r.stream_tables;
    phases = r.phases;
  });
  if (n < STREAM_TABLES) throw new Error(`The pass saw ${n} stream tables, expected ${STREAM_TABLES}`);
  opts.progress(
    `planner pass, cold: ${cold.toFixed(0)} ms (the history read alone ${read.toFixed(0)} ms) ${
      JSON.stringify(phases)
    }`,
  );
  const warm: number[] = [];
  const readGrown: number[] = [];
  for (let run = 0; run < PASS_RUNS; run++) {
    await exec(
      ctx.sql,
      `INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, started_at, finished_at, duration_ms, action, status,
         delta_rows, initiated_by)
       SELECT pgt_id, now(), now(), 120, 'DIFFERENTIAL', 'SUCCESS', 3, 'SCHEDULER' FROM pgtrickle.pgt_stream_tables
       WHERE pgt_schema = 'bench' AND pgt_id % 5 = ${run % 5}`,
    );
    let warmPhases = {};
    warm.push(await timeMs(async () => warmPhases = (await svc.engine.planner.pass(ctx, { recommend: true })).phases));
    opts.progress(
      `planner pass ${run + 1}/${PASS_RUNS}, 200 stream tables refreshed since: ${warm.at(-1)!.toFixed(0)} ms ` +
        JSON.stringify(warmPhases),
    );
    readGrown.push(await timeMs(() => readHistory(ctx)));
  }
  const [stored] = await ctx.sql<{ n: number; peaks: number }[]>`
    SELECT count(*)::int AS n, count(*) FILTER (WHERE recommendation ->> 'peak_window_cron' IS NOT NULL)::int AS peaks
    FROM pgtrickle.pgt_recommendations`;
  if (stored!.n < STREAM_TABLES || stored!.peaks === 0) {
    throw new Error(`The pass stored ${stored!.n} recommendations, ${stored!.peaks} with a peak window`);
  }
  return [
    {
      name: `planner pass, ${STREAM_TABLES} stream tables x ${HISTORY_ROWS} history rows, 200 refreshed since (< 2 s)`,
      measuredMs: median(warm),
      baselineMs: median(readGrown),
      baseline: "reading all 1,000 x 1,000 history rows alone, as a pass without its cache would",
      goal: { kind: "ms", max: 2000 },
      runs: PASS_RUNS,
    },
    {
      name: `first planner pass after start (cold: all ${STREAM_TABLES * HISTORY_ROWS} rows read and summarised)`,
      measuredMs: cold,
      baselineMs: read,
      baseline: "the pass's history read alone",
      goal: { kind: "ratio", max: 1.5 },
      runs: 1,
    },
  ];
}

async function latencyFigure(svc: TestService, opts: BenchOptions): Promise<Figure> {
  const ctx = svc.engine.db();
  await exec(ctx.sql, "CREATE TABLE src (id bigint PRIMARY KEY, g int NOT NULL, v int NOT NULL)");
  await exec(ctx.sql, "INSERT INTO src SELECT i, i % 1000, i % 100 FROM generate_series(1, 100000) i");
  await exec(ctx.sql, "VACUUM ANALYZE src");
  const st = await createStreamTable(ctx, {
    name: { schema: "public", name: "totals" },
    query: "SELECT g, sum(v) AS total, count(*) AS n FROM src GROUP BY g",
    schedule: "1h",
    refreshMode: "DIFFERENTIAL",
    freshnessDeadlineMs: 60_000,
  });
  let id = 1_000_000;
  const refresh = async () => {
    await ctx.sql`INSERT INTO src SELECT i, i % 1000, 1 FROM generate_series(${id + 1}::int8, ${id + 10}::int8) i`;
    id += 10;
    let action = "";
    const ms = await timeMs(async () =>
      action = (await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" })).action
    );
    if (action !== "DIFFERENTIAL") throw new Error(`Expected DIFFERENTIAL, the engine did ${action}`);
    return ms;
  };
  for (let i = 0; i < 5; i++) await refresh(); // warm up
  const idle: number[] = [];
  const planning: number[] = [];
  for (let block = 0; block < BLOCKS; block++) {
    const withPlanner = block % 2 === 1;
    // The scheduler's tick_done, as the leader emits it every second; the planner subscribed at engine start.
    const timer = withPlanner
      ? setInterval(
        () =>
          ctx.events.emit({ type: "tick_done", db_name: ctx.name, db_oid: ctx.oid, due: 0, queued: 0, duration_ms: 0 }),
        TICK_MS,
      )
      : null;
    if (withPlanner) {
      ctx.events.emit({ type: "tick_done", db_name: ctx.name, db_oid: ctx.oid, due: 0, queued: 0, duration_ms: 0 });
    }
    const into = withPlanner ? planning : idle;
    const before = into.length;
    const until = performance.now() + BLOCK_MS;
    while (performance.now() < until) into.push(await refresh());
    if (timer !== null) clearInterval(timer);
    await svc.engine.planner.idle();
    opts.progress(
      `refresh latency block ${block + 1}/${BLOCKS} (${withPlanner ? "planner running" : "planner idle"}): median ` +
        `${median(into.slice(before)).toFixed(1)} ms over ${into.length - before} refreshes`,
    );
  }
  return {
    name: "DIFFERENTIAL refresh (10 changed rows) while the planner runs",
    measuredMs: median(planning),
    baselineMs: median(idle),
    baseline: "the same refreshes with the planner idle, blocks alternating",
    goal: { kind: "ratio", max: 1.1 },
    runs: planning.length,
  };
}
