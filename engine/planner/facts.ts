/**
 * The planner's facts about one stream table (docs/rules.md lists them): what its history, catalog row and change
 * buffers say, as plain numbers a rule can test. Pure: the pass (pass.ts) reads the database and hands the inputs here.
 */
import {
  type ActionSummary,
  type CostAction,
  type CostSample,
  type PeakHours,
  peakHours,
  type RecentCost,
  recentCost,
  summarize,
} from "../cost_model.ts";
import { intervalSeconds, parseSchedule } from "../schedule.ts";

/** Every fact a rule may name, with its meaning; a rule naming anything else is refused at start. */
export const FACTS = {
  stream_table: "schema.name of the stream table",
  schema: "its schema",
  name: "its name",
  refresh_mode: "its effective refresh mode, FULL or DIFFERENTIAL",
  sample_count: "successful FULL and DIFFERENTIAL refreshes in the history the planner read",
  min_samples: "the setting schedule_recommendation_min_samples",
  full_count: "FULL refreshes among them",
  full_median_ms: "median duration of the FULL refreshes (null: none)",
  full_mad_ms: "their median absolute deviation",
  full_sigma_ms: "their robust sigma (1.4826 MAD)",
  diff_count: "DIFFERENTIAL refreshes among them",
  diff_median_ms: "median duration of the DIFFERENTIAL refreshes (null: none)",
  diff_mad_ms: "their median absolute deviation",
  diff_sigma_ms: "their robust sigma",
  next_action: "what the next refresh will be: FULL or DIFFERENTIAL",
  pending_changes: "changed source rows not yet applied",
  predicted_next_ms:
    "predicted duration of the next refresh (recent refreshes of its action, scaled by pending changes)",
  refresh_cost_ms: "a refresh's cost with margin: median + 3 robust sigma of the next action's refreshes",
  current_interval_seconds: "the interval of the current schedule (for cron: between its next two firings)",
  schedule: "the current schedule text",
  freshness_deadline_ms: "the freshness deadline (null: none)",
  has_deadline: "true when the stream table has a freshness deadline",
  no_overlap_interval_seconds: "the shortest interval at which refreshes do not overlap (1.5 x refresh_cost_ms)",
  deadline_interval_seconds: "the longest interval keeping data within its deadline (deadline - refresh_cost_ms)",
  peak_ratio: "the costliest UTC hour's median over a typical hour's (null: fewer than 4 hours sampled)",
  peak_hours: "UTC hours whose median cost is at least 1.5 times a typical hour's",
  predicted_over_deadline: "predicted_next_ms / freshness_deadline_ms (null: no deadline or no prediction)",
  staleness_ms: "how old the data is: now - the start of the last refresh (null: never refreshed)",
  staleness_over_deadline: "staleness_ms / freshness_deadline_ms (null: no deadline)",
  seconds_since_predicted_alert: "since predicted_sla_breach last fired for it (null: never)",
  seconds_since_missed_alert: "since freshness_deadline_missed last fired for it (null: never)",
  hour_of_day: "the current UTC hour",
} as const;

export type FactName = keyof typeof FACTS;
export type Facts = Record<FactName, string | number | boolean | number[] | null>;

/** How many of the latest refreshes of an action say what the next one costs (a slowdown shows within a few). */
export const RECENT_WINDOW = 5;
/** An hour costing this many times a typical hour is a peak hour. */
export const PEAK_MIN_RATIO = 1.5;
/** Hours that must be sampled before peaks mean anything. */
export const PEAK_MIN_HOURS = 4;

export interface FactInput {
  schema: string;
  name: string;
  refreshMode: CostAction;
  schedule: string;
  freshnessDeadlineMs: number | null;
  lastRefreshAt: Date | null;
  hasFrontier: boolean;
  pendingChanges: number;
  /** Rows in its sources (pg_class.reltuples), to foresee a FULL by differential_max_change_ratio; null: unknown. */
  sourceRows: number | null;
  maxChangeRatio: number;
  /** historyStats() of its recent refreshes (computed once per new refresh, not per pass). */
  history: HistoryStats;
  minSamples: number;
  lastFired: { predicted_sla_breach: Date | null; freshness_deadline_missed: Date | null };
  now: Date;
}

/** What a stream table's history says, apart from the clock and the catalog: cached until it has a new refresh. */
export interface HistoryStats {
  summary: Record<CostAction, ActionSummary>;
  recent: Record<CostAction, RecentCost>;
  peaks: Record<CostAction, PeakHours>;
}

