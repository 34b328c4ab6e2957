/**
 * A planner pass over one database: read every stream table's recent history, catalog row, pending changes and alert
 * state (a few queries, not one per stream table, except pending changes of stream tables with sources), run the
 * rules, store the recommendations with the pass time, and fire or resolve alerts, each in its deciding transaction.
 */
import { deltaStats } from "../cdc.ts";
import type { DatabaseContext } from "../context.ts";
import type { CostSample } from "../cost_model.ts";
import { type AlertSinks, alertStates, decideAlert, writeAlert } from "../alerts/outbox.ts";
import { buildFacts, type Facts, type HistoryStats, historyStats } from "./facts.ts";
import type { Evaluation, RuleSet } from "./recommend.ts";
import { ALERT_KINDS } from "./rules.ts";

/** The latest successful refreshes per stream table the planner reads. */
export const HISTORY_WINDOW = 1000;

export interface PlannerSettings {
  minSamples: number;
  cooldownSeconds: number;
  sinks: AlertSinks;
}

/**
 * Per stream table: its latest HISTORY_WINDOW successful refreshes (newest first) as of refresh `lastRefreshId`, and
 * their statistics. A pass reads only the refreshes after it.
 */
export type HistoryCache = Map<number, { lastRefreshId: number; samples: CompactSamples; stats: HistoryStats }>;

/**
 * Samples newest first, one typed array per field: 25 bytes a sample instead of about 180 as objects with a Date
 * (1,000 stream tables x 1,000 refreshes: 25 MB, not 180 MB).
 */
export interface CompactSamples {
  full: Uint8Array;
  durations: Float64Array;
  deltas: Float64Array;
  startsMs: Float64Array;
}

function compact(samples: readonly CostSample[]): CompactSamples {
  return {
    full: Uint8Array.from(samples, (s) => (s.action === "FULL" ? 1 : 0)),
    durations: Float64Array.from(samples, (s) => s.duration_ms),
    deltas: Float64Array.from(samples, (s) => s.delta_rows),
    startsMs: Float64Array.from(samples, (s) => s.started_at.getTime()),
  };
}

function expand(c: CompactSamples | undefined): CostSample[] {
  if (c === undefined) return [];
  return Array.from(c.durations, (duration_ms, i) => ({
    action: c.full[i] === 1 ? "FULL" as const : "DIFFERENTIAL" as const,
    duration_ms,
    delta_rows: c.deltas[i]!,
    started_at: new Date(c.startsMs[i]!),
  }));
}

export interface PassOptions {
  rules: RuleSet;
  /** Kept by the planner across passes of one database: history is read and summarised again only when it grew. */
  cache: HistoryCache;
  settings: PlannerSettings;
  /** Store recommendations (a full pass); false: only check alerts (after a tick, stream tables with a deadline). */
  recommend: boolean;
}

export interface PassResult {
  stream_tables: number;
  duration_ms: number;
  /** Alerts written: `kind:state:stream_table`. */
  alerts: string[];
  /** Milliseconds per phase (catalog, history, pending, rules, store, alerts): where a slow pass spends its time. */
  phases: Record<string, number>;
}

interface Row {
  pgt_id: number;
  pgt_schema: string;
  pgt_name: string;
  effective_refresh_mode: "FULL" | "DIFFERENTIAL";
  schedule: string;
  freshness_deadline_ms: number | null;
  status: string;
  last_refresh_at: Date | null;
  frontier: string | null;
  sources: number[];
  source_rows: number | null;
  last_refresh_id: number | null;
}

interface HistoryRow {
  pgt_id: number;
  actions: ("FULL" | "DIFFERENTIAL")[] | null;
  durations: number[] | null;
  deltas: number[] | null;
  starts: number[] | null;
}

/**
 * The longest a pass computes without letting the event loop run (ms): the refreshes beside it wait for their
 * database answers to be handled, so a pass's CPU work is cut into slices this short.
 */
const SLICE_MS = 3;

/** A yield to the event loop once the current slice of work has run SLICE_MS. */
function slicer(): () => Promise<void> {
  let start = performance.now();
  return async () => {
    if (performance.now() - start < SLICE_MS) return;
    await new Promise((r) => setTimeout(r, 0));
    start = performance.now();
  };
}

