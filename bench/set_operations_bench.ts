/**
 * Set operations: DIFFERENTIAL vs FULL refresh on the differential bench's data (a 1,000,000-row fact table and a
 * 10,000-row dimension, bench/facts.ts), after 100, 1,000 and 10,000 changed fact rows, for (u) a UNION whose fact
 * branch is restricted through the fact table's primary key, (e) an EXCEPT ALL of the fact table with itself (a
 * multiset: rows keyed by value and copy), (i) an INTERSECT whose fact branch's key (dim_id) has no index, so each
 * refresh scans it, and (g) a UNION with an aggregated branch whose group key has an index (created by this bench).
 * Each refresh runs in a REPEATABLE READ transaction that is rolled back, as in differential_bench.ts.
 *
 *   deno task bench --only set_operations      or      deno run -A bench/set_operations_bench.ts
 */
import { applyDifferential, planQuery } from "../engine/refresh/differential/differential.ts";
import { applyFull } from "../engine/refresh/full.ts";
import { installCapture } from "../engine/cdc.ts";
import { describeQuery } from "../engine/query.ts";
import type { QueryPlan } from "../engine/plan.ts";
import { createStorage } from "../engine/stream_tables.ts";
import { quoteIdent } from "../db/identifiers.ts";
import { freshDatabase } from "../tests/support/db.ts";
import { rolledBack } from "./differential_bench.ts";
import { changeFacts, DIM_ROWS, FACT_ROWS, loadFacts } from "./facts.ts";
import { type BenchOptions, checkpoint, exec, type Figure, median } from "./support.ts";

const CHANGES = [100, 1_000, 10_000];

const SHAPES = [
  {
    key: "u",
    name: "UNION, fact branch keyed by its primary key",
    query: "SELECT id, qty FROM fact WHERE qty > 25 UNION SELECT id, cat FROM dim",
  },
  {
    key: "e",
    name: "EXCEPT ALL of fact with itself (multiset)",
    query: "SELECT id, grp FROM fact EXCEPT ALL SELECT id, grp FROM fact WHERE qty > 45",
  },
  {
    key: "i",
    name: "INTERSECT, fact branch key without index",
    query: "SELECT dim_id, qty FROM fact INTERSECT SELECT id, cat % 50 FROM dim",
  },
  {
    key: "g",
    name: "UNION with a GROUP BY branch (100k groups, index on grp)",
    query: "SELECT grp, count(*) AS c FROM fact GROUP BY grp UNION SELECT id, cat FROM dim",
  },
];

/** The set operations bench's figures (bench/support.ts); creates and drops its own database. */
export async function runSetOperationsBench(opts: BenchOptions): Promise<Figure[]> {
  const db = await freshDatabase("bench_setops");
  const sql = db.sql;
  const figures: Figure[] = [];
  try {
    opts.progress(`set_operations: loading ${FACT_ROWS} fact rows, ${DIM_ROWS} dimension rows`);
    await loadFacts(sql);
    // (g)'s key: an aggregated branch finds and recomputes its touched groups through it.
    await exec(sql, "CREATE INDEX ON fact (grp); ANALYZE fact");
    const tables: { key: string; name: string; query: string; plan: QueryPlan }[] = [];
    for (const s of SHAPES) {
      const description = await describeQuery(sql, s.query);
      const plan = await planQuery(sql, { query: s.query, description });
      if (plan.unsupportedReason !== null) throw new Error(`${s.key}: ${plan.unsupportedReason}`);
      await sql.begin((tx) => createStorage(tx, { schema: "public", name: `st_${s.key}` }, plan));
      for (const src of description.sources) await sql.begin((tx) => installCapture(tx, src));
      tables.push({ ...s, plan });
    }
    const target = (key: string) => ({ schema: "public", name: `st_${key}` });
    const frontier = await sql.begin("isolation level repeatable read", async (tx) => {
      const [snap] = await tx<{ s: string }[]>`SELECT pg_current_snapshot()::text AS s`;
      for (const t of tables) await applyFull(tx, { plan: t.plan, target: target(t.key) });
      return snap!.s;
    });
    for (const t of tables) await exec(sql, `VACUUM ANALYZE st_${t.key}`);
    const fullMs = new Map<string, number>();
    for (const t of tables) {
      await checkpoint(sql);
      const runs: number[] = [];
      for (let i = 0; i < 3; i++) {
        runs.push(await rolledBack(sql, (tx) => applyFull(tx, { plan: t.plan, target: target(t.key) })));
      }
      fullMs.set(t.key, median(runs));
      opts.progress(`set_operations: FULL ${t.key} (${t.name}): ${median(runs).toFixed(0)} ms`);
    }
    let changed = 0;
    for (const n of CHANGES) {
      await changeFacts(sql, changed, n - changed);
      changed = n;
      for (const t of tables) {
        const runs: number[] = [];
        for (let i = 0; i < 3; i++) {
          runs.push(
            await rolledBack(sql, (tx) => applyDifferential(tx, { plan: t.plan, target: target(t.key), frontier })),
          );
        }
        const f: Figure = {
          name: `(${t.key}) ${t.name}: DIFFERENTIAL, ${n} changed rows`,
          measuredMs: median(runs),
          baselineMs: fullMs.get(t.key)!,
          baseline: "FULL refresh of the same stream table (median of 3, rolled back)",
          // The differential bench's goals: 50x at 100 changed rows, 20x at 1,000; at 10,000 no slower than FULL.
          goal: { kind: "ratio", max: n <= 100 ? 1 / 50 : n <= 1000 ? 1 / 20 : 1 },
          runs: runs.length,
        };
        figures.push(f);
        opts.progress(
          `set_operations: ${f.name}: ${f.measuredMs.toFixed(1)} ms, FULL/DIFF = ${
            (f.baselineMs / f.measuredMs).toFixed(1)
          }x`,
        );
      }
    }
    // The result is right: one DIFFERENTIAL refresh committed, then compared with the query.
    await sql.begin("isolation level repeatable read", async (tx) => {
      for (const t of tables) await applyDifferential(tx, { plan: t.plan, target: target(t.key), frontier });
    });
    for (const t of tables) {
      const cols = t.plan.columns.map((c) => quoteIdent(c.name)).join(", ");
      const [row] = await sql.unsafe<{ n: number }[]>(
        `SELECT (SELECT count(*) FROM (SELECT ${cols} FROM st_${t.key} EXCEPT ALL (${t.query})) x) +
                (SELECT count(*) FROM ((${t.query}) EXCEPT ALL SELECT ${cols} FROM st_${t.key}) y) AS n`,
      );
      if (Number(row!.n) !== 0) throw new Error(`(${t.key}) differs from its query after the DIFFERENTIAL refresh`);
    }
    return figures;
  } finally {
    await db.drop();
  }
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
    console.log(renderTable(await runSetOperationsBench({ serverUrl: url, progress })));
  } finally {
    await stop();
  }
}
