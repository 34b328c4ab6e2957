/**
 * The cost model: robust statistics over a stream table's refresh history. Pure arithmetic (no database, no clock):
 * the refresh decision and the planner read the history and hand the samples here.
 */

/** One successful refresh, as recorded in pgtrickle.pgt_refresh_history. */
export interface CostSample {
  action: "FULL" | "DIFFERENTIAL" | "NO_DATA";
  duration_ms: number;
  /** The changed source rows the refresh found (0 for NO_DATA). */
  delta_rows: number;
  started_at: Date;
}

/** The actions whose cost the model tracks; NO_DATA refreshes cost next to nothing and say nothing about either. */
export type CostAction = "FULL" | "DIFFERENTIAL";

/** MAD times this estimates the standard deviation of normally distributed values, without an outlier's pull. */
export const MAD_TO_SIGMA = 1.4826;

/** Sorted copy of the values; refuses none and NaN, which would make every statistic meaningless. */
function sorted(values: readonly number[], what: string): number[] {
  if (values.length === 0) throw new RangeError(`Cannot take the ${what} of no values`);
  if (values.some((v) => Number.isNaN(v))) throw new RangeError(`Cannot take the ${what} of values that include NaN`);
  return [...values].sort((a, b) => a - b);
}

/** Linear interpolation at fraction `p` of ascending values (PostgreSQL's percentile_cont). */
function interpolate(asc: readonly number[], p: number): number {
  const rank = p * (asc.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return asc[lo]! + (rank - lo) * (asc[hi]! - asc[lo]!);
}

/** The middle value (mean of the two middle ones for an even count). */
export function median(values: readonly number[]): number {
  return interpolate(sorted(values, "median"), 0.5);
}

/** The value at fraction `p` (0..1) of the values, interpolated linearly between ranks like percentile_cont. */
export function percentile(values: readonly number[], p: number): number {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`A percentile is a fraction from 0 to 1, got ${p}`);
  return interpolate(sorted(values, "percentile"), p);
}

/** The median absolute deviation from the median. */
export function mad(values: readonly number[]): number {
  const m = median(values);
  return median(values.map((v) => Math.abs(v - m)));
}

/** The MAD scaled by 1.4826: a standard deviation that one slow refresh does not inflate. */
export function robustSigma(values: readonly number[]): number {
  return MAD_TO_SIGMA * mad(values);
}

/**
 * Source changes per second, as the refreshes found them: the delta rows of every refresh after the earliest (the
 * earliest one's changes were written before the window began), over the time from the earliest start to the
 * latest. Null with fewer than two refreshes or no time between them.
 */
export function changeRate(samples: readonly CostSample[]): number | null {
  if (samples.length < 2) return null;
  const byStart = [...samples].sort((a, b) => a.started_at.getTime() - b.started_at.getTime());
  const seconds = (byStart.at(-1)!.started_at.getTime() - byStart[0]!.started_at.getTime()) / 1000;
  if (seconds <= 0) return null;
  const rows = byStart.slice(1).reduce((sum, s) => sum + s.delta_rows, 0);
  return rows / seconds;
}

/** 24 entries, one per UTC hour of the day: the median duration of the refreshes started in it, or null. */
export function hourProfile(samples: readonly CostSample[]): (number | null)[] {
  const hours: number[][] = Array.from({ length: 24 }, () => []);
  for (const s of samples) hours[s.started_at.getUTCHours()]!.push(s.duration_ms);
  return hours.map((d) => d.length === 0 ? null : median(d));
}

/** What the history says about one refresh action; every figure is null when there are no samples of it. */
export interface ActionSummary {
  count: number;
  medianMs: number | null;
  madMs: number | null;
  sigmaMs: number | null;
  p95Ms: number | null;
  /** Median of duration / delta rows (a refresh with no delta rows counts as one row). */
  msPerDeltaRow: number | null;
  /** hourProfile() of this action's refreshes. */
  hourProfile: (number | null)[];
}

/** The per-action summary of refresh history: FULL and DIFFERENTIAL apart, NO_DATA left out. */
export function summarize(samples: readonly CostSample[]): Record<CostAction, ActionSummary> {
  return { FULL: summarizeAction(samples, "FULL"), DIFFERENTIAL: summarizeAction(samples, "DIFFERENTIAL") };
}

function summarizeAction(samples: readonly CostSample[], action: CostAction): ActionSummary {
  const mine = samples.filter((s) => s.action === action);
  if (mine.length === 0) {
    return {
      count: 0,
      medianMs: null,
      madMs: null,
      sigmaMs: null,
      p95Ms: null,
      msPerDeltaRow: null,
      hourProfile: hourProfile(mine),
    };
  }
  // Sorted once for the median and p95, the deviations once for the MAD: a planner pass summarises a thousand
  // histories of a thousand refreshes, so each sort counts. Same results as median(), mad(), percentile().
  const asc = sorted(mine.map((s) => s.duration_ms), "median");
  const med = interpolate(asc, 0.5);
  const madMs = interpolate(sorted(asc.map((v) => Math.abs(v - med)), "MAD"), 0.5);
  return {
    count: mine.length,
    medianMs: med,
    madMs,
    sigmaMs: MAD_TO_SIGMA * madMs,
    p95Ms: interpolate(asc, 0.95),
    msPerDeltaRow: median(mine.map(msPerRow)),
    hourProfile: hourProfile(mine),
  };
}

