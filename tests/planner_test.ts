/**
 * The planner's rules over synthetic history, with a controlled clock (no database): confidence, the recommended
 * interval and its reasoning, the peak window, the alert cooldown, custom rules and rule files refused at start.
 */
import assert from "node:assert/strict";
import type { Clock } from "../engine/clock.ts";
import type { CostSample } from "../engine/cost_model.ts";
import { type AlertState, decideAlert } from "../engine/alerts/outbox.ts";
import { buildFacts, type FactInput, historyStats } from "../engine/planner/facts.ts";
import { RuleSet } from "../engine/planner/recommend.ts";
import { loadRules, RuleFileError } from "../engine/planner/rules.ts";

/** A clock the test moves. */
class TestClock implements Clock {
  constructor(public t: Date) {}
  now(): Date {
    return new Date(this.t);
  }
  advance(seconds: number): void {
    this.t = new Date(this.t.getTime() + seconds * 1000);
  }
}

const NOW = new Date("2026-11-20T12:00:00Z");

/** `n` refreshes of `action`, one every `everySeconds` back from NOW, costing `ms(startedAt)` each. */
function history(
  n: number,
  options: {
    action?: CostSample["action"];
    everySeconds?: number;
    ms: (at: Date, i: number) => number;
    delta?: number;
  },
): CostSample[] {
  return Array.from({ length: n }, (_, i) => {
    const at = new Date(NOW.getTime() - (i + 1) * (options.everySeconds ?? 60) * 1000);
    return {
      action: options.action ?? "FULL",
      duration_ms: options.ms(at, i),
      delta_rows: options.delta ?? 0,
      started_at: at,
    };
  });
}

function input(samples: CostSample[], over: Partial<FactInput> = {}): FactInput {
  const history = historyStats(samples);
  return {
    schema: "public",
    name: "daily_totals",
    refreshMode: "FULL",
    schedule: "5m",
    freshnessDeadlineMs: 60_000,
    lastRefreshAt: new Date(NOW.getTime() - 10_000),
    hasFrontier: true,
    pendingChanges: 0,
    sourceRows: 1000,
    maxChangeRatio: 0.15,
    history,
    minSamples: 20,
    lastFired: { predicted_sla_breach: null, freshness_deadline_missed: null },
    now: NOW,
    ...over,
  };
}

const rules = new RuleSet(await loadRules(null));
/** About 2 s per refresh, a little noise. */
const steady = (n: number) => history(n, { ms: (_, i) => 2000 + (i % 5) * 20 });

Deno.test("planner: confidence is 0.0 below min samples, and the reasoning says so", async () => {
  const { recommendation: r } = await rules.evaluate(buildFacts(input(steady(19))));
  assert.equal(r.confidence, 0);
  assert.equal(r.recommended_interval_seconds, 300, "the current interval stands");
  assert.equal(r.delta_pct, 0);
  assert.ok(
    r.reasoning.some((x) => x.rule === "min_samples" && x.facts.sample_count === 19 && x.facts.min_samples === 20),
  );
  const at20 = (await rules.evaluate(buildFacts(input(steady(20))))).recommendation;
  assert.ok(at20.confidence > 0, "from min samples on, confidence is above 0");
});

Deno.test("planner: a deadline and a cost give a recommendation whose reasoning names its rules and numbers", async () => {
  const facts = buildFacts(input(steady(40)));
  const { recommendation: r, alerts } = await rules.evaluate(facts);
  // cost = median 2040 + 3 robust sigma; the longest interval keeping data within 60 s after such a refresh.
  const cost = facts.refresh_cost_ms as number;
  assert.ok(cost > 2040 && cost < 2300, `cost ${cost}`);
  assert.equal(r.recommended_interval_seconds, Math.floor((60_000 - cost) / 1000));
  assert.equal(r.current_interval_seconds, 300);
  assert.equal(r.delta_pct, Math.round(((r.recommended_interval_seconds! - 300) / 300) * 1000) / 10);
  assert.ok(r.confidence > 0.5 && r.confidence <= 1, `confidence ${r.confidence}`);
  const fired = r.reasoning.map((x) => x.rule);
  assert.deepEqual(fired, ["interval_from_deadline", "no_overlap"]);
  assert.equal(r.reasoning[0]!.facts.deadline_interval_seconds, r.recommended_interval_seconds);
  assert.equal(r.reasoning[1]!.facts.no_overlap_interval_seconds, Math.ceil((1.5 * cost) / 1000));
  assert.deepEqual(r.conflicts, []);
  assert.deepEqual(alerts, []);
});

