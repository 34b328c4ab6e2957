/**
 * The cluster view (docs/integrations/multi-tenant.md): which database uses the workers, what waits, the quotas, and
 * per-database summaries. Every number comes from the SQL functions of sql/migrations/0004_cluster.sql, run in a
 * managed database: the worker markers are read from pg_stat_activity (cluster-wide), so any instance, and a SQL
 * query in any managed database, gives the same numbers. Nothing here queries across databases.
 */
import type { DatabaseContext } from "./context.ts";
import type { Engine } from "./engine.ts";
import { TrickleError } from "./errors.ts";
import type { ClusterWorkers, DatabaseWorkers } from "./scheduler/pool.ts";

/** One database's figures, as pgtrickle.metrics_summary() gives them. */
export interface DatabaseSummary {
  db_oid: number;
  db_name: string;
  stream_tables: number;
  active: number;
  initializing: number;
  suspended: number;
  error: number;
  refreshes_total: number;
  refreshes_failed_total: number;
  refreshes_last_hour: number;
  refreshes_failed_last_hour: number;
  rows_processed_total: number;
  rows_processed_last_hour: number;
  /** The oldest refresh still in history: the "total" counts start there. */
  history_since: string | null;
  workers_active: number;
  workers_queued: number;
  quota: number | null;
  quota_utilization_pct: number | null;
  stalest_stream_table: string | null;
  stalest_lag_ms: number | null;
}

/** The metrics summary: per database (of this instance) and the sums over them, with the cluster's worker use. */
export interface ClusterSummary {
  databases: DatabaseSummary[];
  cluster: Omit<DatabaseSummary, "db_oid" | "db_name" | "quota" | "quota_utilization_pct" | "stalest_stream_table"> & {
    databases: number;
    max_workers: number | null;
    utilization_pct: number | null;
    stalest_stream_table: { db_name: string; name: string; lag_ms: number } | null;
  };
}

/**
 * The worker summary of the cluster, read in the first managed database that answers, in one transaction (one
 * snapshot of pg_stat_activity, so totals and rows agree).
 */
export async function readClusterWorkers(
  contexts: DatabaseContext[],
  options: { coordinationDatabase: string },
): Promise<ClusterWorkers> {
  let failure: unknown = new Error("No managed database");
  for (const ctx of contexts) {
    try {
      return await workersIn(ctx, options.coordinationDatabase);
    } catch (e) {
      failure = e;
    }
  }
  throw failure;
}

type Nullable = { quota: number | null; quota_utilization_pct: number | null };

async function workersIn(ctx: DatabaseContext, coordination: string): Promise<ClusterWorkers> {
  return await ctx.sql.begin(async (tx) => {
    const rows = await tx<(Omit<DatabaseWorkers, "quota" | "quota_utilization_pct"> & Nullable)[]>`
      SELECT db_oid, db_name, workers_active, workers_queued, quota,
        quota_utilization_pct::float8 AS quota_utilization_pct, oldest_queued_wait_ms, leader
      FROM pgtrickle.cluster_worker_summary(${coordination})`;
    const [t] = await tx<
      {
        databases: number;
        max_workers: number | null;
        per_database_quota: number;
        quota: number | null;
        workers_active: number;
        workers_queued: number;
        utilization_pct: number | null;
      }[]
    >`SELECT databases, max_workers, per_database_quota, quota, workers_active, workers_queued,
        utilization_pct::float8 AS utilization_pct
      FROM pgtrickle.cluster_worker_totals(${coordination})`;
    const instances = await tx<{ instance: string; max_workers: number; per_database_quota: number }[]>`
      SELECT instance, max_workers, per_database_quota FROM pgtrickle.cluster_instances(${coordination})`;
    return {
      // No quota only while no instance marker is readable: shown as 0, the type the metrics gauges take.
      databases: rows.map((r) => ({ ...r, quota: r.quota ?? 0, quota_utilization_pct: r.quota_utilization_pct ?? 0 })),
      workers_active: t?.workers_active ?? 0,
      workers_queued: t?.workers_queued ?? 0,
      max_workers: t?.max_workers ?? 0,
      quota: t?.quota ?? null,
      utilization_pct: t?.utilization_pct ?? null,
      instances: instances.map((i) => ({ ...i })),
      leaders: rows.filter((r) => r.leader !== null)
        .map((r) => ({ db_oid: r.db_oid, db_name: r.db_name, instance: r.leader! })),
    };
  }) as ClusterWorkers;
}

