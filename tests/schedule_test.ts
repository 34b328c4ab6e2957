/**
 * Unit tests (no database) of the scheduling decisions: schedule parsing and due times (engine/schedule.ts), the
 * dependency order of refresh jobs (engine/scheduler/tick.ts) and the choice of refresh action (engine/refresh/refresh.ts).
 */
import assert from "node:assert/strict";
import { TrickleError } from "../engine/errors.ts";
import { chooseAction } from "../engine/refresh/refresh.ts";
import { intervalSeconds, nextDue, parseSchedule, type Schedule } from "../engine/schedule.ts";
import { orderByDependencies } from "../engine/scheduler/tick.ts";

function interval(text: string): number {
  const s = parseSchedule(text);
  assert.equal(s.kind, "interval", `${text} should be an interval`);
  return (s as Extract<Schedule, { kind: "interval" }>).seconds;
}

function assertInvalidSchedule(text: string, detail: RegExp): void {
  assert.throws(
    () => parseSchedule(text),
    (e: unknown) => {
      assert.ok(e instanceof TrickleError, `expected a TrickleError for ${JSON.stringify(text)}`);
      assert.equal(e.code, "InvalidSchedule");
      assert.equal(e.status, 400);
      assert.ok(e.message.includes(JSON.stringify(text)), `the message quotes the schedule: ${e.message}`);
      assert.match(e.message, detail);
      return true;
    },
  );
}

Deno.test("parseSchedule: durations", () => {
  assert.equal(interval("30s"), 30);
  assert.equal(interval("5m"), 300);
  assert.equal(interval("1h30m"), 5400);
  assert.equal(interval("1d"), 86_400);
  assert.equal(interval("1d2h3m4s"), 93_784);
  assert.equal(interval("1s"), 1);
  assert.equal(interval("366d"), 366 * 86_400);
});

Deno.test("parseSchedule: surrounding blanks are trimmed and the trimmed text kept", () => {
  const s = parseSchedule("  5m ");
  assert.equal(s.kind, "interval");
  assert.equal(s.text, "5m");
});

Deno.test("parseSchedule: 5-field cron (minute resolution)", () => {
  const s = parseSchedule("*/5 * * * *");
  assert.equal(s.kind, "cron");
  assert.equal(s.text, "*/5 * * * *");
  assert.equal(intervalSeconds(s, new Date("2026-01-01T00:00:00Z")), 300);
});

Deno.test("parseSchedule: 6-field cron (seconds first)", () => {
  const s = parseSchedule("15 */10 * * * *");
  assert.equal(s.kind, "cron");
  assert.equal(intervalSeconds(s, new Date("2026-01-01T00:00:00Z")), 600);
  // The seconds field is honoured: the first firing after 00:00:00 is 00:00:15.
  assert.equal(nextDue(s, new Date("2026-01-01T00:00:00Z"), new Date()).toISOString(), "2026-01-01T00:00:15.000Z");
});

Deno.test("parseSchedule: cron with names (weekdays at 09:00 UTC)", () => {
  const s = parseSchedule("0 9 * * MON-FRI");
  // 2026-01-02 is a Friday: the next firing after Friday 10:00 is Monday 09:00.
  assert.equal(nextDue(s, new Date("2026-01-02T10:00:00Z"), new Date()).toISOString(), "2026-01-05T09:00:00.000Z");
});

Deno.test("parseSchedule: refuses zero and too long intervals", () => {
  assertInvalidSchedule("0s", /between 1s and 366d/);
  assertInvalidSchedule("0m", /between 1s and 366d/);
  assertInvalidSchedule("367d", /between 1s and 366d/);
});

Deno.test("parseSchedule: refuses what is neither a duration nor a cron expression", () => {
  for (const bad of ["5x", "", "   ", "m", "5M", "1h 30m", "30m1h", "-5m", "1.5h", "@hourly", "every 5 minutes"]) {
    assertInvalidSchedule(
      bad,
      /expected a duration such as 30s, 5m, 1h30m or 1d, or a cron expression of 5 or 6 fields/,
    );
  }
});