Deno.test("planner: when the deadline and no overlap cannot both hold, the recommendation says which gives way", async () => {
  const { recommendation: r } = await rules.evaluate(buildFacts(input(steady(40), { freshnessDeadlineMs: 1500 })));
  assert.equal(r.recommended_interval_seconds, 4, "1.5 x ~2.2 s: refreshes must not overlap");
  assert.equal(r.conflicts.length, 1);
  assert.match(r.conflicts[0]!, /"deadline_unreachable" cannot hold/);
  assert.deepEqual(r.reasoning.map((x) => x.rule).sort(), [
    "deadline_missed",
    "deadline_unreachable",
    "no_overlap",
    "predicted_breach",
  ]);
});

Deno.test("planner: a history expensive from 09:00 to 17:00 UTC gives a cron window over those hours", async () => {
  // Two days of refreshes every 10 minutes; those starting 09:00-16:59 UTC cost five times as much.
  const samples = history(288, {
    everySeconds: 600,
    ms: (at) => at.getUTCHours() >= 9 && at.getUTCHours() < 17 ? 5000 : 1000,
  });
  const { recommendation: r } = await rules.evaluate(buildFacts(input(samples, { freshnessDeadlineMs: null })));
  assert.equal(r.peak_window_cron, "* 9-16 * * *");
  assert.equal(r.peak_window_reason, null);
  assert.ok(r.reasoning.some((x) => x.rule === "peak_window" && (x.facts.peak_ratio as number) >= 4.9));
});

Deno.test("planner: a flat history gives no peak window, with the reason", async () => {
  const samples = history(288, { everySeconds: 600, ms: (_, i) => 1000 + (i % 7) * 10 });
  const { recommendation: r } = await rules.evaluate(buildFacts(input(samples, { freshnessDeadlineMs: null })));
  assert.equal(r.peak_window_cron, null);
  assert.match(
    r.peak_window_reason!,
    /^no UTC hour costs 1\.5 times a typical hour \(the costliest is 1\.0\d times\)$/,
  );
  assert.ok(!r.reasoning.some((x) => x.rule === "peak_window"));
  const sparse = await rules.evaluate(buildFacts(input(steady(25), { freshnessDeadlineMs: null })));
  assert.equal(sparse.recommendation.peak_window_cron, null);
  assert.match(sparse.recommendation.peak_window_reason!, /fewer than 4 UTC hours/);
});

Deno.test("planner: every schedule form is understood for the current interval", () => {
  for (
    const [schedule, seconds] of [["30s", 30], ["1h30m", 5400], ["1d", 86_400], ["*/5 * * * *", 300], [
      "*/10 * * * * *",
      10,
    ], ["0 * * * *", 3600]] as const
  ) {
    const facts = buildFacts(input(steady(5), { schedule }));
    assert.equal(facts.current_interval_seconds, seconds, schedule);
  }
});

