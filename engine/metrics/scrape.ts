/**
 * One scrape: the registry's in-memory counts plus cheap reads per database (the stream-table catalog rows, the
 * change buffers' pending part for freshness, the cluster's worker markers), as metric families. Every series carries
 * `db_oid` and `db_name`, the service-wide ones repeated per database. Never reads the refresh history.
 */
import type { DatabaseContext } from "../context.ts";
import type { ClusterWorkers } from "../scheduler/pool.ts";
import { VERSION } from "../../version.ts";
import { escapeLabelValue, type Family, type HistogramSample, labelText, type Sample } from "./exposition.ts";
import { freshness } from "./freshness.ts";
import { ACTIONS, DURATION_BOUNDS, type Histogram, type MetricsRegistry } from "./registry.ts";

/** What one database's catalog says, plus its scrape outcome. */
export interface DatabaseScrape {
  db: { name: string; oid: number };
  up: boolean;
  seconds: number;
  streamTables: {
    pgt_id: number;
    schema: string;
    name: string;
    status: string;
    consecutive_errors: number;
    lag: number | null;
    since_refresh: number | null;
  }[];
  buffers: { schema: string; name: string; rows: number }[];
}

interface CatalogRow {
  pgt_id: number;
  pgt_schema: string;
  pgt_name: string;
  status: string;
  consecutive_errors: number;
  frontier: string | null;
  last_refresh_at: number | null;
}

/** Reads one database's part of a scrape; a database that cannot be read is `up: false` with no stream tables. */
export async function scrapeDatabase(ctx: DatabaseContext, registry: MetricsRegistry): Promise<DatabaseScrape> {
  const t0 = performance.now();
  const db = { name: ctx.name, oid: ctx.oid };
  try {
    // This statement's snapshot and time are the scrape's sample of the MVCC clock (freshness.ts).
    const [clock] = await ctx.sql<{ at: number; snapshot: string }[]>`
      SELECT extract(epoch FROM statement_timestamp())::float8 AS at, pg_current_snapshot()::text AS snapshot`;
    const sample = clock!;
    const rows = await ctx.sql<CatalogRow[]>`
      SELECT pgt_id, pgt_schema, pgt_name, status, consecutive_errors, frontier::text AS frontier,
             extract(epoch FROM last_refresh_at)::float8 AS last_refresh_at
        FROM pgtrickle.pgt_stream_tables ORDER BY pgt_schema, pgt_name`;
    const reads = await ctx.sql<{ pgt_id: number; source_relid: number }[]>`
      SELECT d.pgt_id, d.source_relid::int8 AS source_relid FROM pgtrickle.pgt_dependencies d
        JOIN pgtrickle.pgt_change_buffers b USING (source_relid)`;
    const buffers = await ctx.sql<{ source_relid: number; source_schema: string; source_name: string }[]>`
      SELECT source_relid::int8 AS source_relid, source_schema, source_name FROM pgtrickle.pgt_change_buffers
       ORDER BY source_schema, source_name`;
    const counts = registry.database(ctx.oid);
    const withFrontier = rows.filter((r) => r.frontier !== null).map((r) => ({
      pgt_id: r.pgt_id,
      frontier: r.frontier!,
      last_refresh_at: r.last_refresh_at,
    }));
    const elapsed = () => (performance.now() - t0) / 1000;
    const result = await freshness(ctx.sql, {
      streamTables: withFrontier,
      reads: [...reads],
      samples: [...counts.samples, sample],
      now: sample.at + elapsed(),
    });
    registry.addSample(ctx.oid, sample);
    const now = sample.at + elapsed();
    return {
      db,
      up: true,
      seconds: elapsed(),
      streamTables: rows.map((r) => ({
        pgt_id: r.pgt_id,
        schema: r.pgt_schema,
        name: r.pgt_name,
        status: r.status,
        consecutive_errors: r.consecutive_errors,
        lag: millis(result.lag.get(r.pgt_id) ?? null),
        since_refresh: r.last_refresh_at === null ? null : millis(Math.max(0, now - r.last_refresh_at)),
      })),
      buffers: buffers.map((b) => ({
        schema: b.source_schema,
        name: b.source_name,
        rows: result.bufferRows.get(b.source_relid) ?? 0,
      })),
    };
  } catch (e) {
    ctx.log.warn("metrics: could not read the database", { error: e instanceof Error ? e.message : String(e) });
    return { db, up: false, seconds: (performance.now() - t0) / 1000, streamTables: [], buffers: [] };
  }
}

