/**
 * DIFFERENTIAL vs FULL refresh on a 1,000,000-row fact table and a 10,000-row dimension, for (a) GROUP BY with
 * count, sum, avg over 100,000 groups, (b) a two-table join projection, (c) a join with a GROUP BY aggregate, after
 * 100, 1,000 and 10,000 changed fact rows. Each refresh runs in its own REPEATABLE READ transaction that is rolled
 * back, so every run starts from the same stream table and frontier; FULL is measured the same way (its commit,
 * which would cost it more, is left out of both). Then: where the orchestrator's automatic fallback to FULL kicks in
 * (differential_max_change_ratio) and what a refresh costs there, against FULL alone.
 *
 *   deno task bench --only differential      or      deno run -A bench/differential_bench.ts
 */
import { deltaStats } from "../engine/cdc.ts";
import { describeQuery } from "../engine/query.ts";
import { applyDifferential, planQuery } from "../engine/refresh/differential/differential.ts";
import { applyFull } from "../engine/refresh/full.ts";
import type { QueryPlan } from "../engine/plan.ts";
import { chooseAction } from "../engine/refresh/refresh.ts";
import { installCapture } from "../engine/cdc.ts";
import { createStorage } from "../engine/stream_tables.ts";
import { quoteIdent } from "../db/identifiers.ts";
import type { Sql, Tx } from "../db/pool.ts";
import { freshDatabase } from "../tests/support/db.ts";
import { type BenchOptions, checkpoint, exec, type Figure, median, timeMs } from "./support.ts";
import { changeFacts, DIM_ROWS, FACT_ROWS, loadFacts, SHAPES } from "./facts.ts";

const CHANGES = [100, 1_000, 10_000];

/** The orchestrator's default (TRICKLE_DIFFERENTIAL_MAX_CHANGE_RATIO). */
const MAX_CHANGE_RATIO = 0.15;

interface Table {
  key: string;
  name: string;
  query: string;
  plan: QueryPlan;
  relids: number[];
}

/** The differential benchmark's figures (bench/support.ts); creates and drops its own database. */
export async function runDifferentialBench(opts: BenchOptions): Promise<Figure[]> {
  const db = await freshDatabase("bench_diff");
  const sql = db.sql;
  const figures: Figure[] = [];
  try {
    opts.progress(`differential: loading ${FACT_ROWS} fact rows, ${DIM_ROWS} dimension rows`);
    await loadFacts(sql);
    const tables: Table[] = [];
    for (const c of SHAPES) {
      const description = await describeQuery(sql, c.query);
      const plan = await planQuery(sql, { query: c.query, description });
      if (plan.unsupportedReason !== null) throw new Error(`${c.key}: ${plan.unsupportedReason}`);
      await sql.begin((tx) => createStorage(tx, { schema: "public", name: `st_${c.key}` }, plan));
      for (const s of description.sources) await sql.begin((tx) => installCapture(tx, s));
      tables.push({ ...c, plan, relids: description.sources.map((s) => s.relid) });
    }
    opts.progress("differential: initial FULL refreshes");
    const frontier = await sql.begin("isolation level repeatable read", async (tx) => {
      const [snap] = await tx<{ s: string }[]>`SELECT pg_current_snapshot()::text AS s`;
      for (const t of tables) await applyFull(tx, { plan: t.plan, target: target(t) });
      return snap!.s;
    });
    for (const t of tables) await exec(sql, `VACUUM ANALYZE st_${t.key}`);

    // FULL does not depend on how many rows changed: its baseline is measured once per stream table.
    const fullMs = new Map<string, number>();
    for (const t of tables) {
      await checkpoint(sql);
      const runs: number[] = [];
      for (let i = 0; i < 3; i++) {
        runs.push(await rolledBack(sql, (tx) => applyFull(tx, { plan: t.plan, target: target(t) })));
      }
      fullMs.set(t.key, median(runs));
      opts.progress(`differential: FULL ${t.key} (${t.name}): ${median(runs).toFixed(0)} ms`);
    }

    let changed = 0;
    for (const n of CHANGES) {
      // Cumulative since the frontier: 100, then 900 more (1,000), then 9,000 more (10,000).
      await changeFacts(sql, changed, n - changed);
      changed = n;
      for (const t of tables) {
        const runs: number[] = [];
        for (let i = 0; i < 5; i++) {
          runs.push(
            await rolledBack(sql, (tx) => applyDifferential(tx, { plan: t.plan, target: target(t), frontier })),
          );
        }
        const f: Figure = {
          name: `(${t.key}) ${t.name}: DIFFERENTIAL, ${n} changed rows`,
          measuredMs: median(runs),
          baselineMs: fullMs.get(t.key)!,
          baseline: `FULL refresh of the same stream table (median of 3, rolled back)`,
          // The goals: 50x faster at 100 changed rows, 20x at 1,000; at 10,000 no slower than FULL.
          goal: { kind: "ratio", max: n <= 100 ? 1 / 50 : n <= 1000 ? 1 / 20 : 1 },
          runs: runs.length,
        };
        figures.push(f);
        opts.progress(
          `differential: ${f.name}: ${f.measuredMs.toFixed(1)} ms, FULL/DIFF = ${
            (f.baselineMs / f.measuredMs).toFixed(1)
          }x`,
        );
      }
    }

    // The result is right: one DIFFERENTIAL refresh committed, then compared with the query.
    await sql.begin("isolation level repeatable read", async (tx) => {
      for (const t of tables) await applyDifferential(tx, { plan: t.plan, target: target(t), frontier });
    });
    for (const t of tables) {
      const cols = t.plan.columns.map((c) => quoteIdent(c.name)).join(", ");
      const [row] = await sql.unsafe<{ n: number }[]>(
        `SELECT (SELECT count(*) FROM (SELECT ${cols} FROM st_${t.key} EXCEPT ALL (${t.query})) x) +
                (SELECT count(*) FROM ((${t.query}) EXCEPT ALL SELECT ${cols} FROM st_${t.key}) y) AS n`,
      );
      if (Number(row!.n) !== 0) throw new Error(`(${t.key}) differs from its query after the DIFFERENTIAL refresh`);
    }

    figures.push(...await fallback(sql, opts, tables[0]!));
    return figures;
  } finally {
    await db.drop();
  }
}