/** One pass over the database. */
export async function planPass(ctx: DatabaseContext, options: PassOptions): Promise<PassResult> {
  const t0 = performance.now();
  const now = ctx.clock.now();
  const phases: Record<string, number> = {};
  let mark = performance.now();
  const phase = (name: string) => {
    const t = performance.now();
    phases[name] = Math.round(t - mark);
    mark = t;
  };
  const all = await readStreamTables(ctx, { deadlineOnly: !options.recommend });
  phase("catalog");
  const grown = await refreshHistoryCache(ctx, { rows: all, cache: options.cache, partial: !options.recommend });
  phase("history");
  const pending = await pendingChanges(ctx, all);
  const states = await alertStates(ctx.sql, all.map((r) => r.pgt_id));
  phase("pending");
  // An alert check (not a full pass) runs the rules again only where an alert could change: new refreshes, pending
  // changes, an alert firing, or data past its deadline. A full pass runs them for every stream table.
  const rows = options.recommend ? all : all.filter((r) =>
    grown.has(r.pgt_id) || (pending.get(r.pgt_id) ?? 0) > 0 ||
    [...(states.get(r.pgt_id)?.values() ?? [])].some((s) => s.active) ||
    (r.last_refresh_at !== null && now.getTime() - r.last_refresh_at.getTime() > Number(r.freshness_deadline_ms))
  );
  const evaluations: { row: Row; facts: Facts; evaluation: Evaluation }[] = [];
  const yieldNow = slicer();
  for (const row of rows) {
    await yieldNow();
    const state = states.get(row.pgt_id);
    const facts = buildFacts({
      schema: row.pgt_schema,
      name: row.pgt_name,
      refreshMode: row.effective_refresh_mode,
      schedule: row.schedule,
      freshnessDeadlineMs: row.freshness_deadline_ms === null ? null : Number(row.freshness_deadline_ms),
      lastRefreshAt: row.last_refresh_at,
      hasFrontier: row.frontier !== null,
      pendingChanges: pending.get(row.pgt_id) ?? 0,
      sourceRows: row.source_rows === null ? null : Number(row.source_rows),
      maxChangeRatio: ctx.settings.differentialMaxChangeRatio,
      history: options.cache.get(row.pgt_id)!.stats,
      minSamples: options.settings.minSamples,
      lastFired: {
        predicted_sla_breach: state?.get("predicted_sla_breach")?.last_fired_at ?? null,
        freshness_deadline_missed: state?.get("freshness_deadline_missed")?.last_fired_at ?? null,
      },
      now,
    });
    evaluations.push({ row, facts, evaluation: await options.rules.evaluate(facts) });
  }
  phase("rules");
  if (options.recommend) await storeRecommendations(ctx, { evaluations, now, t0 });
  phase("store");
  const alerts: string[] = [];
  for (const e of evaluations) {
    // Alerts concern stream tables being scheduled; a suspended or failed one is another problem, reported apart.
    const holds = new Set(e.row.status === "ACTIVE" ? e.evaluation.alerts.map((a) => a.kind) : []);
    const decide = (kind: typeof ALERT_KINDS[number]) =>
      decideAlert(states.get(e.row.pgt_id)?.get(kind), {
        holds: holds.has(kind),
        now,
        cooldownSeconds: options.settings.cooldownSeconds,
      });
    if (ALERT_KINDS.every((k) => decide(k) === null)) continue;
    alerts.push(...await decideAndWrite(ctx, { ...e, holds, now, settings: options.settings }));
  }
  phase("alerts");
  return { stream_tables: rows.length, duration_ms: performance.now() - t0, alerts, phases };
}

/** Re-decides under the state rows' lock (a refresh's hook may have resolved meanwhile) and writes the alerts. */
async function decideAndWrite(
  ctx: DatabaseContext,
  e: { row: Row; facts: Facts; evaluation: Evaluation; holds: Set<string>; now: Date; settings: PlannerSettings },
): Promise<string[]> {
  const name = `${e.row.pgt_schema}.${e.row.pgt_name}`;
  return await ctx.sql.begin(async (tx) => {
    // The stream table's row first, the lock order of a refresh (its row, then the hook's state rows). One being
    // refreshed is skipped rather than waited for, and one refreshed since its facts were read is left to the next
    // pass: its facts are stale (the refresh may have resolved what they say).
    const [st] = await tx<{ last_refresh_at: Date | null }[]>`
      SELECT last_refresh_at FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${e.row.pgt_id} FOR UPDATE SKIP LOCKED`;
    if (st === undefined || st.last_refresh_at?.getTime() !== e.row.last_refresh_at?.getTime()) return [];
    const states = (await alertStates(tx, [e.row.pgt_id], { lock: true })).get(e.row.pgt_id);
    const written: string[] = [];
    for (const kind of ALERT_KINDS) {
      const decision = decideAlert(states?.get(kind), {
        holds: e.holds.has(kind),
        now: e.now,
        cooldownSeconds: e.settings.cooldownSeconds,
      });
      if (decision === null) continue;
      const condition = e.evaluation.alerts.find((a) => a.kind === kind);
      await writeAlert(tx, {
        pgt_id: e.row.pgt_id,
        stream_table: name,
        kind,
        state: decision === "fire" ? "firing" : "resolved",
        severity: condition?.severity ?? (kind === "freshness_deadline_missed" ? "critical" : "warning"),
        db_name: ctx.name,
        db_oid: ctx.oid,
        figures: figures(e.facts),
      }, { now: e.now, sinks: e.settings.sinks });
      written.push(`${kind}:${decision === "fire" ? "firing" : "resolved"}:${name}`);
    }
    return written;
  });
}

