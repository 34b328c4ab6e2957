/**
 * TPC-H through the running service (main.ts in its own process, HTTP timed by the client): the 22 queries of
 * tests/support/tpch_queries.ts created in AUTO mode over TPC-H at scale factor 0.2 (30,000 customers, 300,000
 * orders, about 1.2 million lineitems, 2,000 suppliers, 40,000 parts, 160,000 partsupp; tests/support/tpch.ts). For each
 * query the engine maintains DIFFERENTIAL and that reads lineitem or orders: committed refreshes after 1,000 changed rows (800 lineitems, 200 orders),
 * several in a row (median), against a FULL refresh of the same stream table after the same changes (mode switched
 * to FULL with PATCH, not timed) and against the bare recompute of the query, all in one run. Then the query at the
 * median DIFFERENTIAL/FULL ratio; the FULL-only queries are listed with their reason.
 *
 *   deno task bench --only tpch
 */
import type { Sql } from "../db/pool.ts";
import { freshDatabase } from "../tests/support/db.ts";
import { Rng } from "../tests/support/oracle.ts";
import { type ServiceProcess, spawnService, stopAll } from "../tests/support/process.ts";
import { createTpch } from "../tests/support/tpch.ts";
import { TPCH_QUERIES } from "../tests/support/tpch_queries.ts";
import { type BenchOptions, checkpoint, exec, type Figure, median, timeMs } from "./support.ts";

const SCALE = { customers: 30_000, orders: 300_000, suppliers: 2_000, parts: 40_000 };
/** Committed DIFFERENTIAL refreshes per query, and FULL ones. */
const DIFF_RUNS = 5;
const FULL_RUNS = 3;
/** The issue's goals: every maintained query at least 20x faster than FULL, the median one 50x. */
const GOAL_EACH = 1 / 20;
const GOAL_MEDIAN = 1 / 50;

interface Created {
  name: string;
  mode: string;
  reason: string | null;
}

/** The TPC-H bench's figures (bench/support.ts); creates and drops its own database. */
export async function runTpchBench(opts: BenchOptions): Promise<Figure[]> {
  const db = await freshDatabase("bench_tpch");
  const procs: ServiceProcess[] = [];
  const figures: Figure[] = [];
  try {
    opts.progress(`tpch: generating scale factor 0.2 (${SCALE.orders} orders)`);
    await createTpch(db.sql as never, new Rng(19920101), SCALE);
    // The default scheduler tick (tests use 200 ms; each tick is followed by a planner pass).
    const svc = await spawnService({
      databaseUrl: db.url,
      env: { TRICKLE_LOG_LEVEL: "warn", TRICKLE_SCHEDULER_INTERVAL_MS: "1000" },
    });
    procs.push(svc);
    const created: Created[] = [];
    for (const [name, query] of Object.entries(TPCH_QUERIES)) {
      // A long schedule: the scheduler stays out of the way; every refresh measured is a manual one.
      const st = await request(svc, "POST", "/stream-tables", { name, query, schedule: "1d" }, 201);
      created.push({ name, mode: String(st["effective_refresh_mode"]), reason: st["fallback_reason"] as string });
      opts.progress(
        `tpch: ${name} ${st["effective_refresh_mode"]}${st["fallback_reason"] ? ` (${st["fallback_reason"]})` : ""}`,
      );
    }
    await exec(db.sql, "VACUUM ANALYZE");
    // The changes are to lineitem and orders: a query reading neither (Q2, Q11, Q16) has nothing to refresh.
    const readers = new Set(
      (await db.sql<{ name: string }[]>`
        SELECT DISTINCT s.pgt_name AS name FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables s
        USING (pgt_id) WHERE d.source_name IN ('lineitem', 'orders')`).map((r) => r.name),
    );
    const maintained = created.filter((c) => c.mode === "DIFFERENTIAL" && readers.has(c.name));
    const unread = created.filter((c) => c.mode === "DIFFERENTIAL" && !readers.has(c.name));
    if (unread.length > 0) {
      opts.progress(`tpch: DIFFERENTIAL, not reading lineitem or orders: ${unread.map((c) => c.name).join(", ")}`);
    }

    const bare = new Map<string, number>();
    for (const q of maintained) bare.set(q.name, await bareRecompute(db.sql, TPCH_QUERIES[q.name]!));

    let round = 0;
    const diff = new Map<string, number[]>(maintained.map((q) => [q.name, []]));
    // A query whose DIFFERENTIAL refresh fails (the service's 30 s request limit, say) is reported and left out.
    const failed = new Map<string, string>();
    for (let i = 0; i < DIFF_RUNS; i++) {
      await changeRows(db.sql, round++);
      for (const q of maintained.filter((q) => !failed.has(q.name))) {
        try {
          diff.get(q.name)!.push(await timeMs(() => refresh(svc, q.name, "DIFFERENTIAL")));
        } catch (e) {
          failed.set(q.name, e instanceof Error ? e.message : String(e));
          opts.progress(`tpch: ${q.name}: DIFFERENTIAL refresh failed, left out: ${failed.get(q.name)}`);
        }
      }
    }
    // Its FULL twin would still be behind the failed refresh's changes: it is left out of FULL too.
    maintained.splice(0, maintained.length, ...maintained.filter((q) => !failed.has(q.name)));
    const full = new Map<string, number[]>(maintained.map((q) => [q.name, []]));
    for (const q of maintained) await request(svc, "PATCH", `/stream-tables/${q.name}`, { refresh_mode: "FULL" }, 200);
    for (let i = 0; i < FULL_RUNS; i++) {
      await changeRows(db.sql, round++);
      await checkpoint(db.sql);
      for (const q of maintained.filter((q) => !failed.has(q.name))) {
        try {
          full.get(q.name)!.push(await timeMs(() => refresh(svc, q.name, "FULL")));
        } catch (e) {
          failed.set(q.name, `FULL: ${e instanceof Error ? e.message : String(e)}`);
          opts.progress(`tpch: ${q.name}: FULL refresh failed, left out: ${failed.get(q.name)}`);
        }
      }
    }
    maintained.splice(0, maintained.length, ...maintained.filter((q) => !failed.has(q.name)));
    for (const q of maintained) {
      await request(svc, "PATCH", `/stream-tables/${q.name}`, { refresh_mode: "DIFFERENTIAL" }, 200);
    }

    const ratios: { name: string; d: number; f: number }[] = [];
    for (const q of maintained) {
      const d = median(diff.get(q.name)!);
      const f = median(full.get(q.name)!);
      ratios.push({ name: q.name, d, f });
      opts.progress(
        `tpch: ${q.name}: DIFFERENTIAL ${d.toFixed(1)} ms, FULL ${f.toFixed(0)} ms, ` +
          `bare ${bare.get(q.name)!.toFixed(0)} ms: FULL/DIFF ${(f / d).toFixed(1)}x`,
      );
      figures.push({
        name: `(tpch ${q.name}) service DIFFERENTIAL refresh, 1000 changed rows, vs FULL`,
        measuredMs: d,
        baselineMs: f,
        baseline:
          `FULL refresh of the same stream table through the service after the same changes (median of ${FULL_RUNS})`,
        goal: { kind: "ratio", max: GOAL_EACH },
        runs: DIFF_RUNS,
      });
      figures.push({
        name: `(tpch ${q.name}) service DIFFERENTIAL refresh, 1000 changed rows, vs bare recompute`,
        measuredMs: d,
        baselineMs: bare.get(q.name)!,
        baseline: "recompute of the query (CREATE TEMP TABLE AS, median of 3)",
        goal: { kind: "ratio", max: GOAL_EACH },
        runs: DIFF_RUNS,
      });
    }
    if (ratios.length > 0) {
      // The median query by DIFFERENTIAL/FULL (the upper one of an even count).
      const sorted = [...ratios].sort((a, b) => a.d / a.f - b.d / b.f);
      const m = sorted[Math.floor(sorted.length / 2)]!;
      figures.push({
        name: `(tpch) median of ${ratios.length} maintained queries (${m.name}): DIFFERENTIAL vs FULL`,
        measuredMs: m.d,
        baselineMs: m.f,
        baseline: "FULL refresh of the same stream table (the query at the median ratio)",
        goal: { kind: "ratio", max: GOAL_MEDIAN },
        runs: DIFF_RUNS,
      });
    }
    for (const [name, error] of failed) {
      figures.push({
        name: `(tpch ${name}) service DIFFERENTIAL refresh, 1000 changed rows: FAILED (${error.slice(0, 80)})`,
        measuredMs: Number.POSITIVE_INFINITY,
        baselineMs: bare.get(name)!,
        baseline: "recompute of the query (CREATE TEMP TABLE AS, median of 3)",
        goal: { kind: "ratio", max: GOAL_EACH },
        runs: 0,
      });
    }
    const fullOnly = created.filter((c) => c.mode !== "DIFFERENTIAL");
    opts.progress(`tpch: FULL only: ${fullOnly.map((c) => `${c.name} (${c.reason})`).join(", ")}`);
    return figures;
  } finally {
    await stopAll(procs);
    await db.drop();
  }
}