function target(t: Table): { schema: string; name: string } {
  return { schema: "public", name: `st_${t.key}` };
}

class Rollback extends Error {}

/** Milliseconds `fn` takes in a REPEATABLE READ transaction that is then rolled back. */
export async function rolledBack(sql: Sql, fn: (tx: Tx) => Promise<unknown>): Promise<number> {
  let ms = 0;
  try {
    await sql.begin("isolation level repeatable read", async (tx) => {
      ms = await timeMs(() => fn(tx));
      throw new Rollback();
    });
  } catch (e) {
    if (!(e instanceof Rollback)) throw e;
  }
  return ms;
}

/**
 * Where the automatic fallback kicks in: the orchestrator refreshes FULL when the delta exceeds
 * differential_max_change_ratio of the sources' rows. Measures, above that point, the refresh as the orchestrator
 * runs it (count the delta, decide, FULL) against FULL alone; and DIFFERENTIAL just below it, for the record.
 */
async function fallback(sql: Sql, opts: BenchOptions, t: Table): Promise<Figure[]> {
  const sourceRows = FACT_ROWS;
  const threshold = Math.ceil(MAX_CHANGE_RATIO * sourceRows);
  opts.progress(`differential: fallback: FULL above ${threshold} buffered changes (ratio ${MAX_CHANGE_RATIO})`);
  // Commit the state so far as the new frontier, then change 10% of the fact rows (20% buffer rows: D + I each).
  const frontier = await sql.begin("isolation level repeatable read", async (tx) => {
    const [snap] = await tx<{ s: string }[]>`SELECT pg_current_snapshot()::text AS s`;
    await applyFull(tx, { plan: t.plan, target: target(t) });
    return snap!.s;
  });
  const n = Math.round(sourceRows * 0.1);
  await exec(sql, `UPDATE fact SET qty = qty + 1 WHERE id % 10 = 5`);
  const orchestrated: number[] = [];
  const full: number[] = [];
  let decided = "";
  for (let i = 0; i < 3; i++) {
    orchestrated.push(
      await rolledBack(sql, async (tx) => {
        let deltaRows = 0;
        for (const relid of t.relids) deltaRows += (await deltaStats(tx, relid, frontier)).rows;
        const decision = chooseAction({
          mode: "DIFFERENTIAL",
          hasFrontier: true,
          deltaRows,
          truncated: false,
          sourceRows,
          maxChangeRatio: MAX_CHANGE_RATIO,
          predictedDiffMs: null,
          predictedFullMs: null,
        });
        decided = `${decision.action} (${decision.reason ?? "no reason"})`;
        if (decision.action === "FULL") await applyFull(tx, { plan: t.plan, target: target(t) });
        else await applyDifferential(tx, { plan: t.plan, target: target(t), frontier });
      }),
    );
    full.push(await rolledBack(sql, (tx) => applyFull(tx, { plan: t.plan, target: target(t) })));
  }
  opts.progress(`differential: fallback: ${n} changed rows -> ${decided}`);
  const diff: number[] = [];
  for (let i = 0; i < 3; i++) {
    diff.push(await rolledBack(sql, (tx) => applyDifferential(tx, { plan: t.plan, target: target(t), frontier })));
  }
  opts.progress(
    `differential: for the record, DIFFERENTIAL with ${n} changed rows (${2 * n} buffer rows) would take ` +
      `${median(diff).toFixed(0)} ms against FULL ${median(full).toFixed(0)} ms`,
  );
  return [{
    name: `(${t.key}) refresh past the fallback point (${n} changed rows, ${2 * n} buffered): count + decide + FULL`,
    measuredMs: median(orchestrated),
    baselineMs: median(full),
    baseline: "FULL refresh alone (median of 3, rolled back)",
    goal: { kind: "ratio", max: 1.1 },
    runs: orchestrated.length,
  }];
}

if (import.meta.main) {
  const { startThrowawayServer } = await import("../tests/support/embedded_server.ts");
  const { renderTable } = await import("./support.ts");
  const progress = (line: string) => console.error(`bench: ${line}`);
  const { url, stop } = await startThrowawayServer({
    url: Deno.env.get("BENCH_DATABASE_URL") || Deno.env.get("TEST_DATABASE_URL"),
    onStart: () => progress("starting the embedded PostgreSQL"),
  });
  Deno.env.set("TEST_DATABASE_URL", url);
  try {
    console.log(renderTable(await runDifferentialBench({ serverUrl: url, progress })));
  } finally {
    await stop();
  }
}
