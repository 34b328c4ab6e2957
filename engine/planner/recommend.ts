/**
 * Runs one stream table's facts through the rules and turns the events that fired into a recommendation (interval,
 * peak window, confidence, reasoning) and the alert conditions that hold. Pure apart from json-rules-engine.
 */
import { Engine as RulesEngine } from "json-rules-engine";
import { hoursCron } from "../cost_model.ts";
import { type FactName, FACTS, type Facts, PEAK_MIN_HOURS, PEAK_MIN_RATIO } from "./facts.ts";
import type { AlertKind, LoadedRule } from "./rules.ts";

/** One rule that fired, and the numbers it used. */
export interface Reason {
  rule: string;
  event: string;
  detail: string;
  facts: Record<string, unknown>;
}

/** The recommendation of docs/SQL_REFERENCE.md (schedule planner). */
export interface Recommendation {
  stream_table: string;
  recommended_interval_seconds: number | null;
  recommended_schedule: string | null;
  peak_window_cron: string | null;
  peak_window_reason: string | null;
  confidence: number;
  current_interval_seconds: number | null;
  delta_pct: number | null;
  /** Bounds that could not all hold (e.g. the deadline against no overlap), and which one gave way. */
  conflicts: string[];
  reasoning: Reason[];
}

/** An alert condition that holds now, as a rule found it. */
export interface AlertCondition {
  kind: AlertKind;
  severity: string;
  rule: string;
}

export interface Evaluation {
  recommendation: Recommendation;
  alerts: AlertCondition[];
}

/** The rules, ready to run over many stream tables. */
export class RuleSet {
  readonly #engine: RulesEngine;
  readonly #byName: Map<string, LoadedRule>;
  readonly #factNames: FactName[];

  constructor(rules: LoadedRule[]) {
    // Every fact is given at each run; one a rule names and the planner does not give is a bug, not a false.
    this.#engine = new RulesEngine([], { allowUndefinedFacts: false });
    for (const r of rules) this.#engine.addRule(r.rule);
    this.#byName = new Map(rules.map((r) => [r.rule.name, r]));
    this.#factNames = [...new Set(rules.flatMap((r) => r.facts))] as FactName[];
  }

  /** Runs the rules over one stream table's facts. */
  async evaluate(facts: Facts): Promise<Evaluation> {
    // Only the facts some rule reads: json-rules-engine builds an object per fact given, at every run.
    const given: Record<string, unknown> = {};
    for (const name of this.#factNames) given[name] = facts[name];
    const { results } = await this.#engine.run(given);
    // Highest priority first, as json-rules-engine ran them; name breaks ties so reasoning reads the same each pass.
    const fired = results
      .map((r) => ({ name: r.name as string, priority: r.priority ?? 1, event: r.event! }))
      .sort((a, b) => b.priority - a.priority || (a.name < b.name ? -1 : 1));
    const reasoning: Reason[] = [];
    const alerts: AlertCondition[] = [];
    const conflicts: string[] = [];
    const current = facts.current_interval_seconds as number | null;
    let insufficient = false;
    let set: { seconds: number; rule: string } | null = null;
    let atMost: { seconds: number; rule: string } | null = null;
    let atLeast: { seconds: number; rule: string } | null = null;
    let peak = false;
    for (const f of fired) {
      const params = (f.event.params ?? {}) as Record<string, unknown>;
      const used = this.#factsUsed(f.name, facts, params);
      reasoning.push({ rule: f.name, event: f.event.type, detail: String(params.why ?? f.event.type), facts: used });
      if (f.event.type === "insufficient_samples") insufficient = true;
      if (f.event.type === "peak_window") peak = true;
      if (f.event.type === "alert") {
        alerts.push({ kind: params.kind as AlertKind, severity: String(params.severity ?? "warning"), rule: f.name });
      }
      if (f.event.type === "recommend_interval") {
        const seconds = typeof params.value === "number" ? params.value : facts[params.fact as FactName];
        if (typeof seconds !== "number" || !Number.isFinite(seconds)) continue;
        const bound = { seconds, rule: f.name };
        // The first rule of each kind (highest priority) sets it; bounds combine to the tightest.
        if (params.mode === "set" && set === null) set = bound;
        if (params.mode === "at_most" && (atMost === null || seconds < atMost.seconds)) atMost = bound;
        if (params.mode === "at_least" && (atLeast === null || seconds > atLeast.seconds)) atLeast = bound;
      }
    }
    let interval = set?.seconds ?? current;
    if (interval !== null && atMost !== null && interval > atMost.seconds) interval = atMost.seconds;
    if (interval !== null && atLeast !== null && interval < atLeast.seconds) {
      if (atMost !== null && atLeast.seconds > atMost.seconds) {
        conflicts.push(
          `"${atMost.rule}" wants at most ${atMost.seconds} s and "${atLeast.rule}" at least ${atLeast.seconds} s: ` +
            `both cannot hold; "${atLeast.rule}" wins (overlapping refreshes would not make data fresher), so ` +
            `"${atMost.rule}" cannot hold`,
        );
      }
      interval = atLeast.seconds;
    }
    if (interval !== null) interval = Math.max(1, Math.round(interval));
    if (insufficient) interval = current;
    const peakCron = peak ? hoursCron(facts.peak_hours as number[]) : null;
    const recommendation: Recommendation = {
      stream_table: facts.stream_table as string,
      recommended_interval_seconds: interval,
      recommended_schedule: interval === null ? null : `${interval}s`,
      peak_window_cron: peakCron,
      peak_window_reason: peakCron !== null ? null : peakReason(facts, peak),
      confidence: insufficient ? 0 : confidence(facts),
      current_interval_seconds: current,
      delta_pct: interval === null || current === null || current <= 0
        ? null
        : Math.round(((interval - current) / current) * 1000) / 10,
      conflicts,
      reasoning,
    };
    return { recommendation, alerts };
  }

  /** The facts a fired rule read, and the one its event took, with their values. */
  #factsUsed(rule: string, facts: Facts, params: Record<string, unknown>): Record<string, unknown> {
    const names = [...(this.#byName.get(rule)?.facts ?? [])];
    if (typeof params.fact === "string") names.push(params.fact);
    return Object.fromEntries(names.filter((n) => n in FACTS).map((n) => [n, facts[n as FactName]]));
  }
}

/**
 * 0..1: how much the history supports the recommendation. Grows with the samples (half at min_samples, full at twice
 * as many) and shrinks with their spread (robust sigma over median of the next action's refreshes).
 */
function confidence(facts: Facts): number {
  const n = facts.sample_count as number;
  const min = facts.min_samples as number;
  const next = facts.next_action === "FULL" ? "full" : "diff";
  const med = facts[`${next}_median_ms`] as number | null;
  const sigma = facts[`${next}_sigma_ms`] as number | null;
  const spread = med === null || sigma === null || med <= 0 ? 1 : sigma / med;
  const c = Math.min(1, n / (2 * min)) / (1 + spread);
  return Math.round(c * 100) / 100;
}

function peakReason(facts: Facts, fired: boolean): string {
  const ratio = facts.peak_ratio as number | null;
  if (ratio === null) return `fewer than ${PEAK_MIN_HOURS} UTC hours have refreshes: no peak can be told apart`;
  if (fired) return "the peak hours cover the whole day: no window stands out";
  return `no UTC hour costs ${PEAK_MIN_RATIO} times a typical hour (the costliest is ${ratio.toFixed(2)} times)`;
}
