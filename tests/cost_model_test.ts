/** The cost model's arithmetic: robust statistics over refresh history, with no database and no clock. */
import assert from "node:assert/strict";
import {
  changeRate,
  type CostSample,
  hourProfile,
  mad,
  median,
  percentile,
  refreshCostPrediction,
  robustSigma,
  summarize,
} from "../engine/cost_model.ts";

const close = (actual: number | null, expected: number, eps = 1e-9) =>
  assert.ok(actual !== null && Math.abs(actual - expected) <= eps, `expected ${expected}, got ${actual}`);

/** A sample started at the given UTC hour of 2025-03-01 (minute offsets keep them distinct). */
function sample(
  action: CostSample["action"],
  durationMs: number,
  deltaRows: number,
  at: string,
): CostSample {
  return { action, duration_ms: durationMs, delta_rows: deltaRows, started_at: new Date(at) };
}

Deno.test("median: the middle value, or the mean of the two middle ones, whatever the input order", () => {
  assert.equal(median([7]), 7);
  assert.equal(median([9, 1, 5]), 5);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([-3, 10, 0, 0, 2]), 0);
  const input = [3, 1, 2];
  median(input);
  assert.deepEqual(input, [3, 1, 2], "the caller's array is not reordered");
});

Deno.test("median, MAD and percentile refuse no values and non-numbers instead of answering NaN", () => {
  assert.throws(() => median([]), RangeError);
  assert.throws(() => mad([]), RangeError);
  assert.throws(() => percentile([], 0.5), RangeError);
  assert.throws(() => median([1, Number.NaN, 3]), RangeError);
  assert.throws(() => percentile([1, 2], 1.5), RangeError);
  assert.throws(() => percentile([1, 2], -0.1), RangeError);
});

Deno.test("MAD is the median absolute deviation; the robust sigma scales it by 1.4826 and shrugs off an outlier", () => {
  // median 2; deviations 1 1 0 0 2 4 7 -> sorted 0 0 1 1 2 4 7 -> MAD 1
  assert.equal(mad([1, 1, 2, 2, 4, 6, 9]), 1);
  close(robustSigma([1, 1, 2, 2, 4, 6, 9]), 1.4826);
  assert.equal(mad([5, 5, 5, 5]), 0);
  // One refresh that took a thousand times longer barely moves them (the standard deviation would be ~3,500 ms).
  const steady = [10, 11, 9, 10, 12, 10, 11];
  assert.equal(mad(steady), 1);
  assert.equal(mad([...steady, 10_000]), 0.5);
  close(robustSigma([...steady, 10_000]), 1.4826 * 0.5);
});

Deno.test("percentile interpolates linearly between ranks, as PostgreSQL's percentile_cont does", () => {
  const v = [15, 20, 35, 40, 50];
  assert.equal(percentile(v, 0), 15);
  assert.equal(percentile(v, 1), 50);
  assert.equal(percentile(v, 0.5), 35);
  // rank 0.4 * 4 = 1.6: 20 + 0.6 * (35 - 20) = 29
  close(percentile(v, 0.4), 29);
  // rank 0.95 * 4 = 3.8: 40 + 0.8 * (50 - 40) = 48
  close(percentile([50, 15, 40, 35, 20], 0.95), 48);
  const hundred = Array.from({ length: 100 }, (_, i) => i + 1);
  // rank 0.95 * 99 = 94.05: 95 + 0.05 * 1
  close(percentile(hundred, 0.95), 95.05);
  assert.equal(percentile([42], 0.95), 42);
  assert.equal(percentile([4, 1, 3, 2], 0.5), median([4, 1, 3, 2]));
});

Deno.test("change rate: the delta rows the refreshes found, per second of the time they span", () => {
  const samples = [
    sample("DIFFERENTIAL", 5, 40, "2025-03-01T10:00:10Z"),
    sample("NO_DATA", 1, 0, "2025-03-01T10:00:20Z"),
    sample("FULL", 50, 60, "2025-03-01T10:00:30Z"),
    // The first refresh's rows were written before the window began: not counted.
    sample("DIFFERENTIAL", 5, 1_000, "2025-03-01T10:00:00Z"),
  ];
  // (40 + 0 + 60) rows over 30 s
  close(changeRate(samples), 100 / 30);
  assert.equal(changeRate([samples[0]!]), null, "one refresh spans no time");
  assert.equal(changeRate([]), null);
  assert.equal(
    changeRate([samples[0]!, { ...samples[1]!, started_at: samples[0]!.started_at }]),
    null,
    "no time between them",
  );
});

Deno.test("hour profile: 24 UTC hours, each the median duration of the refreshes started in it", () => {
  const profile = hourProfile([
    sample("FULL", 100, 0, "2025-03-01T09:05:00Z"),
    sample("FULL", 300, 0, "2025-03-02T09:55:00Z"),
    sample("FULL", 200, 0, "2025-03-03T09:30:00Z"),
    // 23:30 in New York on March 1st is 04:30 UTC on March 2nd: hours are UTC, whatever the offset given.
    sample("FULL", 7, 0, "2025-03-01T23:30:00-05:00"),
    sample("DIFFERENTIAL", 2, 1, "2025-03-01T23:59:59Z"),
  ]);
  assert.equal(profile.length, 24);
  assert.equal(profile[9], 200);
  assert.equal(profile[4], 7);
  assert.equal(profile[23], 2);
  assert.equal(profile.filter((x) => x === null).length, 21);
});

