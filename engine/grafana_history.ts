/**
 * The Grafana targets read from the refresh history (`pgtrickle.pgt_refresh_history`): per-stream-table time series
 * bucketed in SQL, the history as a table, and refresh failures as annotations. Grafana asks for a time range, so
 * these read the history table; /metrics (live figures for Prometheus) never does.
 */
import type { DatabaseContext } from "./context.ts";
import type { Engine } from "./engine.ts";
import type { Range, Selection } from "./grafana.ts";

/** One bucket of one stream table's refreshes. */
export interface Bucket {
  database: string;
  stream_table: string;
  status: string;
  /** The bucket's start, Unix milliseconds. */
  t: number;
  refreshes: number;
  failures: number;
  duration_ms: number;
  rows_changed: number;
  /** Upper bound of the freshness lag reached in the bucket, seconds (null when no refresh could tell). */
  lag_s: number | null;
}

/** The managed databases a selection chooses. */
export function chosen(engine: Engine, selection: Selection): DatabaseContext[] {
  return engine.all().filter((c) => selection.database(c.name));
}

/**
 * Refreshes bucketed by `range.bucketMs` (by the time each finished), per stream table of each chosen database.
 * The freshness lag of a refresh that applied changes is bounded by the time from the previous successful refresh's
 * snapshot (its start) to this one's commit: every change it applied committed after that snapshot. A NO_DATA refresh
 * found nothing pending: 0.
 */
export async function historyBuckets(engine: Engine, q: { range: Range; selection: Selection }): Promise<Bucket[]> {
  const out: Bucket[] = [];
  for (const ctx of chosen(engine, q.selection)) {
    const rows = await ctx.sql<Omit<Bucket, "database">[]>`
      SELECT s.pgt_schema || '.' || s.pgt_name AS stream_table, s.status,
        (extract(epoch FROM date_bin(make_interval(secs => ${q.range.bucketMs / 1000}), h.finished_at,
          ${q.range.from})) * 1000)::float8 AS t,
        count(*)::int AS refreshes,
        (count(*) FILTER (WHERE h.status = 'FAILED'))::int AS failures,
        avg(h.duration_ms)::float8 AS duration_ms,
        coalesce(sum(h.rows_inserted + h.rows_deleted) FILTER (WHERE h.status = 'SUCCESS'), 0)::float8 AS rows_changed,
        max(CASE WHEN h.status <> 'SUCCESS' THEN NULL WHEN h.action = 'NO_DATA' THEN 0
          ELSE extract(epoch FROM h.finished_at - prev.started_at) END)::float8 AS lag_s
      FROM pgtrickle.pgt_refresh_history h
      JOIN pgtrickle.pgt_stream_tables s ON s.pgt_id = h.pgt_id
      LEFT JOIN LATERAL (
        SELECT p.started_at FROM pgtrickle.pgt_refresh_history p
        WHERE p.pgt_id = h.pgt_id AND p.status = 'SUCCESS' AND p.started_at < h.started_at
        ORDER BY p.started_at DESC LIMIT 1
      ) prev ON true
      WHERE h.finished_at >= ${q.range.from} AND h.finished_at <= ${q.range.to}
      GROUP BY 1, 2, 3
      ORDER BY 1, 3`;
    for (const r of rows) {
      const b = { database: ctx.name, ...r };
      if (q.selection.matches(b)) out.push(b);
    }
  }
  return out;
}

/** The refreshes in the range as table rows, newest first, at most `limit` per database. */
export async function historyRows(
  engine: Engine,
  q: { range: Range; selection: Selection; limit: number },
): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for (const ctx of chosen(engine, q.selection)) {
    const rows = await ctx.sql<Record<string, unknown>[]>`
      SELECT (extract(epoch FROM h.finished_at) * 1000)::float8 AS time,
        s.pgt_schema || '.' || s.pgt_name AS stream_table, s.status AS st_status, h.action, h.status,
        h.duration_ms, h.rows_inserted::float8 AS rows_inserted, h.rows_deleted::float8 AS rows_deleted,
        h.delta_rows::float8 AS delta_rows, h.initiated_by, h.reason, h.error
      FROM pgtrickle.pgt_refresh_history h
      JOIN pgtrickle.pgt_stream_tables s ON s.pgt_id = h.pgt_id
      WHERE h.finished_at >= ${q.range.from} AND h.finished_at <= ${q.range.to}
      ORDER BY h.finished_at DESC LIMIT ${q.limit}`;
    for (const r of rows) {
      const subject = { database: ctx.name, stream_table: r.stream_table as string, status: r.st_status as string };
      if (q.selection.matches(subject)) out.push({ ...r, database: ctx.name });
    }
  }
  return out.sort((a, b) => (b.time as number) - (a.time as number));
}