Deno.test("planner: the predicted breach alert fires exactly once per cooldown window, then resolves", async () => {
  const clock = new TestClock(NOW);
  const cooldownSeconds = 300;
  // DIFFERENTIAL refreshes of 5 rows at 100 ms a row, 60 rows pending: 6 s predicted against a 2 s deadline.
  const samples = [
    ...history(5, { action: "FULL", ms: () => 900 }),
    ...history(30, { action: "DIFFERENTIAL", ms: () => 500, delta: 5 }),
  ];
  let state: AlertState | undefined;
  const fired: number[] = [];
  const resolved: number[] = [];
  const pass = async (pending: number) => {
    const facts = buildFacts(input(samples, {
      refreshMode: "DIFFERENTIAL",
      freshnessDeadlineMs: 2000,
      lastRefreshAt: clock.now(),
      pendingChanges: pending,
      now: clock.now(),
      lastFired: { predicted_sla_breach: state?.last_fired_at ?? null, freshness_deadline_missed: null },
    }));
    const { alerts } = await rules.evaluate(facts);
    const holds = alerts.some((a) => a.kind === "predicted_sla_breach");
    if (holds) assert.equal(facts.predicted_next_ms, 100 * pending);
    const d = decideAlert(state, { holds, now: clock.now(), cooldownSeconds });
    const t = (clock.now().getTime() - NOW.getTime()) / 1000;
    if (d === "fire") (fired.push(t), state = { active: true, last_fired_at: clock.now() });
    if (d === "resolve") (resolved.push(t), state = { active: false, last_fired_at: state!.last_fired_at });
  };
  for (let t = 0; t < 300; t += 10) (await pass(60), clock.advance(10)); // 0..290 s: one window
  assert.deepEqual(fired, [0]);
  await pass(60); // 300 s: the next window
  assert.deepEqual(fired, [0, 300]);
  clock.advance(10);
  await pass(1); // 100 ms predicted: the condition clears
  await pass(1);
  assert.deepEqual(resolved, [310], "one resolve");
});

Deno.test("planner: the custom rule of docs/rules.md loads and changes a recommendation", async () => {
  const doc = await Deno.readTextFile(new URL("../docs/rules.md", import.meta.url));
  const section = doc.slice(doc.indexOf("## A custom rule"));
  const block = /```json\n([\s\S]*?)```/.exec(section);
  assert.ok(block !== null, "docs/rules.md has a JSON block under 'A custom rule'");
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/reporting.json`, block[1]!);
    const custom = new RuleSet(await loadRules(dir));
    const facts = buildFacts(input(steady(40), { schema: "reporting" }));
    const before = (await rules.evaluate(facts)).recommendation;
    const after = (await custom.evaluate(facts)).recommendation;
    assert.ok(before.recommended_interval_seconds! < 900);
    assert.equal(after.recommended_interval_seconds, 900);
    assert.ok(
      after.reasoning.some((r) => r.rule === "reporting_at_least_15_minutes" && r.facts.schema === "reporting"),
    );
    // Another schema is not affected.
    const other = buildFacts(input(steady(40)));
    assert.deepEqual((await custom.evaluate(other)).recommendation, (await rules.evaluate(other)).recommendation);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("planner: a rule file naming an unknown fact, or malformed, is refused with the file and the problem", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cases: [string, string, RegExp][] = [
      [
        "unknown_fact.json",
        JSON.stringify({
          name: "p95",
          conditions: { all: [{ fact: "p95_ms", operator: "greaterThan", value: 1 }] },
          event: { type: "peak_window" },
        }),
        /unknown_fact\.json: rule "p95" names unknown fact "p95_ms"/,
      ],
      ["broken.json", "{ not json", /broken\.json: not valid JSON/],
      [
        "no_conditions.json",
        JSON.stringify({ name: "bare", event: { type: "peak_window" } }),
        /no_conditions\.json: rule "bare": .*conditions/i,
      ],
      [
        "bad_event.json",
        JSON.stringify({
          name: "page",
          conditions: { all: [{ fact: "sample_count", operator: "greaterThan", value: 1 }] },
          event: { type: "page_someone" },
        }),
        /bad_event\.json: rule "page": event type "page_someone" is not one of/,
      ],
      [
        "same_name.json",
        JSON.stringify({
          name: "no_overlap",
          conditions: { all: [{ fact: "sample_count", operator: "greaterThan", value: 1 }] },
          event: { type: "peak_window" },
        }),
        /same_name\.json: rule name "no_overlap" is already used in .*no_overlap\.json/,
      ],
    ];
    for (const [file, text, expected] of cases) {
      await Deno.writeTextFile(`${dir}/${file}`, text);
      await assert.rejects(loadRules(dir), (e: unknown) => {
        assert.ok(e instanceof RuleFileError);
        assert.match(e.message, expected);
        return true;
      });
      await Deno.remove(`${dir}/${file}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
