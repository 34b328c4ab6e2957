/**
 * The metrics endpoint's figures:
 *
 * 1. rendering /metrics for 10 databases x 1,000 stream tables (in-memory state built directly: the registry fed
 *    with refresh events and the catalog's part of a scrape as data; creating 10,000 real stream tables would take
 *    longer than the bench may), against JSON.stringify of the same data; goal under 50 ms;
 * 2. the conformance validator over that body, against the render (the self-check's cost as a fraction of it);
 * 3. a live scrape of a real service (2 databases x 50 stream tables: catalog, change buffers, workers) against
 *    GET /health of the same service;
 * 4. 50 concurrent clients for 10 s on a real HTTP server over the same service, each asking /metrics, /health and a
 *    trivial route in turn: the p99 of /metrics and of /health against the trivial route's p99. The clients run in a
 *    Web Worker (their own event loop), sharing the machine's CPUs with the server.
 */
import { EngineEvents } from "../engine/events.ts";
import { validateOpenMetrics } from "../engine/metrics/conformance.ts";
import { render } from "../engine/metrics/exposition.ts";
import { ACTIONS, MetricsRegistry } from "../engine/metrics/registry.ts";
import { type DatabaseScrape, families } from "../engine/metrics/scrape.ts";
import { createStreamTable } from "../engine/stream_tables.ts";
import { silentLogger } from "../log.ts";
import { createApp } from "../routes/app.ts";
import { startTestService } from "../tests/support/service.ts";
import { type BenchOptions, exec, type Figure, median, timeMs } from "./support.ts";

const DATABASES = 10;
const STREAM_TABLES = 1_000;
const RENDER_RUNS = 21;
const LIVE_DATABASES = 2;
const LIVE_STREAM_TABLES = 50;
const LIVE_RUNS = 21;
const CLIENTS = 50;
const LOAD_SECONDS = 10;

/** Runs the metrics benchmarks and returns their figures. */
export async function runMetricsBench(opts: BenchOptions): Promise<Figure[]> {
  return [...renderFigures(opts), ...await liveFigures(opts)];
}

function renderFigures(opts: BenchOptions): Figure[] {
  opts.progress(`metrics: building ${DATABASES} x ${STREAM_TABLES} stream tables in memory`);
  const events = new EngineEvents(silentLogger);
  const registry = new MetricsRegistry(events);
  const scrapes: DatabaseScrape[] = [];
  for (let d = 0; d < DATABASES; d++) {
    const db = { name: `tenant_${d}`, oid: 16_384 + d };
    const streamTables = [];
    for (let i = 0; i < STREAM_TABLES; i++) {
      const name = `orders_by_region_${i}`;
      for (const action of ACTIONS) {
        events.emit({
          type: "refresh_committed",
          db_name: db.name,
          db_oid: db.oid,
          pgt_id: i + 1,
          stream_table: `analytics.${name}`,
          action,
          reason: null,
          initiated_by: "SCHEDULER",
          duration_ms: 3 + (i % 200),
          rows_inserted: i,
          rows_deleted: i % 7,
          delta_rows: i,
        });
      }
      streamTables.push({
        pgt_id: i + 1,
        schema: "analytics",
        name,
        status: i % 50 === 0 ? "SUSPENDED" : "ACTIVE",
        consecutive_errors: i % 3,
        lag: (i % 17) / 3,
        since_refresh: (i % 60) + 0.25,
      });
    }
    const buffers = Array.from({ length: STREAM_TABLES }, (_, i) => ({ schema: "public", name: `src_${i}`, rows: i }));
    scrapes.push({ db, up: true, seconds: 0.004, streamTables, buffers });
  }
  const workers = {
    databases: scrapes.map((s) => ({
      db_oid: s.db.oid,
      db_name: s.db.name,
      workers_active: 1,
      workers_queued: 2,
      quota: 1,
      quota_utilization_pct: 100,
      oldest_queued_wait_ms: 5,
      leader: "trickle:1",
    })),
    workers_active: DATABASES,
    workers_queued: 2 * DATABASES,
    max_workers: DATABASES,
    quota: 1,
    utilization_pct: 100,
    instances: [],
    leaders: [],
  };
  const build = () => render(families(scrapes, { registry, workers, instance: "trickle:1" }), "openmetrics");
  const body = build();
  const check = validateOpenMetrics(body);
  if (!check.ok) throw new Error(`the rendered body is not valid: ${JSON.stringify(check.violations.slice(0, 3))}`);
  const renders: number[] = [];
  const validations: number[] = [];
  const baselines: number[] = [];
  for (let i = 0; i < RENDER_RUNS; i++) {
    renders.push(timeSync(build));
    validations.push(timeSync(() => validateOpenMetrics(body)));
    baselines.push(timeSync(() => JSON.stringify(scrapes)));
  }
  const series = body.split("\n").filter((l) => l !== "" && !l.startsWith("#")).length;
  const mb = (body.length / 1e6).toFixed(1);
  const render_ms = median(renders);
  opts.progress(`metrics: render ${render_ms.toFixed(1)} ms for ${series} samples, ${mb} MB`);
  return [
    {
      name: `/metrics render, ${DATABASES} dbs x ${STREAM_TABLES} STs (${series} samples, ${mb} MB)`,
      measuredMs: render_ms,
      baselineMs: median(baselines),
      baseline: "JSON.stringify of the same scrape data",
      goal: { kind: "ms", max: 50 },
      runs: RENDER_RUNS,
    },
    {
      name: `conformance self-check of that body`,
      measuredMs: median(validations),
      baselineMs: render_ms,
      baseline: "the render above (ratio = the self-check's cost as a fraction of the render)",
      goal: { kind: "ratio", max: 3 },
      runs: RENDER_RUNS,
    },
  ];
}

