/**
 * The partition recompute (docs/differential.md) on the differential bench's data (bench/facts.ts: 1,000,000 fact
 * rows, 10,000 dimension rows): DIFFERENTIAL against FULL of the same stream table after 100 and 1,000 changed fact
 * rows, for an outer join, an EXISTS, a window with PARTITION BY, an outer join under GROUP BY, and top-k twice: p5,
 * held only to FULL's time since a change that reaches its top 100 recomputes the whole top (the bench's changes
 * happen to miss it too), and p6, whose changes cannot reach its boundary (the refresh skips the recompute: held to
 * 20x). Each refresh runs in a REPEATABLE READ transaction that is rolled back, as in differential_bench.ts.
 *
 *   deno task bench --only partition
 */
import { describeQuery } from "../engine/query.ts";
import { applyDifferential, planQuery } from "../engine/refresh/differential/differential.ts";
import { applyFull } from "../engine/refresh/full.ts";
import type { QueryPlan } from "../engine/plan.ts";
import { installCapture } from "../engine/cdc.ts";
import { createStorage } from "../engine/stream_tables.ts";
import { quoteIdent } from "../db/identifiers.ts";
import { freshDatabase } from "../tests/support/db.ts";
import { rolledBack } from "./differential_bench.ts";
import { type BenchOptions, checkpoint, exec, type Figure, median } from "./support.ts";
import { changeFacts, FACT_ROWS, loadFacts } from "./facts.ts";

const SHAPES = [
  {
    key: "p1",
    name: "LEFT JOIN, 1M rows",
    query: "SELECT f.id, f.amount, d.name FROM fact f LEFT JOIN dim d ON d.id = f.dim_id",
    whole: false,
  },
  {
    key: "p2",
    name: "EXISTS (correlated), ~500k rows",
    query: "SELECT f.id, f.qty FROM fact f WHERE EXISTS (SELECT 1 FROM dim d WHERE d.id = f.dim_id AND d.cat < 500)",
    whole: false,
  },
  {
    key: "p3",
    name: "window PARTITION BY grp, 100k partitions",
    query: "SELECT id, grp, rank() OVER (PARTITION BY grp ORDER BY amount, id) AS r FROM fact",
    whole: false,
  },
  {
    key: "p4",
    name: "LEFT JOIN + GROUP BY, 1k groups",
    query: "SELECT d.cat, count(f.id) AS c, max(f.amount) AS m FROM dim d LEFT JOIN fact f ON f.dim_id = d.id " +
      "GROUP BY d.cat",
    whole: false,
  },
  {
    key: "p5",
    name: "top-k: ORDER BY amount DESC LIMIT 100",
    query: "SELECT id, amount FROM fact ORDER BY amount DESC, id LIMIT 100",
    whole: true,
  },
  {
    // The changes raise amounts by 1.25, delete and insert rows with amount 1.00: none reaches the lowest 100 (0.00 to
    // 0.09), so the refresh tests the boundary and skips the recompute.
    key: "p6",
    name: "top-k, changes miss the boundary: ORDER BY amount LIMIT 100",
    query: "SELECT id, amount FROM fact ORDER BY amount, id LIMIT 100",
    whole: false,
  },
];

/** The partition recompute's figures; creates and drops its own database. */
export async function runPartitionBench(opts: BenchOptions): Promise<Figure[]> {
  const db = await freshDatabase("bench_partition");
  const sql = db.sql;
  const figures: Figure[] = [];
  const target = (key: string) => ({ schema: "public", name: `st_${key}` });
  try {
    opts.progress(`partition: loading ${FACT_ROWS} fact rows`);
    await loadFacts(sql);
    const plans = new Map<string, QueryPlan>();
    for (const c of SHAPES) {
      const description = await describeQuery(sql, c.query);
      const plan = await planQuery(sql, { query: c.query, description });
      if (plan.unsupportedReason !== null) throw new Error(`${c.key}: ${plan.unsupportedReason}`);
      await sql.begin((tx) => createStorage(tx, target(c.key), plan));
      for (const s of description.sources) await sql.begin((tx) => installCapture(tx, s));
      plans.set(c.key, plan);
    }
    const frontier = await sql.begin("isolation level repeatable read", async (tx) => {
      const [snap] = await tx<{ s: string }[]>`SELECT pg_current_snapshot()::text AS s`;
      for (const c of SHAPES) await applyFull(tx, { plan: plans.get(c.key)!, target: target(c.key) });
      return snap!.s;
    });
    for (const c of SHAPES) await exec(sql, `VACUUM ANALYZE st_${c.key}`);
    const fullMs = new Map<string, number>();
    for (const c of SHAPES) {
      await checkpoint(sql);
      const runs: number[] = [];
      for (let i = 0; i < 3; i++) {
        runs.push(await rolledBack(sql, (tx) => applyFull(tx, { plan: plans.get(c.key)!, target: target(c.key) })));
      }
      fullMs.set(c.key, median(runs));
      opts.progress(`partition: FULL ${c.key} (${c.name}): ${median(runs).toFixed(0)} ms`);
    }
    let changed = 0;
    for (const n of [100, 1_000]) {
      await changeFacts(sql, changed, n - changed);
      changed = n;
      for (const c of SHAPES) {
        const plan = plans.get(c.key)!;
        const runs: number[] = [];
        for (let i = 0; i < 3; i++) {
          runs.push(await rolledBack(sql, (tx) => applyDifferential(tx, { plan, target: target(c.key), frontier })));
        }
        const f: Figure = {
          name: `(${c.key}) ${c.name}: DIFFERENTIAL, ${n} changed rows`,
          measuredMs: median(runs),
          baselineMs: fullMs.get(c.key)!,
          baseline: "FULL refresh of the same stream table (median of 3, rolled back)",
          goal: { kind: "ratio", max: c.whole ? 1 : 1 / 20 },
          runs: runs.length,
        };
        figures.push(f);
        opts.progress(
          `partition: ${f.name}: ${f.measuredMs.toFixed(1)} ms, FULL/DIFF = ${
            (f.baselineMs / f.measuredMs).toFixed(1)
          }x`,
        );
      }
    }
    // The result is right: one DIFFERENTIAL refresh committed, then compared with the query.
    await sql.begin("isolation level repeatable read", async (tx) => {
      for (const c of SHAPES) await applyDifferential(tx, { plan: plans.get(c.key)!, target: target(c.key), frontier });
    });
    for (const c of SHAPES) {
      const cols = plans.get(c.key)!.columns.map((col) => quoteIdent(col.name)).join(", ");
      const [row] = await sql.unsafe<{ n: number }[]>(
        `SELECT (SELECT count(*) FROM (SELECT ${cols} FROM st_${c.key} EXCEPT ALL (${c.query})) x) +
                (SELECT count(*) FROM ((${c.query}) EXCEPT ALL SELECT ${cols} FROM st_${c.key}) y) AS n`,
      );
      if (Number(row!.n) !== 0) throw new Error(`(${c.key}) differs from its query after the DIFFERENTIAL refresh`);
    }
    return figures;
  } finally {
    await db.drop();
  }
}
