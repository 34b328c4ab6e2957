/**
 * Refresh schedules: a duration (`30s`, `5m`, `1h30m`, `1d`) or a 5/6-field cron expression (croner), in UTC.
 */
import { Cron } from "croner";
import { invalidSchedule } from "./errors.ts";

export type Schedule =
  | { kind: "interval"; text: string; seconds: number }
  | { kind: "cron"; text: string; cron: Cron };

const UNIT_SECONDS: Record<string, number> = { d: 86_400, h: 3_600, m: 60, s: 1 };
const DURATION = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/;
/** The shortest interval accepted: a refresh every second is already a busy stream table. */
export const MIN_INTERVAL_SECONDS = 1;
export const MAX_INTERVAL_SECONDS = 366 * 86_400;

/** Parses a schedule; throws InvalidSchedule saying what was expected. */
export function parseSchedule(text: string): Schedule {
  const t = text.trim();
  const m = DURATION.exec(t);
  if (m !== null && t !== "") {
    const seconds = [m[1], m[2], m[3], m[4]].reduce(
      (sum, v, i) => sum + Number(v ?? 0) * UNIT_SECONDS["dhms"[i]!]!,
      0,
    );
    if (seconds < MIN_INTERVAL_SECONDS || seconds > MAX_INTERVAL_SECONDS) {
      throw invalidSchedule(text, `an interval must be between 1s and 366d`);
    }
    return { kind: "interval", text: t, seconds };
  }
  const fields = t.split(/\s+/).length;
  if (fields !== 5 && fields !== 6) {
    throw invalidSchedule(
      text,
      "expected a duration such as 30s, 5m, 1h30m or 1d, or a cron expression of 5 or 6 fields",
    );
  }
  try {
    const cron = new Cron(t, { paused: true, timezone: "UTC", mode: "5-or-6-parts" });
    if (cron.nextRun(new Date()) === null) throw new Error("it never fires");
    return { kind: "cron", text: t, cron };
  } catch (e) {
    throw invalidSchedule(text, `not a valid cron expression (${e instanceof Error ? e.message : String(e)})`);
  }
}

/** When a stream table last refreshed at `last` is next due; `last` null means now. */
export function nextDue(schedule: Schedule, last: Date | null, now: Date): Date {
  if (last === null) return now;
  if (schedule.kind === "interval") return new Date(last.getTime() + schedule.seconds * 1000);
  return schedule.cron.nextRun(last) ?? new Date(8.64e15);
}

/** The nominal interval in seconds (for cron: the gap between its next two firings). */
export function intervalSeconds(schedule: Schedule, now: Date): number {
  if (schedule.kind === "interval") return schedule.seconds;
  const [a, b] = schedule.cron.nextRuns(2, now);
  return a !== undefined && b !== undefined ? (b.getTime() - a.getTime()) / 1000 : 0;
}

/** Parsed schedules by text: a refresh computes its next due time without parsing its schedule each time. */
const parsed = new Map<string, Schedule>();

/**
 * When a stream table with schedule `text`, refreshed at `refreshedAt`, is next due; `at` null with the reason when
 * the schedule no longer parses (a catalog edited by hand, or written by a version that accepted more).
 */
export function nextDueAfter(text: string, refreshedAt: Date): { at: Date | null; error: string | null } {
  let schedule = parsed.get(text);
  if (schedule === undefined) {
    try {
      schedule = parseSchedule(text);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      return { at: null, error: `Not scheduled: the schedule no longer parses. ${why}` };
    }
    if (parsed.size >= 1000) parsed.clear(); // bounded: schedules are few, but each distinct text is kept
    parsed.set(text, schedule);
  }
  return { at: nextDue(schedule, refreshedAt, refreshedAt), error: null };
}