Deno.test("parseSchedule: refuses cron expressions of the wrong size", () => {
  assertInvalidSchedule("* * *", /cron expression of 5 or 6 fields/);
  assertInvalidSchedule("* * * *", /cron expression of 5 or 6 fields/);
  assertInvalidSchedule("0 0 0 * * * *", /cron expression of 5 or 6 fields/);
});

Deno.test("parseSchedule: refuses invalid cron fields and expressions that never fire", () => {
  assertInvalidSchedule("61 * * * *", /not a valid cron expression.*minute/);
  assertInvalidSchedule("* 25 * * *", /not a valid cron expression/);
  assertInvalidSchedule("* * * 13 *", /not a valid cron expression/);
  assertInvalidSchedule("a b c d e", /not a valid cron expression/);
  assertInvalidSchedule("0 0 31 2 *", /never fires/);
});

Deno.test("nextDue: a stream table never refreshed is due now", () => {
  const now = new Date("2026-03-01T12:00:00Z");
  assert.equal(nextDue(parseSchedule("5m"), null, now).getTime(), now.getTime());
  assert.equal(nextDue(parseSchedule("0 * * * *"), null, now).getTime(), now.getTime());
});

Deno.test("nextDue: an interval counts from the last refresh", () => {
  const last = new Date("2026-03-01T12:00:00Z");
  const now = new Date("2026-03-01T12:00:10Z");
  assert.equal(nextDue(parseSchedule("30s"), last, now).toISOString(), "2026-03-01T12:00:30.000Z");
  assert.equal(nextDue(parseSchedule("1h30m"), last, now).toISOString(), "2026-03-01T13:30:00.000Z");
  // Long overdue: due at its nominal time (in the past), so the next tick runs it once.
  assert.equal(
    nextDue(parseSchedule("1s"), last, new Date("2026-03-02T00:00:00Z")).toISOString(),
    "2026-03-01T12:00:01.000Z",
  );
});

Deno.test("nextDue: cron is the next firing strictly after the last refresh, in UTC", () => {
  const every5 = parseSchedule("*/5 * * * *");
  const now = new Date("2026-03-01T12:00:00Z");
  assert.equal(nextDue(every5, new Date("2026-03-01T00:02:10Z"), now).toISOString(), "2026-03-01T00:05:00.000Z");
  assert.equal(nextDue(every5, new Date("2026-03-01T00:05:00Z"), now).toISOString(), "2026-03-01T00:10:00.000Z");
  const daily = parseSchedule("0 9 * * *");
  assert.equal(nextDue(daily, new Date("2026-03-01T10:00:00Z"), now).toISOString(), "2026-03-02T09:00:00.000Z");
});

type Item = { pgt_id: number; label: string };
const item = (pgt_id: number): Item => ({ pgt_id, label: `st${pgt_id}` });
const ids = (items: Item[]) => items.map((i) => i.pgt_id);

Deno.test("orderByDependencies: a chain comes out upstream first, whatever the input order", () => {
  // 3 reads 2, 2 reads 1.
  const upstream = new Map([[3, [2]], [2, [1]]]);
  assert.deepEqual(ids(orderByDependencies([item(3), item(2), item(1)], upstream)), [1, 2, 3]);
  assert.deepEqual(ids(orderByDependencies([item(2), item(3), item(1)], upstream)), [1, 2, 3]);
});

Deno.test("orderByDependencies: keeps the input order of independent stream tables and returns each once", () => {
  assert.deepEqual(ids(orderByDependencies([item(5), item(1), item(9)], new Map())), [5, 1, 9]);
  // A diamond: 4 reads 2 and 3, both read 1.
  const upstream = new Map([[4, [2, 3]], [2, [1]], [3, [1]]]);
  const out = ids(orderByDependencies([item(4), item(3), item(2), item(1)], upstream));
  assert.equal(out.length, 4);
  assert.deepEqual([...out].sort(), [1, 2, 3, 4]);
  const pos = (id: number) => out.indexOf(id);
  assert.ok(pos(1) < pos(2) && pos(1) < pos(3) && pos(2) < pos(4) && pos(3) < pos(4), `order ${out}`);
});

