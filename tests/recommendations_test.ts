/**
 * Recommendations from a real database: the planner pass stores them, REST and SQL show the same, the list sorts by
 * delta_pct, applying one sets the schedule, and bad requests are refused with the database unchanged.
 */
import assert from "node:assert/strict";
import { ok, problem, withService } from "./support/api.ts";
import { dbTest } from "./support/service.ts";
import type { TestService } from "./support/service.ts";

/** A FULL stream table over `src` with `samples` successful FULL refreshes of `ms` each in its history. */
async function streamTableWithHistory(
  s: TestService,
  options: { name: string; schedule: string; deadlineMs: number | null; samples: number; ms: number },
  headers: Record<string, string> = {},
): Promise<void> {
  await ok(
    await s.request("POST", "/stream-tables", {
      name: options.name,
      query: "SELECT id, v FROM src",
      schedule: options.schedule,
      refresh_mode: "FULL",
      freshness_deadline_ms: options.deadlineMs,
    }, headers),
    201,
  );
  // Synthetic history, as refreshes of the past hours would have left it (one every 10 minutes, a little noise).
  await s.db.sql`
    INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, started_at, finished_at, duration_ms, action, status,
      initiated_by)
    SELECT st.pgt_id, now() - i * interval '10 minutes', now() - i * interval '10 minutes', ${options.ms} + i % 3,
      'FULL', 'SUCCESS', 'SCHEDULER'
    FROM pgtrickle.pgt_stream_tables st, generate_series(1, ${options.samples}) i
    WHERE st.pgt_name = ${options.name}`;
}

async function setup(s: TestService): Promise<void> {
  await s.db.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
  await s.db.sql`INSERT INTO src SELECT i, i FROM generate_series(1, 10) i`;
  // 60 s deadline, 2 s refreshes, every 5 minutes: should refresh every ~53 s.
  await streamTableWithHistory(s, { name: "tight", schedule: "5m", deadlineMs: 60_000, samples: 30, ms: 2000 });
  // No deadline, 100 ms refreshes every 10 s: fine as it is.
  await streamTableWithHistory(s, { name: "relaxed", schedule: "10s", deadlineMs: null, samples: 30, ms: 100 });
  // Too few refreshes to judge.
  await streamTableWithHistory(s, { name: "young", schedule: "*/5 * * * *", deadlineMs: 60_000, samples: 3, ms: 2000 });
}

Deno.test({
  name: "recommendations: a pass stores them; REST and SQL show the same; sorted by delta_pct; pass time recorded",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      await setup(s);
      const before = await ok<Record<string, unknown>>(await s.request("GET", "/recommendations/tight"));
      assert.equal(before.confidence, 0);
      assert.equal((before.reasoning as { rule: string }[])[0]!.rule, "no_pass_yet");

      const result = await s.engine.planner.pass(s.engine.db(), { recommend: true });
      assert.equal(result.stream_tables, 3);

      const tight = await ok<Record<string, unknown>>(await s.request("GET", "/recommendations/public.tight"));
      const [sql] = await s.db.sql<{ r: Record<string, unknown> }[]>`SELECT pgtrickle.recommend_schedule('tight') AS r`;
      assert.deepEqual(tight, JSON.parse(JSON.stringify(sql!.r)), "REST shows what SQL returns");
      assert.equal(tight.current_interval_seconds, 300);
      const recommended = tight.recommended_interval_seconds as number;
      assert.ok(recommended >= 50 && recommended <= 58, `recommended ${recommended}`);
      assert.equal(tight.delta_pct, Math.round(((recommended - 300) / 300) * 1000) / 10);
      assert.ok((tight.confidence as number) > 0.5);
      assert.deepEqual((tight.reasoning as { rule: string }[]).map((r) => r.rule), [
        "interval_from_deadline",
        "no_overlap",
      ]);
      assert.equal(tight.peak_window_cron, null);
      assert.match(tight.peak_window_reason as string, /no UTC hour costs 1\.5 times/);
      const [pass] = await s.db.sql<{ last_pass_at: Date; stream_tables: number }[]>`
        SELECT last_pass_at, stream_tables FROM pgtrickle.pgt_planner_passes`;
      assert.equal(pass!.stream_tables, 3);
      // The same instant: PostgreSQL writes a timestamp's fraction without trailing zeros (".15" for 150 ms).
      assert.equal(Date.parse(String(tight.pass_at)), pass!.last_pass_at.getTime());

      const young = await ok<Record<string, unknown>>(await s.request("GET", "/recommendations/young"));
      assert.equal(young.confidence, 0);
      assert.equal(young.current_interval_seconds, 300, "a 5-field cron every 5 minutes");

      const list = await ok<{ stream_table: string; delta_pct: number; confidence: number }[]>(
        await s.request("GET", "/recommendations?sort=delta_pct"),
      );
      assert.deepEqual(list.map((r) => r.stream_table), ["public.relaxed", "public.young", "public.tight"]);
      assert.deepEqual(list.map((r) => r.delta_pct), [0, 0, tight.delta_pct]);
      const rows = await s.db.sql<{ stream_table: string }[]>`SELECT * FROM pgtrickle.schedule_recommendations()`;
      assert.deepEqual(rows.map((r) => r.stream_table), list.map((r) => r.stream_table), "SQL lists the same order");
      const byConfidence = await ok<{ confidence: number }[]>(
        await s.request("GET", "/recommendations?sort=confidence"),
      );
      assert.deepEqual(
        byConfidence.map((r) => r.confidence),
        [...byConfidence.map((r) => r.confidence)].sort((a, b) => b - a),
      );
    }),
});