type Gauge = (s: DatabaseScrape["streamTables"][number]) => number | null;

const ST_GAUGES: [name: string, help: string, unit: string | undefined, value: Gauge][] = [
  [
    "pg_trickle_consecutive_errors",
    "Failed refreshes in a row per stream table",
    undefined,
    (s) => s.consecutive_errors,
  ],
  ["pg_trickle_active", "Stream table is ACTIVE (1) or not (0)", undefined, (s) => (s.status === "ACTIVE" ? 1 : 0)],
  [
    "pg_trickle_freshness_lag_seconds",
    "Age of the oldest committed source change not yet in the stream table; 0 when it has them all",
    "seconds",
    (s) => s.lag,
  ],
  [
    "pg_trickle_last_refresh_age_seconds",
    "Seconds since the last successful refresh of the stream table",
    "seconds",
    (s) => s.since_refresh,
  ],
];

const COUNTERS: [name: string, help: string][] = [
  ["pg_trickle_refreshes", "Successful refreshes per stream table since the service started"],
  ["pg_trickle_refresh_failures", "Failed refreshes per stream table since the service started"],
  ["pg_trickle_rows_changed", "Rows inserted plus rows deleted by refreshes per stream table"],
];

/** The metric families of a scrape, in a fixed order. */
export function families(
  scrapes: DatabaseScrape[],
  options: { registry: MetricsRegistry; workers: ClusterWorkers | null; instance: string },
): Family[] {
  const { registry } = options;
  const dbLabels = (d: DatabaseScrape["db"]) => [["db_oid", d.oid], ["db_name", d.name]] as [string, string | number][];
  // Hot path (every stream table and source, every family): plain concatenation, escaping only what needs it.
  const dbText = (d: DatabaseScrape["db"]) => `db_oid="${d.oid}",db_name="${escapeLabelValue(d.name)}"`;
  const stLabels = (db: string, s: { schema: string; name: string }) =>
    `${db},schema="${escapeLabelValue(s.schema)}",name="${escapeLabelValue(s.name)}"`;
  const perDb = (value: (d: DatabaseScrape) => number): Sample[] =>
    scrapes.map((d) => ({ labels: labelText(dbLabels(d.db)), value: value(d) }));
  const out: Family[] = [
    {
      name: "pg_trickle",
      type: "info",
      help: "The trickle service and its version, per managed database",
      samples: scrapes.map((d) => ({
        labels: labelText([...dbLabels(d.db), ["version", VERSION], ["instance", options.instance]]),
        value: 1,
      })),
    },
    { name: "pg_trickle_database", type: "info", help: "A managed database", samples: perDb(() => 1) },
    {
      name: "pg_trickle_up",
      type: "gauge",
      help: "The database's metrics could be read (1) or not (0)",
      samples: perDb((d) => (d.up ? 1 : 0)),
    },
    {
      name: "pg_trickle_scrape_duration_seconds",
      type: "gauge",
      unit: "seconds",
      help: "Time this scrape spent reading the database",
      samples: perDb((d) => d.seconds),
    },
  ];
  // One pass over the stream tables, their labels escaped once for every family they appear in.
  const counters: Sample[][] = [[], [], []];
  const gauges = ST_GAUGES.map((): Sample[] => []);
  for (const d of scrapes) {
    const db = dbText(d.db);
    for (const s of d.streamTables) {
      const labels = stLabels(db, s);
      const c = registry.streamTable(d.db.oid, s.pgt_id);
      counters[0]!.push({ labels, value: c.refreshes.value, created: c.refreshes.created });
      counters[1]!.push({ labels, value: c.failures.value, created: c.failures.created });
      counters[2]!.push({ labels, value: c.rowsChanged.value, created: c.rowsChanged.created });
      for (let i = 0; i < ST_GAUGES.length; i++) {
        const v = ST_GAUGES[i]![3](s);
        if (v !== null) gauges[i]!.push({ labels, value: v });
      }
    }
  }
  COUNTERS.forEach(([name, help], i) => out.push({ name, type: "counter", help, samples: counters[i]! }));
  ST_GAUGES.forEach(([name, help, unit], i) => {
    const samples = gauges[i]!;
    out.push(
      unit === undefined ? { name, type: "gauge", help, samples } : { name, type: "gauge", help, unit, samples },
    );
  });
  out.push({
    name: "pg_trickle_refresh_duration_seconds",
    type: "histogram",
    unit: "seconds",
    help: "Duration of successful refreshes per database and action",
    bounds: DURATION_BOUNDS,
    samples: scrapes.flatMap((d) =>
      ACTIONS.map((a) =>
        histogramSample(labelText([...dbLabels(d.db), ["action", a]]), registry.histogram(d.db.oid, a))
      )
    ),
  }, {
    name: "pg_trickle_change_buffer_rows",
    type: "gauge",
    help: "Rows in the change buffer of a source table (schema, name: the source)",
    samples: scrapes.flatMap((d) => {
      const db = dbText(d.db);
      return d.buffers.map((b) => ({ labels: stLabels(db, b), value: b.rows }));
    }),
  });
  const workers = new Map((options.workers?.databases ?? []).map((w) => [w.db_oid, w]));
  const worker = (name: string, help: string, pick: (w: ClusterWorkers["databases"][number]) => number): Family => ({
    name,
    type: "gauge",
    help,
    samples: scrapes.flatMap((d) => {
      const w = workers.get(d.db.oid);
      return w === undefined ? [] : [{ labels: labelText(dbLabels(d.db)), value: pick(w) }];
    }),
  });
  out.push(
    worker(
      "pg_trickle_workers_active",
      "Scheduled refreshes running in the database, cluster-wide",
      (w) => w.workers_active,
    ),
    worker(
      "pg_trickle_workers_queued",
      "Scheduled refreshes waiting for a worker in the database",
      (w) => w.workers_queued,
    ),
    worker("pg_trickle_workers_quota", "Refreshes the database may run at once", (w) => w.quota),
  );
  const keyed = (
    name: string,
    help: string,
    labelNames: string[],
    pick: (oid: number) => Map<string, { value: number; created: number }>,
  ): Family => ({
    name,
    type: "counter",
    help,
    samples: scrapes.flatMap((d) =>
      [...pick(d.db.oid)].sort(([a], [b]) => a.localeCompare(b)).map(([key, c]) => {
        const values: string[] = labelNames.length === 1 ? [key] : JSON.parse(key);
        return {
          labels: labelText([...dbLabels(d.db), ...labelNames.map((l, i) => [l, values[i] ?? ""] as [string, string])]),
          value: c.value,
          created: c.created,
        };
      })
    ),
  });
  out.push(
    keyed("pg_trickle_alerts", "Alerts raised, by kind", ["kind"], (oid) => registry.database(oid).alerts),
    keyed(
      "pg_trickle_webhook_deliveries",
      "Webhook delivery attempts, by sink and outcome",
      ["sink", "outcome"],
      (oid) => registry.database(oid).deliveries,
    ),
    {
      name: "pg_trickle_metrics_self_check_failures",
      type: "counter",
      help: "Expositions that failed the service's own OpenMetrics conformance check",
      samples: scrapes.map((d) => {
        const c = registry.database(d.db.oid).selfCheckFailures;
        return { labels: labelText(dbLabels(d.db)), value: c.value, created: c.created };
      }),
    },
  );
  return out;
}

/** Seconds rounded to the millisecond: finer is noise here, and the renderer writes such values fast. */
function millis(seconds: number | null): number | null {
  return seconds === null ? null : Math.round(seconds * 1000) / 1000;
}

function histogramSample(labels: string, h: Histogram): HistogramSample {
  let running = 0;
  const cumulative = h.buckets.map((n) => (running += n));
  return { labels, cumulative: [...cumulative, h.count], sum: h.sum, count: h.count, created: h.created };
}