/** The statistics of a stream table's history the facts are made of. */
export function historyStats(samples: readonly CostSample[]): HistoryStats {
  const summary = summarize(samples);
  const peaks = (a: CostAction) =>
    peakHours(summary[a].hourProfile, { minRatio: PEAK_MIN_RATIO, minHours: PEAK_MIN_HOURS });
  return {
    summary,
    recent: {
      FULL: recentCost(samples, { action: "FULL", window: RECENT_WINDOW }),
      DIFFERENTIAL: recentCost(samples, { action: "DIFFERENTIAL", window: RECENT_WINDOW }),
    },
    peaks: { FULL: peaks("FULL"), DIFFERENTIAL: peaks("DIFFERENTIAL") },
  };
}

/** The facts of one stream table. */
export function buildFacts(input: FactInput): Facts {
  const { summary, recent } = input.history;
  const next = nextAction(input);
  const predicted = predictNext(next, recent, input.pendingChanges);
  const costMs = summary[next].medianMs !== null
    ? Math.max(summary[next].medianMs! + 3 * summary[next].sigmaMs!, predicted ?? 0)
    : predicted;
  const peaks = input.history.peaks[next];
  const deadline = input.freshnessDeadlineMs;
  const staleness = input.lastRefreshAt === null ? null : input.now.getTime() - input.lastRefreshAt.getTime();
  const since = (d: Date | null) => d === null ? null : (input.now.getTime() - d.getTime()) / 1000;
  return {
    stream_table: `${input.schema}.${input.name}`,
    schema: input.schema,
    name: input.name,
    refresh_mode: input.refreshMode,
    sample_count: summary.FULL.count + summary.DIFFERENTIAL.count,
    min_samples: input.minSamples,
    full_count: summary.FULL.count,
    full_median_ms: summary.FULL.medianMs,
    full_mad_ms: summary.FULL.madMs,
    full_sigma_ms: summary.FULL.sigmaMs,
    diff_count: summary.DIFFERENTIAL.count,
    diff_median_ms: summary.DIFFERENTIAL.medianMs,
    diff_mad_ms: summary.DIFFERENTIAL.madMs,
    diff_sigma_ms: summary.DIFFERENTIAL.sigmaMs,
    next_action: next,
    pending_changes: input.pendingChanges,
    predicted_next_ms: predicted,
    refresh_cost_ms: costMs,
    current_interval_seconds: currentInterval(input.schedule, input.now),
    schedule: input.schedule,
    freshness_deadline_ms: deadline,
    has_deadline: deadline !== null,
    no_overlap_interval_seconds: costMs === null ? null : Math.max(1, Math.ceil((1.5 * costMs) / 1000)),
    deadline_interval_seconds: deadline === null || costMs === null ? null : Math.floor((deadline - costMs) / 1000),
    peak_ratio: peaks.ratio,
    peak_hours: peaks.hours,
    predicted_over_deadline: deadline === null || predicted === null ? null : predicted / deadline,
    staleness_ms: staleness,
    staleness_over_deadline: deadline === null || staleness === null ? null : staleness / deadline,
    seconds_since_predicted_alert: since(input.lastFired.predicted_sla_breach),
    seconds_since_missed_alert: since(input.lastFired.freshness_deadline_missed),
    hour_of_day: input.now.getUTCHours(),
  };
}

/** What the next refresh will be, as the refresh decision (refresh.ts chooseAction) will see it. */
function nextAction(input: FactInput): CostAction {
  if (input.refreshMode === "FULL" || !input.hasFrontier) return "FULL";
  // Unknown statistics: the refresh counts exactly; the planner does not, and assumes the mode's action.
  if (input.sourceRows !== null && input.pendingChanges / Math.max(1, input.sourceRows) > input.maxChangeRatio) {
    return "FULL";
  }
  return "DIFFERENTIAL";
}

/**
 * FULL costs what recent FULLs cost; DIFFERENTIAL costs recent ms per delta row times the pending rows. With no
 * DIFFERENTIAL yet, a FULL's cost bounds it (a differential refresh is chosen only when it is the cheaper).
 */
function predictNext(action: CostAction, recent: HistoryStats["recent"], pending: number): number | null {
  const full = recent.FULL;
  if (action === "FULL") return full.medianMs;
  const diff = recent.DIFFERENTIAL;
  return diff.msPerDeltaRow === null ? full.medianMs : diff.msPerDeltaRow * Math.max(1, pending);
}

/** The current schedule's interval in seconds; null when it no longer parses. */
function currentInterval(schedule: string, now: Date): number | null {
  try {
    return intervalSeconds(parseSchedule(schedule), now);
  } catch {
    return null;
  }
}