/** A Grafana annotation event. */
export interface AnnotationEvent {
  time: number;
  timeEnd: number;
  title: string;
  text: string;
  tags: string[];
}

type AnnotationQuery = { range: Range; selection: Selection };

/**
 * The annotation events of every chosen database: `read` gets a database's rows of the range, `event` makes one event
 * of a row (null: the ad-hoc filters leave it out). Newest first.
 */
async function eventsOf<T>(
  engine: Engine,
  q: AnnotationQuery,
  read: (ctx: DatabaseContext) => Promise<readonly T[]>,
  event: (ctx: DatabaseContext, row: T) => AnnotationEvent | null,
): Promise<AnnotationEvent[]> {
  const out: AnnotationEvent[] = [];
  for (const ctx of chosen(engine, q.selection)) {
    for (const row of await read(ctx)) {
      const e = event(ctx, row);
      if (e !== null) out.push(e);
    }
  }
  return out.sort((a, b) => b.time - a.time);
}

/** Failed refreshes in the range, as annotations: when, which stream table, the error. */
export function failureAnnotations(engine: Engine, q: AnnotationQuery): Promise<AnnotationEvent[]> {
  return eventsOf(
    engine,
    q,
    (ctx) =>
      ctx.sql<
        { started: number; finished: number; stream_table: string; status: string; action: string; error: string }[]
      >`
      SELECT (extract(epoch FROM h.started_at) * 1000)::float8 AS started,
        (extract(epoch FROM h.finished_at) * 1000)::float8 AS finished,
        s.pgt_schema || '.' || s.pgt_name AS stream_table, s.status, h.action, coalesce(h.error, '') AS error
      FROM pgtrickle.pgt_refresh_history h
      JOIN pgtrickle.pgt_stream_tables s ON s.pgt_id = h.pgt_id
      WHERE h.status = 'FAILED' AND h.finished_at >= ${q.range.from} AND h.finished_at <= ${q.range.to}
      ORDER BY h.finished_at DESC LIMIT 1000`,
    (ctx, r) =>
      q.selection.matches({ database: ctx.name, stream_table: r.stream_table, status: r.status })
        ? {
          time: r.started,
          timeEnd: r.finished,
          title: `Refresh of ${r.stream_table} failed (${ctx.name})`,
          text: r.error,
          tags: ["refresh_failure", `database:${ctx.name}`, `stream_table:${r.stream_table}`],
        }
        : null,
  );
}

/** Alerts fired or resolved in the range (the planner's outbox), as annotations: when, which stream table, what. */
export function alertAnnotations(engine: Engine, q: AnnotationQuery): Promise<AnnotationEvent[]> {
  return eventsOf(
    engine,
    q,
    (ctx) =>
      ctx.sql<
        { at: number; stream_table: string; kind: string; state: string; severity: string; payload: unknown }[]
      >`
      SELECT (extract(epoch FROM created_at) * 1000)::float8 AS at, stream_table, kind, state, severity, payload
      FROM pgtrickle.pgt_alerts
      WHERE created_at >= ${q.range.from} AND created_at <= ${q.range.to}
      ORDER BY created_at DESC LIMIT 1000`,
    (ctx, r) =>
      q.selection.matches({ database: ctx.name, stream_table: r.stream_table })
        ? {
          time: r.at,
          timeEnd: r.at,
          title: `${r.kind} ${r.state} for ${r.stream_table} (${ctx.name})`,
          text: JSON.stringify(r.payload),
          tags: [
            "alert",
            r.kind,
            r.state,
            `severity:${r.severity}`,
            `database:${ctx.name}`,
            `stream_table:${r.stream_table}`,
          ],
        }
        : null,
  );
}