/** The worker summary, optionally of one database; 404 when no instance of the cluster works for it. */
export async function clusterWorkerSummary(engine: Engine, database?: string): Promise<ClusterWorkers> {
  const all = await engine.scheduler.clusterWorkers();
  if (database === undefined) return all;
  const databases = all.databases.filter((d) => d.db_name === database);
  if (databases.length === 0 && !engine.databaseNames.includes(database)) {
    throw new TrickleError(
      "DatabaseNotFound",
      `Database "${database}" is not managed in this cluster (managed: ${
        [...new Set([...all.databases.map((d) => d.db_name), ...engine.databaseNames])].sort()
          .map((d) => `"${d}"`).join(", ")
      })`,
    );
  }
  return { ...all, databases, leaders: all.leaders.filter((l) => l.db_name === database) };
}

/** Per database of this instance (or the one named: 404 when not managed here) and the sums over them. */
export async function clusterSummary(engine: Engine, database?: string): Promise<ClusterSummary> {
  const contexts = database === undefined ? engine.all() : [engine.db(database)];
  const coordination = await engine.scheduler.coordinationDatabase();
  const [databases, workers] = await Promise.all([
    Promise.all(contexts.map((ctx) => summaryOf(ctx, coordination))),
    engine.scheduler.clusterWorkers(),
  ]);
  const sum = (k: keyof DatabaseSummary) => databases.reduce((s, d) => s + Number(d[k] ?? 0), 0);
  const stalest = databases.filter((d) => d.stalest_lag_ms !== null)
    .sort((a, b) => b.stalest_lag_ms! - a.stalest_lag_ms!)[0];
  const since = databases.map((d) => d.history_since).filter((s) => s !== null).sort()[0] ?? null;
  return {
    databases,
    cluster: {
      databases: databases.length,
      stream_tables: sum("stream_tables"),
      active: sum("active"),
      initializing: sum("initializing"),
      suspended: sum("suspended"),
      error: sum("error"),
      refreshes_total: sum("refreshes_total"),
      refreshes_failed_total: sum("refreshes_failed_total"),
      refreshes_last_hour: sum("refreshes_last_hour"),
      refreshes_failed_last_hour: sum("refreshes_failed_last_hour"),
      rows_processed_total: sum("rows_processed_total"),
      rows_processed_last_hour: sum("rows_processed_last_hour"),
      history_since: since,
      workers_active: sum("workers_active"),
      workers_queued: sum("workers_queued"),
      // max_workers and its use are the cluster's (every instance's databases); the rest sums the rows above.
      max_workers: workers.max_workers === 0 ? null : workers.max_workers,
      utilization_pct: workers.utilization_pct ?? null,
      stalest_stream_table: stalest === undefined
        ? null
        : { db_name: stalest.db_name, name: stalest.stalest_stream_table!, lag_ms: stalest.stalest_lag_ms! },
      stalest_lag_ms: stalest?.stalest_lag_ms ?? null,
    },
  };
}

async function summaryOf(ctx: DatabaseContext, coordination: string): Promise<DatabaseSummary> {
  const [row] = await ctx.sql<(Omit<DatabaseSummary, "history_since"> & { history_since: Date | null })[]>`
    SELECT db_oid, db_name, stream_tables, active, initializing, suspended, error, refreshes_total,
      refreshes_failed_total, refreshes_last_hour, refreshes_failed_last_hour, rows_processed_total,
      rows_processed_last_hour, history_since, workers_active, workers_queued, quota,
      quota_utilization_pct::float8 AS quota_utilization_pct, stalest_stream_table, stalest_lag_ms
    FROM pgtrickle.metrics_summary(${coordination})`;
  return { ...row!, history_since: row!.history_since?.toISOString() ?? null };
}