Deno.test("orderByDependencies: orders through a stream table that is not due (not in the list)", () => {
  // 3 reads 2 reads 1; only 3 and 1 are due: 1 still comes first.
  const upstream = new Map([[3, [2]], [2, [1]]]);
  assert.deepEqual(ids(orderByDependencies([item(3), item(1)], upstream)), [1, 3]);
});

Deno.test("orderByDependencies: a cycle does not loop forever and yields each item once", () => {
  const upstream = new Map([[1, [2]], [2, [1]]]);
  const out = ids(orderByDependencies([item(1), item(2)], upstream));
  assert.deepEqual([...out].sort(), [1, 2]);
});

const base = {
  mode: "DIFFERENTIAL" as const,
  hasFrontier: true,
  deltaRows: 10,
  truncated: false,
  sourceRows: 1000,
  maxChangeRatio: 0.15,
  predictedDiffMs: null,
  predictedFullMs: null,
};

Deno.test("chooseAction: the initial refresh is FULL", () => {
  const d = chooseAction({ ...base, hasFrontier: false, deltaRows: 0 });
  assert.equal(d.action, "FULL");
  assert.equal(d.reason, "initial refresh");
});

Deno.test("chooseAction: no delta is NO_DATA, in both modes", () => {
  assert.deepEqual(chooseAction({ ...base, deltaRows: 0 }), { action: "NO_DATA", reason: null, deltaRows: 0 });
  assert.equal(chooseAction({ ...base, mode: "FULL", deltaRows: 0 }).action, "NO_DATA");
});

Deno.test("chooseAction: a small delta in DIFFERENTIAL mode is DIFFERENTIAL", () => {
  assert.deepEqual(chooseAction(base), { action: "DIFFERENTIAL", reason: null, deltaRows: 10 });
});

Deno.test("chooseAction: FULL mode with a delta recomputes", () => {
  const d = chooseAction({ ...base, mode: "FULL" });
  assert.equal(d.action, "FULL");
  assert.match(d.reason ?? "", /refresh mode FULL/);
  assert.equal(d.deltaRows, 10);
});

Deno.test("chooseAction: a truncated source forces FULL", () => {
  const d = chooseAction({ ...base, truncated: true, deltaRows: 1 });
  assert.equal(d.action, "FULL");
  assert.match(d.reason ?? "", /truncated/);
});

Deno.test("chooseAction: a change ratio over the limit is FULL with a reason naming the ratio", () => {
  const d = chooseAction({ ...base, deltaRows: 200, sourceRows: 1000 });
  assert.equal(d.action, "FULL");
  assert.match(d.reason ?? "", /20\.0%/);
  assert.match(d.reason ?? "", /differential_max_change_ratio 0\.15/);
  assert.match(d.reason ?? "", /200 changed rows/);
  // At the limit exactly it stays DIFFERENTIAL; just above it does not.
  assert.equal(chooseAction({ ...base, deltaRows: 150, sourceRows: 1000 }).action, "DIFFERENTIAL");
  assert.equal(chooseAction({ ...base, deltaRows: 151, sourceRows: 1000 }).action, "FULL");
  // An empty source with a delta counts as one row: any delta is over the ratio.
  assert.equal(chooseAction({ ...base, deltaRows: 1, sourceRows: 0 }).action, "FULL");
});

Deno.test("chooseAction: cost history predicting DIFFERENTIAL slower than FULL chooses FULL", () => {
  const d = chooseAction({ ...base, predictedDiffMs: 80, predictedFullMs: 20 });
  assert.equal(d.action, "FULL");
  assert.match(d.reason ?? "", /cost history predicts DIFFERENTIAL 80\.0 ms > FULL 20\.0 ms/);
  assert.equal(chooseAction({ ...base, predictedDiffMs: 5, predictedFullMs: 20 }).action, "DIFFERENTIAL");
  // One prediction alone decides nothing.
  assert.equal(chooseAction({ ...base, predictedDiffMs: 80, predictedFullMs: null }).action, "DIFFERENTIAL");
});