async function liveFigures(opts: BenchOptions): Promise<Figure[]> {
  const svc = await startTestService({ extraDatabases: LIVE_DATABASES - 1 });
  try {
    opts.progress(`metrics: creating ${LIVE_DATABASES} x ${LIVE_STREAM_TABLES} real stream tables`);
    for (const ctx of svc.engine.all()) {
      await exec(ctx.sql, "CREATE TABLE src (id int PRIMARY KEY, g int NOT NULL, v int NOT NULL)");
      await exec(ctx.sql, "INSERT INTO src SELECT i, i % 10, i FROM generate_series(1, 1000) i");
      for (let i = 0; i < LIVE_STREAM_TABLES; i++) {
        await createStreamTable(ctx, {
          name: { schema: "public", name: `st_${i}` },
          query: `SELECT g, count(*) AS n, sum(v) AS s FROM src WHERE g <> ${i % 10} GROUP BY g`,
          schedule: "1h",
          refreshMode: "AUTO",
          freshnessDeadlineMs: null,
        });
      }
      // Pending changes, so the freshness lag reads the buffer.
      await exec(ctx.sql, "UPDATE src SET v = v + 1 WHERE id <= 100");
    }
    const om = { accept: "application/openmetrics-text; version=1.0.0" };
    const scrapeMs: number[] = [];
    const healthMs: number[] = [];
    for (let i = 0; i < LIVE_RUNS; i++) {
      scrapeMs.push(await timeMs(async () => await (await svc.request("GET", "/metrics", undefined, om)).text()));
      healthMs.push(await timeMs(async () => await (await svc.request("GET", "/health")).text()));
    }
    const figures: Figure[] = [{
      name: `live /metrics scrape, ${LIVE_DATABASES} dbs x ${LIVE_STREAM_TABLES} STs (catalog, buffers, workers)`,
      measuredMs: median(scrapeMs),
      baselineMs: median(healthMs),
      baseline: "GET /health on the same service (in process)",
      goal: { kind: "ms", max: 50 },
      runs: LIVE_RUNS,
    }];

    // The same app as the service's, with one more route that does nothing: the baseline for the load's latencies.
    const app = createApp({
      engine: svc.engine,
      log: silentLogger,
      adminToken: null,
      readToken: null,
      bodyLimitBytes: 1 << 20,
      requestTimeoutMs: 30_000,
      metricsSelfCheck: true,
    });
    app.get("/bench-trivial", (c) => c.text("ok"));
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
    try {
      const base = `http://127.0.0.1:${server.addr.port}`;
      opts.progress(`metrics: ${CLIENTS} clients for ${LOAD_SECONDS} s on /metrics, /health, /bench-trivial`);
      const latencies = await load(base, ["/metrics", "/health", "/bench-trivial"]);
      const p99 = (path: string) => percentile(latencies.get(path)!, 0.99);
      const trivial = p99("/bench-trivial");
      const counts = [...latencies].map(([p, l]) => `${p} ${l.length}`).join(", ");
      for (const path of ["/metrics", "/health"]) {
        figures.push({
          name: `p99 ${path} under ${CLIENTS} clients, ${LOAD_SECONDS} s`,
          measuredMs: p99(path),
          baselineMs: trivial,
          baseline: `p99 of a trivial route on the same server in the same load (requests: ${counts})`,
          goal: { kind: "ratio", max: path === "/health" ? 2 : 20 },
          runs: latencies.get(path)!.length,
        });
      }
    } finally {
      await server.shutdown();
    }
    return figures;
  } finally {
    await svc.close();
  }
}

/** CLIENTS loops for LOAD_SECONDS in a worker, each asking the paths in turn; latencies per path. */
async function load(base: string, paths: string[]): Promise<Map<string, number[]>> {
  const worker = new Worker(new URL("./metrics_load_worker.ts", import.meta.url), { type: "module" });
  try {
    const done = new Promise<{ latencies: Record<string, number[]>; error: string | null }>((resolve, reject) => {
      worker.onmessage = (e) => resolve(e.data);
      worker.onerror = (e) => reject(new Error(e.message));
    });
    worker.postMessage({ base, paths, clients: CLIENTS, seconds: LOAD_SECONDS });
    const { latencies, error } = await done;
    if (error !== null) throw new Error(error);
    return new Map(Object.entries(latencies));
  } finally {
    worker.terminate();
  }
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

function timeSync(fn: () => unknown): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}
