/**
 * Every Grafana target, by name: its label, whether it is chosen per stream table, and how it answers. To add one,
 * add an entry to TARGETS; /metrics, /query and the docs'
 * target list follow from it.
 */
import { listStreamTables } from "./catalog.ts";
import type { Engine } from "./engine.ts";
import type { Frame, Range, Selection } from "./grafana.ts";
import {
  alertAnnotations,
  type Bucket,
  chosen,
  failureAnnotations,
  historyBuckets,
  historyRows,
} from "./grafana_history.ts";
import { listRecommendations } from "./planner/read.ts";
import { listSnapshots } from "./snapshots.ts";

export interface TargetQuery {
  range: Range;
  selection: Selection;
}

export interface Target {
  label: string;
  /** Whether the target offers the stream_table payload (a worker row has no stream table). */
  perStreamTable: boolean;
  run(engine: Engine, q: TargetQuery): Promise<Frame[]>;
}

type Column = [text: string, type: "time" | "string" | "number"];

function table(columns: Column[], rows: unknown[][]): Frame {
  return { type: "table", columns: columns.map(([text, type]) => ({ text, type })), rows };
}

/** A time series per stream table from the history buckets: `value` picks the figure. */
function series(label: string, value: (b: Bucket, bucketMs: number) => number | null): Target {
  return {
    label,
    perStreamTable: true,
    run: async (engine, q) => {
      const bySeries = new Map<string, [number, number][]>();
      for (const b of await historyBuckets(engine, q)) {
        const v = value(b, q.range.bucketMs);
        if (v === null) continue;
        const name = `${b.database}/${b.stream_table}`;
        const points = bySeries.get(name) ?? [];
        points.push([v, b.t]);
        bySeries.set(name, points);
      }
      return [...bySeries].map(([target, datapoints]) => ({ target, datapoints }));
    },
  };
}