function msPerRow(s: CostSample): number {
  return s.duration_ms / Math.max(s.delta_rows, 1);
}

/** How many of the latest refreshes of each action the refresh decision looks at. */
export const PREDICTION_WINDOW = 20;
/** Below this many refreshes of each action the prediction is null: the change ratio alone decides. */
export const PREDICTION_MIN_SAMPLES = 5;

/** The refresh decision's inputs: ms per delta row of a DIFFERENTIAL refresh and ms of a FULL one. */
export interface RefreshCostPrediction {
  msPerDeltaRow: number | null;
  fullMs: number | null;
}

/**
 * What the next refresh should cost, for the FULL-or-DIFFERENTIAL decision: medians over the latest 20 successful
 * refreshes of each action (latest by start; a stream table's refreshes never overlap), both null until there are
 * five of each. The caller multiplies msPerDeltaRow by the pending delta rows.
 */
export function refreshCostPrediction(samples: readonly CostSample[]): RefreshCostPrediction {
  const latest = (action: CostAction) =>
    samples.filter((s) => s.action === action)
      .sort((a, b) => b.started_at.getTime() - a.started_at.getTime())
      .slice(0, PREDICTION_WINDOW);
  const diff = latest("DIFFERENTIAL");
  const full = latest("FULL");
  // Too few samples say little.
  if (diff.length < PREDICTION_MIN_SAMPLES || full.length < PREDICTION_MIN_SAMPLES) {
    return { msPerDeltaRow: null, fullMs: null };
  }
  return { msPerDeltaRow: median(diff.map(msPerRow)), fullMs: median(full.map((s) => s.duration_ms)) };
}

/** What the latest `window` refreshes of one action cost; the planner's view of "now" (a slowdown shows in it). */
export interface RecentCost {
  count: number;
  medianMs: number | null;
  msPerDeltaRow: number | null;
}

/** Median duration and median ms per delta row of the latest `window` refreshes of `action` (latest by start). */
export function recentCost(
  samples: readonly CostSample[],
  options: { action: CostAction; window: number },
): RecentCost {
  const mine = samples.filter((s) => s.action === options.action)
    .sort((a, b) => b.started_at.getTime() - a.started_at.getTime())
    .slice(0, options.window);
  if (mine.length === 0) return { count: 0, medianMs: null, msPerDeltaRow: null };
  return {
    count: mine.length,
    medianMs: median(mine.map((s) => s.duration_ms)),
    msPerDeltaRow: median(mine.map(msPerRow)),
  };
}

/** The hours of an hourProfile() that cost markedly more than a typical hour, and by how much. */
export interface PeakHours {
  /** The median of the per-hour medians: what a typical hour costs (null with no hour sampled). */
  baselineMs: number | null;
  /** The costliest hour's median over the baseline (null with fewer than `minHours` hours sampled). */
  ratio: number | null;
  /** UTC hours whose median is at least `minRatio` times the baseline, ascending. */
  hours: number[];
}

/** Peak hours of a profile: hours costing at least `minRatio` times the typical hour; needs `minHours` sampled. */
export function peakHours(
  profile: readonly (number | null)[],
  options: { minRatio: number; minHours: number },
): PeakHours {
  const sampled = profile.flatMap((ms, hour) => ms === null ? [] : [{ hour, ms }]);
  if (sampled.length === 0) return { baselineMs: null, ratio: null, hours: [] };
  const baselineMs = median(sampled.map((h) => h.ms));
  if (sampled.length < options.minHours || baselineMs <= 0) return { baselineMs, ratio: null, hours: [] };
  const ratio = Math.max(...sampled.map((h) => h.ms)) / baselineMs;
  const hours = sampled.filter((h) => h.ms >= options.minRatio * baselineMs).map((h) => h.hour);
  return { baselineMs, ratio, hours };
}

/**
 * A 5-field cron expression firing every minute of the given UTC hours (`* 9-16 * * *`): the window they cover.
 * Consecutive hours become ranges; null for no hours or all 24 (no window then: every hour is alike).
 */
export function hoursCron(hours: readonly number[]): string | null {
  const set = [...new Set(hours)].sort((a, b) => a - b);
  if (set.length === 0 || set.length === 24) return null;
  const ranges: string[] = [];
  let start = set[0]!;
  let prev = start;
  for (const h of [...set.slice(1), -1]) {
    if (h === prev + 1) {
      prev = h;
      continue;
    }
    ranges.push(start === prev ? `${start}` : `${start}-${prev}`);
    start = h;
    prev = h;
  }
  return `* ${ranges.join(",")} * * *`;
}
