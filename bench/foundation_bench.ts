/**
 * The foundation's figures, each against a baseline measured in the same run:
 *
 * 1. FULL refresh through the service (catalog lock, snapshot, delta check, rewrite, history, prune) against the bare
 *    `INSERT INTO copy SELECT <query>` into an empty table of the query's shape;
 * 2. a no-op refresh (nothing changed) against a `SELECT 1` round trip;
 * 3. change capture: a bulk INSERT and an UPDATE of 100,000 rows on a tracked table against the same statements on
 *    an untracked copy.
 *
 * Each figure gets a fresh database with a real engine over it (tests/support/service.ts).
 */
import type { Sql } from "../db/pool.ts";
import { bufferName } from "../engine/cdc.ts";
import type { DatabaseContext } from "../engine/context.ts";
import { refreshStreamTable } from "../engine/refresh/refresh.ts";
import { createStreamTable } from "../engine/stream_tables.ts";
import { startTestService, type TestService } from "../tests/support/service.ts";
import { type BenchOptions, checkpoint, exec, type Figure, median, timeMs } from "./support.ts";

const FULL_SOURCE_ROWS = 1_000_000;
const FULL_GROUPS = 100_000;
const FULL_RUNS = 7;
const NOOP_REFRESHES = 50;
const CAPTURE_ROWS = 100_000;
const CAPTURE_RUNS = 7;

const AGGREGATE = "SELECT g, count(*), sum(v), avg(v) FROM src GROUP BY g";

/** Runs the three foundation benchmarks, each on its own fresh database, and returns their figures. */
export async function runFoundationBench(opts: BenchOptions): Promise<Figure[]> {
  return [
    await withService((svc) => fullRefreshFigure(svc, opts)),
    await withService((svc) => noopRefreshFigure(svc, opts)),
    ...await withService((svc) => captureFigures(svc, opts)),
  ];
}

async function withService<T>(fn: (svc: TestService) => Promise<T>): Promise<T> {
  const svc = await startTestService();
  try {
    return await fn(svc);
  } finally {
    await svc.close();
  }
}

/** Creates a stream table through the engine, as POST /stream-tables does. */
async function createStream(
  ctx: DatabaseContext,
  options: { name: string; query: string; mode: "FULL" | "AUTO" },
): Promise<number> {
  const st = await createStreamTable(ctx, {
    name: { schema: "public", name: options.name },
    query: options.query,
    schedule: "1h",
    refreshMode: options.mode,
    freshnessDeadlineMs: null,
  });
  return st.pgt_id;
}

async function loadSource(sql: Sql, options: { rows: number; groups: number }): Promise<void> {
  await exec(sql, "CREATE TABLE src (id bigint PRIMARY KEY, g int NOT NULL, v numeric NOT NULL)");
  await exec(
    sql,
    `INSERT INTO src SELECT i, (i % ${options.groups})::int, (i % 1000)::numeric / 10
     FROM generate_series(1, ${options.rows}) AS i`,
  );
  await exec(sql, "VACUUM ANALYZE src");
}

/**
 * Figure 1. Before each FULL refresh one source row changes (untimed): a refresh with nothing to do is NO_DATA even
 * in FULL mode. Both tables are vacuumed before each pair, as autovacuum would keep them between refreshes; the
 * stream table keeps its previous content (the service replaces it), the copy starts empty (the brief's baseline).
 */
async function fullRefreshFigure(svc: TestService, opts: BenchOptions): Promise<Figure> {
  const ctx = svc.engine.db();
  const sql = ctx.sql;
  opts.progress(`FULL refresh: loading ${FULL_SOURCE_ROWS} source rows in ${FULL_GROUPS} groups`);
  await loadSource(sql, { rows: FULL_SOURCE_ROWS, groups: FULL_GROUPS });
  const pgtId = await createStream(ctx, { name: "agg_full", query: AGGREGATE, mode: "FULL" });
  await exec(sql, `CREATE TABLE agg_copy AS ${AGGREGATE} WITH NO DATA`);
  const service: number[] = [];
  const bare: number[] = [];
  for (let run = 0; run < FULL_RUNS; run++) {
    await exec(sql, `UPDATE src SET v = v + 1 WHERE id = ${run + 1}`);
    await exec(sql, "TRUNCATE agg_copy");
    await exec(sql, "VACUUM ANALYZE agg_full, agg_copy");
    await checkpoint(sql);
    // Alternate the order so that a disturbance tied to position in the pair falls on both sides alike.
    const timeService = async () => {
      let action = "";
      service.push(
        await timeMs(async () => {
          action = (await refreshStreamTable(ctx, pgtId, { initiatedBy: "MANUAL" })).action;
        }),
      );
      if (action !== "FULL") throw new Error(`Expected a FULL refresh, the engine did ${action}`);
    };
    const timeBare = async () => {
      bare.push(await timeMs(() => exec(sql, `INSERT INTO agg_copy ${AGGREGATE}`)));
    };
    if (run % 2 === 0) {
      await timeService();
      await checkpoint(sql);
      await timeBare();
    } else {
      await timeBare();
      await checkpoint(sql);
      await timeService();
    }
    opts.progress(
      `FULL refresh run ${run + 1}/${FULL_RUNS}: service ${service.at(-1)!.toFixed(0)} ms, ` +
        `bare ${bare.at(-1)!.toFixed(0)} ms`,
    );
  }
  return {
    name: `FULL refresh (${FULL_SOURCE_ROWS / 1e6}M rows -> ${FULL_GROUPS / 1e3}k groups)`,
    measuredMs: median(service),
    baselineMs: median(bare),
    baseline: `bare INSERT INTO copy ${AGGREGATE}, copy empty, of the query's shape`,
    goal: { kind: "ratio", max: 1.3 },
    runs: FULL_RUNS,
  };
}