Deno.test("summary: FULL and DIFFERENTIAL apart, NO_DATA left out, an action never seen reads as zero samples", () => {
  const s = summarize([
    sample("FULL", 100, 10, "2025-03-01T01:00:00Z"),
    sample("FULL", 120, 0, "2025-03-01T02:00:00Z"),
    sample("FULL", 1_000, 5, "2025-03-01T02:30:00Z"),
    sample("DIFFERENTIAL", 10, 100, "2025-03-01T03:00:00Z"), // 0.1 ms a row
    sample("DIFFERENTIAL", 30, 100, "2025-03-01T03:10:00Z"), // 0.3
    sample("DIFFERENTIAL", 8, 0, "2025-03-01T03:20:00Z"), // no rows counts as one: 8
    sample("DIFFERENTIAL", 4, 20, "2025-03-01T03:30:00Z"), // 0.2
    sample("NO_DATA", 1, 0, "2025-03-01T04:00:00Z"),
  ]);
  assert.equal(s.FULL.count, 3);
  assert.equal(s.FULL.medianMs, 120);
  assert.equal(s.FULL.madMs, 20);
  close(s.FULL.sigmaMs, 20 * 1.4826);
  close(s.FULL.p95Ms, 120 + 0.9 * (1_000 - 120));
  assert.equal(s.FULL.hourProfile[2], 560);
  assert.equal(s.DIFFERENTIAL.count, 4);
  assert.equal(s.DIFFERENTIAL.medianMs, 9);
  close(s.DIFFERENTIAL.msPerDeltaRow, 0.25);
  assert.equal(s.DIFFERENTIAL.hourProfile[3], 9);

  const none = summarize([sample("NO_DATA", 1, 0, "2025-03-01T04:00:00Z")]);
  assert.equal(none.FULL.count, 0);
  assert.equal(none.FULL.medianMs, null);
  assert.equal(none.DIFFERENTIAL.madMs, null);
  assert.equal(none.DIFFERENTIAL.msPerDeltaRow, null);
  assert.deepEqual(none.DIFFERENTIAL.hourProfile, Array(24).fill(null));
});

/** n samples of one action, a minute apart from `start`, with the given duration and delta rows by index. */
function series(
  action: "FULL" | "DIFFERENTIAL",
  n: number,
  f: (i: number) => { ms: number; rows: number },
  start = Date.UTC(2025, 2, 1),
): CostSample[] {
  return Array.from({ length: n }, (_, i) => {
    const { ms, rows } = f(i);
    return { action, duration_ms: ms, delta_rows: rows, started_at: new Date(start + i * 60_000) };
  });
}

Deno.test("refresh prediction: nothing until five successful refreshes of each kind", () => {
  const fulls = series("FULL", 5, () => ({ ms: 200, rows: 0 }));
  const diffs = series("DIFFERENTIAL", 4, () => ({ ms: 20, rows: 10 }));
  assert.deepEqual(refreshCostPrediction([...fulls, ...diffs]), { msPerDeltaRow: null, fullMs: null });
  const fifth = series("DIFFERENTIAL", 1, () => ({ ms: 20, rows: 10 }), Date.UTC(2025, 2, 2));
  assert.deepEqual(refreshCostPrediction([...fulls, ...diffs, ...fifth]), { msPerDeltaRow: 2, fullMs: 200 });
  // NO_DATA refreshes are no evidence for either.
  const noData = series("FULL", 10, () => ({ ms: 1, rows: 0 })).map((s) => ({ ...s, action: "NO_DATA" as const }));
  assert.deepEqual(refreshCostPrediction([...fulls.slice(1), ...diffs, ...fifth, ...noData]), {
    msPerDeltaRow: null,
    fullMs: null,
  });
});

Deno.test("refresh prediction: medians over the latest 20 of each kind, whatever the order given", () => {
  // 30 old FULL refreshes at 1,000 ms, then 20 recent ones at 100..290 ms (median 195).
  const oldFull = series("FULL", 30, () => ({ ms: 1_000, rows: 0 }), Date.UTC(2025, 0, 1));
  const newFull = series("FULL", 20, (i) => ({ ms: 100 + 10 * i, rows: 0 }), Date.UTC(2025, 1, 1));
  // 25 DIFFERENTIAL refreshes: the first 5 at 10 ms a row, then 20 at 1..20 ms for 4 rows (0.25..5 ms a row).
  const diff = series("DIFFERENTIAL", 25, (i) => i < 5 ? { ms: 1_000, rows: 100 } : { ms: i - 4, rows: 4 });
  const shuffled = [...newFull, ...diff, ...oldFull].reverse();
  const p = refreshCostPrediction(shuffled);
  assert.equal(p.fullMs, 195);
  // per row: (1..20) / 4, median of the 10th and 11th = (10.5) / 4
  close(p.msPerDeltaRow, 10.5 / 4);
});