/** The numbers an alert carries: predicted_ms and sla_ms (the names), and the data's age. */
export function figures(facts: Facts): Record<string, number | null> {
  const round = (v: unknown) => typeof v === "number" ? Math.round(v) : null;
  return {
    predicted_ms: round(facts.predicted_next_ms),
    sla_ms: round(facts.freshness_deadline_ms),
    staleness_ms: round(facts.staleness_ms),
    pending_changes: round(facts.pending_changes),
  };
}

async function readStreamTables(ctx: DatabaseContext, options: { deadlineOnly: boolean }): Promise<Row[]> {
  return await ctx.sql<Row[]>`
    SELECT st.pgt_id, st.pgt_schema, st.pgt_name, st.effective_refresh_mode, st.schedule, st.freshness_deadline_ms,
      st.status, st.last_refresh_at, st.frontier::text AS frontier,
      ARRAY(SELECT d.source_relid::int8 FROM pgtrickle.pgt_dependencies d WHERE d.pgt_id = st.pgt_id) AS sources,
      -- Null when a source was never analysed (reltuples -1): the change ratio is unknown then.
      (SELECT CASE WHEN bool_or(c.reltuples < 0) THEN NULL ELSE sum(c.reltuples)::float8 END
        FROM pgtrickle.pgt_dependencies d JOIN pg_catalog.pg_class c ON c.oid = d.source_relid
        WHERE d.pgt_id = st.pgt_id) AS source_rows,
      (SELECT h.refresh_id FROM pgtrickle.pgt_refresh_history h
        WHERE h.pgt_id = st.pgt_id AND h.status = 'SUCCESS' AND h.action IN ('FULL', 'DIFFERENTIAL')
        ORDER BY h.started_at DESC, h.refresh_id DESC LIMIT 1) AS last_refresh_id
    FROM pgtrickle.pgt_stream_tables st
    WHERE st.status <> 'INITIALIZING' AND (NOT ${options.deadlineOnly} OR st.freshness_deadline_ms IS NOT NULL)
    ORDER BY st.pgt_id`;
}

/**
 * Reads the history of the stream tables that refreshed since their statistics were cached (all of them the first
 * time), and summarises it; drops the cache entries of stream tables gone. Returns the ids whose history grew.
 */
async function refreshHistoryCache(
  ctx: DatabaseContext,
  options: { rows: Row[]; cache: HistoryCache; partial: boolean },
): Promise<Set<number>> {
  const { rows, cache } = options;
  const present = new Set(rows.map((r) => r.pgt_id));
  const latest = new Map(rows.map((r) => [r.pgt_id, Number(r.last_refresh_id ?? 0)]));
  const stale = rows.filter((r) => cache.get(r.pgt_id)?.lastRefreshId !== latest.get(r.pgt_id)).map((r) => r.pgt_id);
  if (stale.length > 0) {
    const after = stale.map((id) => cache.get(id)?.lastRefreshId ?? 0);
    // The newest cached start bounds the index scan (pgt_id, started_at DESC): only the new rows are visited. A
    // second of slack covers the epoch's rounding; refresh_id keeps the rows already cached out.
    const afterStart = stale.map((id) => (cache.get(id)?.samples.startsMs[0] ?? 0) / 1000 - 1);
    // Arrays per stream table: one row each instead of one per refresh (a cold pass reads 1,000 x 1,000 samples).
    const history = await ctx.sql<HistoryRow[]>`
      SELECT st.pgt_id, h.actions, h.durations, h.deltas, h.starts
      FROM unnest(${stale}::int8[], ${after}::int8[], ${afterStart}::float8[]) AS st(pgt_id, after, after_start)
      CROSS JOIN LATERAL (
        SELECT array_agg(x.action) AS actions, array_agg(x.duration_ms) AS durations,
          array_agg(x.delta_rows::float8) AS deltas, array_agg(extract(epoch FROM x.started_at)::float8) AS starts
        FROM (
          SELECT action, duration_ms, delta_rows, started_at FROM pgtrickle.pgt_refresh_history
          WHERE pgt_id = st.pgt_id AND started_at >= to_timestamp(st.after_start) AND refresh_id > st.after
            AND status = 'SUCCESS' AND action IN ('FULL', 'DIFFERENTIAL')
          ORDER BY started_at DESC LIMIT ${HISTORY_WINDOW}
        ) x
      ) h`;
    const yieldNow = slicer();
    for (const h of history) {
      await yieldNow();
      const id = Number(h.pgt_id);
      // History pruned meanwhile drops out of the window as new refreshes push it, not at once.
      const samples = [...samplesOf(h), ...expand(cache.get(id)?.samples)].slice(0, HISTORY_WINDOW);
      cache.set(id, { lastRefreshId: latest.get(id)!, samples: compact(samples), stats: historyStats(samples) });
    }
  }
  for (const id of cache.keys()) if (!present.has(id) && !options.partial) cache.delete(id);
  return new Set(stale);
}