Deno.test({
  name: "recommendations: apply sets the recommended schedule (admin); none to apply is 409; unknown names 404",
  ...dbTest,
  fn: () =>
    withService({ adminToken: "admin-token-0123456789", readToken: "read-token-0123456789" }, async (s) => {
      const admin = { authorization: "Bearer admin-token-0123456789" };
      const reader = { authorization: "Bearer read-token-0123456789" };
      await s.db.sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await streamTableWithHistory(
        s,
        { name: "tight", schedule: "5m", deadlineMs: 60_000, samples: 30, ms: 2000 },
        admin,
      );
      await streamTableWithHistory(
        s,
        { name: "young", schedule: "5m", deadlineMs: 60_000, samples: 3, ms: 2000 },
        admin,
      );
      await s.engine.planner.pass(s.engine.db(), { recommend: true });
      await problem(await s.request("POST", "/recommendations/tight/apply", undefined, reader), 403, "Forbidden");
      const rec = await ok<{ recommended_interval_seconds: number }>(
        await s.request("GET", "/recommendations/tight", undefined, reader),
      );
      const applied = await ok<{ previous_schedule: string; schedule: string }>(
        await s.request("POST", "/recommendations/tight/apply", undefined, admin),
      );
      assert.equal(applied.previous_schedule, "5m");
      assert.equal(applied.schedule, `${rec.recommended_interval_seconds}s`);
      const [st] = await s.db.sql<{ schedule: string }[]>`
        SELECT schedule FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'tight'`;
      assert.equal(st!.schedule, applied.schedule);

      await problem(
        await s.request("POST", "/recommendations/young/apply", undefined, admin),
        409,
        "NoRecommendation",
        /^Stream table "young" has no recommendation to apply: too few refreshes to judge: confidence 0$/,
      );
      const [young] = await s.db.sql<{ schedule: string }[]>`
        SELECT schedule FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'young'`;
      assert.equal(young!.schedule, "5m", "unchanged");
      await problem(await s.request("GET", "/recommendations/nope", undefined, reader), 404, "StreamTableNotFound");
      await problem(
        await s.request("POST", "/recommendations/nope/apply", undefined, admin),
        404,
        "StreamTableNotFound",
      );
      await problem(await s.request("GET", "/recommendations/1bad", undefined, reader), 400, "InvalidName");
      await problem(await s.request("GET", "/recommendations?sort=size", undefined, reader), 400, "BadRequest");
      await assert.rejects(s.db.sql`SELECT pgtrickle.recommend_schedule('nope')`, /Stream table "nope" does not exist/);
    }),
});
