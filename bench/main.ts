/**
 * `deno task bench`: starts the embedded PostgreSQL (unless BENCH_DATABASE_URL or TEST_DATABASE_URL names a server),
 * runs the benchmarks, each on fresh databases, prints every figure beside the baseline measured in the same run
 * with their ratio and goal, then stops the server.
 *
 *   deno task bench                          all benchmarks
 *   deno task bench --only service           one suite: foundation, differential, service, http, metrics, cluster,
 *                                            snapshots, planner, partition, tpch, set_operations
 *   BENCH_CLUSTER_SECONDS=10 deno task bench --only cluster   a quick cluster run (default 60 s)
 *
 * A figure that misses its goal is printed as MISS; the exit code is non-zero only when a benchmark fails to run.
 */
import { connect } from "../db/pool.ts";
import { startThrowawayServer } from "../tests/support/embedded_server.ts";
import { runDifferentialBench } from "./differential_bench.ts";
import { runFoundationBench } from "./foundation_bench.ts";
import { runHttpBench } from "./http_bench.ts";
import { runMetricsBench } from "./metrics_bench.ts";
import { runServiceBench } from "./service_bench.ts";
import { runSnapshotsBench } from "./snapshots_bench.ts";
import { runClusterBench } from "./cluster_bench.ts";
import { runPlannerBench } from "./planner_bench.ts";
import { runPartitionBench } from "./partition_bench.ts";
import { runTpchBench } from "./tpch_bench.ts";
import { runSetOperationsBench } from "./set_operations_bench.ts";
import { type BenchOptions, type Figure, passes, renderTable } from "./support.ts";

/** Each suite creates its own fresh databases on the server and returns its figures. */
const SUITES = {
  foundation: runFoundationBench,
  differential: runDifferentialBench,
  service: runServiceBench,
  http: runHttpBench,
  metrics: runMetricsBench,
  cluster: runClusterBench,
  snapshots: runSnapshotsBench,
  planner: runPlannerBench,
  partition: runPartitionBench,
  tpch: runTpchBench,
  set_operations: runSetOperationsBench,
} satisfies Record<string, (opts: BenchOptions) => Promise<Figure[]>>;
type Suite = keyof typeof SUITES;

async function serverVersion(url: string): Promise<string> {
  const sql = connect(url, { max: 1 });
  try {
    const [row] = await sql<{ v: string }[]>`SELECT 'PostgreSQL ' || current_setting('server_version') AS v`;
    return row!.v;
  } finally {
    await sql.end();
  }
}

function parseArgs(args: string[]): Suite[] {
  const names = Object.keys(SUITES) as Suite[];
  const usage = `usage: deno task bench [--only ${names.join("|")}]`;
  if (args.length === 0) return names;
  const value = args[0] === "--only" ? args[1] : args[0]?.startsWith("--only=") ? args[0].slice(7) : undefined;
  const consumed = args[0] === "--only" ? 2 : 1;
  if (value === undefined || args.length > consumed || !(names as string[]).includes(value)) {
    console.error(usage);
    Deno.exit(2);
  }
  return [value as Suite];
}

const suites = parseArgs(Deno.args);
const encoder = new TextEncoder();
const progress = (line: string) => Deno.stderr.writeSync(encoder.encode(`bench: ${line}\n`));

const { url: serverUrl, stop } = await startThrowawayServer({
  url: Deno.env.get("BENCH_DATABASE_URL") || Deno.env.get("TEST_DATABASE_URL"),
  onStart: () => progress("starting the embedded PostgreSQL"),
});
// Ctrl-C stops the embedded server too, instead of leaving it running.
Deno.addSignalListener("SIGINT", () => {
  progress("interrupted, stopping");
  stop().finally(() => Deno.exit(130));
});
// tests/support (fresh databases, the engine over them) reads the server from here.
Deno.env.set("TEST_DATABASE_URL", serverUrl);

const opts: BenchOptions = { serverUrl, progress };
const figures: Figure[] = [];
const notes: string[] = [];
let failed = false;
let version = "PostgreSQL (version unknown)";
// These machines are shared: the load beside the figures says how much to trust them.
const loadBefore = Deno.loadavg()[0]!;
const t0 = performance.now();
try {
  version = await serverVersion(serverUrl);
  for (const suite of suites) {
    try {
      figures.push(...await SUITES[suite](opts));
    } catch (e) {
      failed = true;
      notes.push(`${suite}: FAILED: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    }
  }
} catch (e) {
  failed = true;
  notes.push(`FAILED: ${e instanceof Error ? e.message : String(e)}`);
} finally {
  await stop();
}

console.log(
  `\ntrickle bench: ${version}, ${navigator.hardwareConcurrency} CPUs, ${
    ((performance.now() - t0) / 1000).toFixed(0)
  } s, ` +
    `load average ${loadBefore.toFixed(1)} before, ${Deno.loadavg()[0]!.toFixed(1)} after\n`,
);
if (figures.length > 0) console.log(renderTable(figures));
const held = figures.filter((f) => f.goal.kind !== "none");
const missed = held.filter((f) => !passes(f));
if (held.length > 0) {
  console.log(
    `\n${held.length - missed.length} of ${held.length} figures with a goal meet it` +
      (missed.length > 0 ? `; MISS: ${missed.map((f) => f.name).join("; ")}` : ""),
  );
}
for (const n of notes) console.log(n);
Deno.exit(failed ? 1 : 0);