/** Figure 2: refreshes with no change since the last one, against a `SELECT 1` round trip on the same pool. */
async function noopRefreshFigure(svc: TestService, opts: BenchOptions): Promise<Figure> {
  const ctx = svc.engine.db();
  const sql = ctx.sql;
  opts.progress(`no-op refresh: ${NOOP_REFRESHES} refreshes with nothing changed`);
  await loadSource(sql, { rows: 100_000, groups: 1_000 });
  const pgtId = await createStream(ctx, { name: "agg_noop", query: AGGREGATE, mode: "AUTO" });
  const refresh = async () => {
    const r = await refreshStreamTable(ctx, pgtId, { initiatedBy: "MANUAL" });
    if (r.action !== "NO_DATA") throw new Error(`Expected a no-op refresh, the engine did ${r.action}`);
  };
  const selectOne = () => exec(sql, "SELECT 1");
  for (let i = 0; i < 5; i++) {
    await refresh();
    await selectOne();
  }
  const noop: number[] = [];
  const roundTrip: number[] = [];
  for (let i = 0; i < NOOP_REFRESHES; i++) {
    noop.push(await timeMs(refresh));
    roundTrip.push(await timeMs(selectOne));
  }
  return {
    name: "no-op refresh (nothing changed)",
    measuredMs: median(noop),
    baselineMs: median(roundTrip),
    baseline: "SELECT 1 round trip on the engine's pool",
    goal: { kind: "ms", max: 5 },
    runs: NOOP_REFRESHES,
  };
}

/**
 * Figure 3. A tracked table (the source of a stream table, so it carries the capture triggers) against an untracked
 * copy with the same columns and indexes. Before each run both are emptied, the stream table is refreshed so that
 * its buffer is pruned, and tables and buffer are vacuumed: each side starts from the same physical state.
 */
async function captureFigures(svc: TestService, opts: BenchOptions): Promise<Figure[]> {
  const ctx = svc.engine.db();
  const sql = ctx.sql;
  opts.progress(`change capture: ${CAPTURE_ROWS}-row INSERT and UPDATE, tracked vs untracked`);
  await exec(sql, "CREATE TABLE tracked (id bigint PRIMARY KEY, g int NOT NULL, v numeric NOT NULL, note text)");
  await exec(sql, "CREATE TABLE untracked (LIKE tracked INCLUDING ALL)");
  const pgtId = await createStream(ctx, {
    name: "tracked_counts",
    query: "SELECT g, count(*) FROM tracked GROUP BY g",
    mode: "AUTO",
  });
  const [rel] = await sql<{ oid: number }[]>`SELECT 'public.tracked'::regclass::oid::int8 AS oid`;
  const buffer = bufferName(rel!.oid);
  const insert = (table: string) =>
    `INSERT INTO ${table} SELECT i, i % 1000, i * 0.5, md5(i::text) FROM generate_series(1, ${CAPTURE_ROWS}) AS i`;
  const update = (table: string) => `UPDATE ${table} SET v = v + 1`;
  const times = {
    insTracked: [] as number[],
    insPlain: [] as number[],
    updTracked: [] as number[],
    updPlain: [] as number[],
  };

  const settle = async () => {
    await refreshStreamTable(ctx, pgtId, { initiatedBy: "MANUAL" });
    await exec(sql, `VACUUM ANALYZE tracked, untracked, ${buffer}`);
    await checkpoint(sql);
  };
  const pair = async (run: number, statement: (t: string) => string, tracked: number[], plain: number[]) => {
    // Alternate the order so that a disturbance tied to position in the pair falls on both sides alike.
    const sides: [string, number[]][] = [["tracked", tracked], ["untracked", plain]];
    for (const [table, into] of run % 2 === 0 ? sides : sides.reverse()) {
      into.push(await timeMs(() => exec(sql, statement(table))));
      await checkpoint(sql);
    }
  };
  for (let run = 0; run < CAPTURE_RUNS; run++) {
    await exec(sql, "TRUNCATE tracked, untracked");
    await settle();
    await pair(run, insert, times.insTracked, times.insPlain);
    await settle();
    await pair(run, update, times.updTracked, times.updPlain);
    opts.progress(
      `capture run ${run + 1}/${CAPTURE_RUNS}: INSERT ${times.insTracked.at(-1)!.toFixed(0)} vs ` +
        `${times.insPlain.at(-1)!.toFixed(0)} ms, UPDATE ${times.updTracked.at(-1)!.toFixed(0)} vs ` +
        `${times.updPlain.at(-1)!.toFixed(0)} ms`,
    );
  }
  return [
    {
      name: `capture: INSERT of ${CAPTURE_ROWS / 1e3}k rows`,
      measuredMs: median(times.insTracked),
      baselineMs: median(times.insPlain),
      baseline: "the same INSERT into an untracked copy (same columns and indexes)",
      goal: { kind: "ratio", max: 2 },
      runs: CAPTURE_RUNS,
    },
    {
      name: `capture: UPDATE of ${CAPTURE_ROWS / 1e3}k rows`,
      measuredMs: median(times.updTracked),
      baselineMs: median(times.updPlain),
      baseline: "the same UPDATE on an untracked copy (same columns, indexes, rows)",
      goal: { kind: "ratio", max: 2 },
      runs: CAPTURE_RUNS,
    },
  ];
}