/** 1,000 changed rows, committed: 800 lineitems (price, quantity) and 200 orders (priority), at a new place each round. */
async function changeRows(sql: Sql, round: number): Promise<void> {
  const start = 1 + ((round * 7919) % (SCALE.orders - 1_000));
  await sql.begin(async (tx) => {
    await tx`UPDATE lineitem SET l_extendedprice = l_extendedprice + 1, l_quantity = l_quantity % 50 + 1
      WHERE (l_orderkey, l_linenumber) IN (SELECT l_orderkey, l_linenumber FROM lineitem WHERE l_orderkey >= ${start}
        ORDER BY l_orderkey, l_linenumber LIMIT 800)`;
    await tx`UPDATE orders SET o_orderpriority = CASE WHEN o_orderpriority = '1-URGENT' THEN '2-HIGH' ELSE '1-URGENT' END
      WHERE o_orderkey IN (SELECT o_orderkey FROM orders WHERE o_orderkey >= ${start} ORDER BY o_orderkey LIMIT 200)`;
  });
}

async function bareRecompute(sql: Sql, query: string): Promise<number> {
  const runs: number[] = [];
  for (let i = 0; i < 3; i++) {
    // One of the bench's own queries (tests/support/tpch_queries.ts).
    runs.push(await timeMs(() => sql.begin((tx) => tx.unsafe(`CREATE TEMP TABLE bare ON COMMIT DROP AS ${query}`))));
  }
  return median(runs);
}

async function refresh(svc: ServiceProcess, name: string, action: string): Promise<void> {
  const r = await request(svc, "POST", `/stream-tables/${name}/refresh`, undefined, 200);
  if (r["action"] !== action) throw new Error(`${name}: expected a ${action} refresh, got ${JSON.stringify(r)}`);
}

async function request(
  svc: ServiceProcess,
  method: string,
  path: string,
  body: unknown,
  status: number,
): Promise<Record<string, unknown>> {
  const res = await fetch(`${svc.url}${path}`, {
    method,
    ...(body === undefined ? {} : { headers: { "content-type": "application/json" }, body: JSON.stringify(body) }),
  });
  const text = await res.text();
  if (res.status !== status) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return JSON.parse(text) as Record<string, unknown>;
}