function samplesOf(row: HistoryRow): CostSample[] {
  const out: CostSample[] = [];
  for (let i = 0; i < (row.actions?.length ?? 0); i++) {
    out.push({
      action: row.actions![i]!,
      duration_ms: row.durations![i]!,
      delta_rows: row.deltas![i]!,
      started_at: new Date(row.starts![i]! * 1000),
    });
  }
  return out;
}

/** Changed source rows each stream table has not applied yet (one count per source, in one snapshot). */
async function pendingChanges(ctx: DatabaseContext, rows: Row[]): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  const withSources = rows.filter((r) => r.frontier !== null && r.sources.length > 0);
  if (withSources.length === 0) return out;
  await ctx.sql.begin("isolation level repeatable read read only", async (tx) => {
    for (const r of withSources) {
      let n = 0;
      for (const relid of r.sources) {
        // A buffer gone with its source fails its refresh, which reports it; the planner counts nothing for it.
        n += await tx.savepoint((sp) => deltaStats(sp, Number(relid), r.frontier!)).then((d) => d.rows, () => 0);
      }
      out.set(r.pgt_id, n);
    }
  });
  return out;
}

async function storeRecommendations(
  ctx: DatabaseContext,
  input: { evaluations: { row: Row; evaluation: Evaluation }[]; now: Date; t0: number },
): Promise<void> {
  const recs = input.evaluations.map(({ row, evaluation: { recommendation: r } }) => ({
    pgt_id: row.pgt_id,
    recommendation: r,
    current_interval_seconds: r.current_interval_seconds,
    recommended_interval_seconds: r.recommended_interval_seconds,
    delta_pct: r.delta_pct,
    confidence: r.confidence,
  }));
  await ctx.sql.begin(async (tx) => {
    // One statement for every stream table: a pass over a thousand must not be a thousand round trips.
    await tx`
      INSERT INTO pgtrickle.pgt_recommendations AS r (pgt_id, recommendation, current_interval_seconds,
        recommended_interval_seconds, delta_pct, confidence, computed_at)
      SELECT x.pgt_id, x.recommendation, x.current_interval_seconds, x.recommended_interval_seconds, x.delta_pct,
        x.confidence, ${input.now}
      FROM jsonb_to_recordset(${JSON.stringify(recs)}::text::jsonb) AS x(pgt_id int8, recommendation jsonb,
        current_interval_seconds float8, recommended_interval_seconds float8, delta_pct float8, confidence float8)
      WHERE EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables s WHERE s.pgt_id = x.pgt_id)
      ON CONFLICT (pgt_id) DO UPDATE SET recommendation = excluded.recommendation,
        current_interval_seconds = excluded.current_interval_seconds,
        recommended_interval_seconds = excluded.recommended_interval_seconds, delta_pct = excluded.delta_pct,
        confidence = excluded.confidence, computed_at = excluded.computed_at`;
    await tx`
      INSERT INTO pgtrickle.pgt_planner_passes (last_pass_at, stream_tables, duration_ms)
      VALUES (${input.now}, ${recs.length}, ${performance.now() - input.t0})
      ON CONFLICT (singleton) DO UPDATE SET last_pass_at = excluded.last_pass_at,
        stream_tables = excluded.stream_tables, duration_ms = excluded.duration_ms`;
  });
}
