/**
 * What every benchmark shares: timing helpers, the shape of a figure (measured against a baseline taken in the same
 * run: these machines are shared and noisy), and the table that bench/main.ts prints.
 */
import type { Sql } from "../db/pool.ts";
import type { ServiceProcess } from "../tests/support/process.ts";
// The project's one median: the cost model's (engine/cost_model.ts), so a bench figure and a refresh prediction agree.
export { median } from "../engine/cost_model.ts";

/**
 * A goal is a ceiling on measured / baseline, a ceiling on the measured time itself (below `max` ms), or, for a figure
 * that counts (statements), the most it may count; a figure with no goal is only reported.
 */
export type Goal =
  | { kind: "ratio"; max: number }
  | { kind: "ms"; max: number }
  | { kind: "at most"; max: number }
  | { kind: "none" };

/** One line of the bench table: a median time against the median of its baseline, and the goal it is held to. */
export interface Figure {
  /** What was measured, e.g. "FULL refresh, 1M rows -> 100k groups". */
  name: string;
  /** Median of the measured runs, in milliseconds. */
  measuredMs: number;
  /** Median of the baseline runs, in milliseconds, measured in the same run of the bench. */
  baselineMs: number;
  /** What the baseline is, in a few words, e.g. "bare INSERT INTO copy SELECT <query>". */
  baseline: string;
  goal: Goal;
  /** Timed runs behind each median. */
  runs: number;
  /** What the figure counts when it is not a time (then `measuredMs` and `baselineMs` hold counts per run). */
  unit?: string;
}

/**
 * What a benchmark module receives from bench/main.ts. The server is the one the whole bench runs against;
 * TEST_DATABASE_URL is set to it as well, so `startTestService()` and `freshDatabase()` work unchanged.
 */
export interface BenchOptions {
  /** The PostgreSQL server (maintenance database URL). */
  serverUrl: string;
  /** Prints a progress line to stderr (the table goes to stdout). */
  progress(line: string): void;
}

/** Wall-clock milliseconds `fn` takes, as the client sees it (round trips included). */
export async function timeMs(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** measured / baseline. */
export function ratio(f: Figure): number {
  return f.measuredMs / f.baselineMs;
}

/** Whether the figure meets its goal. */
export function passes(f: Figure): boolean {
  if (f.goal.kind === "none") return true;
  if (f.goal.kind === "ratio") return ratio(f) <= f.goal.max;
  return f.goal.kind === "ms" ? f.measuredMs < f.goal.max : f.measuredMs <= f.goal.max;
}

/** The goal as printed: "ratio <= 1.3" or "< 5 ms". */
export function goalText(g: Goal, unit?: string): string {
  if (g.kind === "none") return "reported";
  if (g.kind === "ratio") return `ratio <= ${g.max}`;
  return g.kind === "ms" ? `< ${g.max} ms` : `<= ${g.max} ${unit ?? ""}`.trimEnd();
}

/** Milliseconds with precision that suits their size. */
export function formatMs(ms: number): string {
  return ms >= 100 ? `${ms.toFixed(0)} ms` : ms >= 10 ? `${ms.toFixed(1)} ms` : `${ms.toFixed(2)} ms`;
}

/** A figure's time, or its count with the unit. */
function formatValue(f: Figure, v: number): string {
  return f.unit === undefined ? formatMs(v) : `${Number.isInteger(v) ? v : v.toFixed(1)} ${f.unit}`;
}

/** The bench table: one line per figure, then what each baseline is. */
export function renderTable(figures: readonly Figure[]): string {
  const header = ["figure", "measured", "baseline", "ratio", "goal", "result", "runs"];
  const rows = figures.map((f) => [
    f.name,
    formatValue(f, f.measuredMs),
    formatValue(f, f.baselineMs),
    ratio(f).toFixed(2),
    goalText(f.goal, f.unit),
    f.goal.kind === "none" ? "-" : passes(f) ? "PASS" : "MISS",
    String(f.runs),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const numeric = new Set([1, 2, 3, 6]);
  const line = (cells: string[]) =>
    cells.map((c, i) => numeric.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)).join("  ").trimEnd();
  const out = [line(header), widths.map((w) => "-".repeat(w)).join("  ")];
  out.push(...rows.map(line));
  out.push("", "baselines (medians, measured in this run):");
  out.push(...figures.map((f) => `  ${f.name}: ${f.baseline}`));
  return out.join("\n");
}

/** Runs a statement the bench composes itself (table names and literals of its own, never outside input). */
export async function exec(sql: Sql, text: string): Promise<void> {
  await sql.unsafe(text);
}

/**
 * Forces a checkpoint so that the timed statement does not share the disk with one PostgreSQL started on its own;
 * skipped quietly where the role may not (CHECKPOINT needs superuser or pg_checkpoint).
 */
export async function checkpoint(sql: Sql): Promise<void> {
  await sql.unsafe("CHECKPOINT").catch(() => {});
}

/** POSTs JSON (or nothing) and checks the status (and the refresh's action, when given). */
export async function post(
  svc: ServiceProcess,
  path: string,
  body: unknown,
  status: number,
  action?: string,
): Promise<void> {
  const res = await fetch(`${svc.url}${path}`, {
    method: "POST",
    ...(body === undefined ? {} : { headers: { "content-type": "application/json" }, body: JSON.stringify(body) }),
  });
  const text = await res.text();
  if (res.status !== status) throw new Error(`POST ${path}: ${res.status} ${text}`);
  if (action !== undefined) {
    const got = (JSON.parse(text) as { action?: string }).action;
    if (got !== action) throw new Error(`POST ${path}: expected a ${action} refresh, got ${got}: ${text}`);
  }
}