export const TARGETS: Record<string, Target> = {
  refresh_duration_ms: series("Refresh duration (ms, mean per interval)", (b) => b.duration_ms),
  refresh_rate: series("Refresh rate (refreshes per second)", (b, ms) => b.refreshes / (ms / 1000)),
  refresh_failures_count: series("Failed refreshes (per interval)", (b) => b.failures),
  freshness_lag_seconds: series("Freshness lag (seconds, upper bound, from the history)", (b) => b.lag_s),
  rows_changed: series("Rows changed (inserted + deleted, per interval)", (b) => b.rows_changed),
  stream_tables: {
    label: "Stream tables (table)",
    perStreamTable: true,
    run: async (engine, q) => {
      const rows: unknown[][] = [];
      for (const ctx of chosen(engine, q.selection)) {
        for (const st of await listStreamTables(ctx.sql)) {
          const name = `${st.pgt_schema}.${st.pgt_name}`;
          if (!q.selection.matches({ database: ctx.name, stream_table: name, status: st.status })) continue;
          rows.push([
            ctx.name,
            name,
            st.status,
            st.effective_refresh_mode,
            st.schedule,
            st.last_refresh_at === null ? null : st.last_refresh_at.getTime(),
            Number(st.row_count),
            st.consecutive_errors,
            st.last_error,
          ]);
        }
      }
      return [table([
        ["database", "string"],
        ["stream_table", "string"],
        ["status", "string"],
        ["refresh_mode", "string"],
        ["schedule", "string"],
        ["last_refresh", "time"],
        ["row_count", "number"],
        ["consecutive_errors", "number"],
        ["last_error", "string"],
      ], rows)];
    },
  },
  refresh_history: {
    label: "Refresh history (table, newest first)",
    perStreamTable: true,
    run: async (engine, q) => {
      const rows = await historyRows(engine, { ...q, limit: 1000 });
      const columns: Column[] = [
        ["time", "time"],
        ["database", "string"],
        ["stream_table", "string"],
        ["action", "string"],
        ["status", "string"],
        ["duration_ms", "number"],
        ["rows_inserted", "number"],
        ["rows_deleted", "number"],
        ["delta_rows", "number"],
        ["initiated_by", "string"],
        ["reason", "string"],
        ["error", "string"],
      ];
      return [table(columns, rows.map((r) => columns.map(([c]) => r[c] ?? null)))];
    },
  },
  refresh_failures: {
    label: "Refresh failures (table; usable as annotations)",
    perStreamTable: true,
    run: async (engine, q) => {
      const events = await failureAnnotations(engine, q);
      return [table(
        [["time", "time"], ["timeEnd", "time"], ["title", "string"], ["text", "string"], ["tags", "string"]],
        events.map((e) => [e.time, e.timeEnd, e.title, e.text, e.tags.join(",")]),
      )];
    },
  },
  alerts: {
    label: "Alerts fired and resolved (table; usable as annotations)",
    perStreamTable: true,
    run: async (engine, q) => {
      const events = await alertAnnotations(engine, q);
      return [table(
        [["time", "time"], ["timeEnd", "time"], ["title", "string"], ["text", "string"], ["tags", "string"]],
        events.map((e) => [e.time, e.timeEnd, e.title, e.text, e.tags.join(",")]),
      )];
    },
  },
  recommendations: {
    label: "Schedule recommendations (table, by delta_pct)",
    perStreamTable: true,
    run: async (engine, q) => {
      const rows: unknown[][] = [];
      for (const ctx of chosen(engine, q.selection)) {
        for (const r of await listRecommendations(ctx, { sort: "delta_pct" })) {
          if (!q.selection.matches({ database: ctx.name, stream_table: r.stream_table })) continue;
          rows.push([
            ctx.name,
            r.stream_table,
            r.current_interval_seconds,
            r.recommended_interval_seconds,
            r.delta_pct,
            r.confidence,
            r.peak_window_cron,
            r.reasoning.map((x) => x.rule).join(", "),
          ]);
        }
      }
      return [table([
        ["database", "string"],
        ["stream_table", "string"],
        ["current_interval_seconds", "number"],
        ["recommended_interval_seconds", "number"],
        ["delta_pct", "number"],
        ["confidence", "number"],
        ["peak_window_cron", "string"],
        ["rules", "string"],
      ], rows)];
    },
  },
  snapshots: {
    label: "Snapshots (table, newest first)",
    perStreamTable: true,
    run: async (engine, q) => {
      const rows: unknown[][] = [];
      for (const ctx of chosen(engine, q.selection)) {
        for (const s of await listSnapshots(ctx, null)) {
          if (!q.selection.matches({ database: ctx.name, stream_table: s.stream_table })) continue;
          rows.push([
            s.created_at.getTime(),
            ctx.name,
            s.stream_table,
            s.snapshot,
            s.row_count,
            s.size_bytes,
            s.retention_state,
            s.pinned_changes,
            s.rows_only_reason,
          ]);
        }
      }
      return [table([
        ["created_at", "time"],
        ["database", "string"],
        ["stream_table", "string"],
        ["snapshot", "string"],
        ["row_count", "number"],
        ["size_bytes", "number"],
        ["retention_state", "string"],
        ["pinned_changes", "number"],
        ["rows_only_reason", "string"],
      ], rows)];
    },
  },
  cluster_workers: {
    label: "Cluster workers per database (table)",
    perStreamTable: false,
    run: async (engine, q) => {
      const cluster = await engine.scheduler.clusterWorkers();
      const rows = cluster.databases
        .filter((d) => q.selection.matches({ database: d.db_name }))
        .map((d) => [
          d.db_name,
          d.db_oid,
          d.workers_active,
          d.workers_queued,
          d.quota,
          d.quota_utilization_pct,
          d.oldest_queued_wait_ms,
        ]);
      return [table([
        ["database", "string"],
        ["db_oid", "number"],
        ["workers_active", "number"],
        ["workers_queued", "number"],
        ["quota", "number"],
        ["quota_utilization_pct", "number"],
        ["oldest_queued_wait_ms", "number"],
      ], rows)];
    },
  },
};

/** Every stream table of the chosen databases, as (database, "schema.name"). */
export async function streamTableKeys(
  engine: Engine,
  selection: Selection,
): Promise<{ database: string; stream_table: string }[]> {
  const out: { database: string; stream_table: string }[] = [];
  for (const ctx of chosen(engine, selection)) {
    for (const st of await listStreamTables(ctx.sql)) {
      out.push({ database: ctx.name, stream_table: `${st.pgt_schema}.${st.pgt_name}` });
    }
  }
  return out;
}
