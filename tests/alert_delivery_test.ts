/**
 * Alert delivery to a real loopback webhook receiver (Deno.serve in the test): Standard Webhooks signature verified
 * with the standardwebhooks package, retries on 500, 429 and 503 honouring Retry-After, a restart between attempts,
 * a timed-out attempt the receiver did get (the same webhook-id again: it deduplicates), and an unreachable webhook
 * going dead, visible in /alerts, the service unaffected. The secret appears in no answer and no log line.
 */
import assert from "node:assert/strict";
import { Webhook } from "standardwebhooks";
import { type AlertSinks, writeAlert } from "../engine/alerts/outbox.ts";
import type { DatabaseContext } from "../engine/context.ts";
import { createStreamTable } from "../engine/stream_tables.ts";
import { ok } from "./support/api.ts";
import { capturingLogger, OffsetClock, planning, reopen } from "./support/alerts.ts";
import { dbTest, startTestService } from "./support/service.ts";

const SECRET = `whsec_${btoa("trickle-test-secret-0123456789abcdef")}`;

async function fireOne(ctx: DatabaseContext, clock: OffsetClock, sinks: AlertSinks): Promise<void> {
  await ctx.sql`CREATE TABLE src (id int PRIMARY KEY)`;
  const st = await createStreamTable(ctx, {
    name: { schema: "public", name: "daily_totals" },
    query: "SELECT id FROM src",
    schedule: "1m",
    refreshMode: "AUTO",
    freshnessDeadlineMs: 2000,
  });
  await ctx.sql.begin((tx) =>
    writeAlert(tx, {
      pgt_id: st.pgt_id,
      stream_table: "public.daily_totals",
      kind: "predicted_sla_breach",
      state: "firing",
      severity: "warning",
      db_name: ctx.name,
      db_oid: ctx.oid,
      figures: { predicted_ms: 4200, sla_ms: 2000, staleness_ms: 100, pending_changes: 40 },
    }, { now: clock.now(), sinks })
  );
}

interface Delivery {
  attempts: number;
  state: string;
  last_status: number | null;
  last_error: string | null;
  next_attempt_at: Date;
  last_attempt_at: Date | null;
}

Deno.test({
  name:
    "alert delivery: signed webhook, 500 then 429/503 with Retry-After, a restart, a timeout; delivered once per id",
  ...dbTest,
  fn: async () => {
    const received: { id: string; timestamp: string; verified: boolean; body: Record<string, unknown> }[] = [];
    const accepted = new Map<string, number>(); // webhook-id -> times accepted (the receiver's dedupe key)
    const verifier = new Webhook(SECRET);
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
      const body = await req.text();
      const headers = Object.fromEntries(req.headers);
      let verified = true;
      try {
        verifier.verify(body, headers);
      } catch {
        verified = false;
      }
      received.push({
        id: headers["webhook-id"]!,
        timestamp: headers["webhook-timestamp"]!,
        verified,
        body: JSON.parse(body),
      });
      switch (received.length) {
        case 1:
          return new Response("boom", { status: 500 });
        case 2:
          return new Response("slow down", { status: 429, headers: { "retry-after": "2" } });
        case 3:
          return new Response("busy", { status: 503, headers: { "retry-after": "1" } });
        case 4:
          // Taken in, but answered after the service stopped waiting: it will come again with the same id.
          accepted.set(headers["webhook-id"]!, (accepted.get(headers["webhook-id"]!) ?? 0) + 1);
          await new Promise((r) => setTimeout(r, 800));
          return new Response("ok", { status: 200 });
        default:
          accepted.set(headers["webhook-id"]!, (accepted.get(headers["webhook-id"]!) ?? 0) + 1);
          return new Response(null, { status: 204 });
      }
    });
    const url = `http://127.0.0.1:${server.addr.port}/hooks/trickle?token=in-the-query`;
    const clock = new OffsetClock();
    const plan = await planning({ webhooks: [{ url, secret: SECRET }] }, { timeoutMs: 300, retryBaseMs: 200 });
    const logs: string[] = [];
    const s = await startTestService({ clock, planning: plan });
    const ctx = s.engine.db();
    const delivery = async () =>
      (await s.db.sql<Delivery[]>`
        SELECT attempts, state, last_status, last_error, next_attempt_at, last_attempt_at
        FROM pgtrickle.pgt_alert_deliveries`)[0]!;
    try {
      await fireOne(ctx, clock, plan.settings.sinks);
      assert.equal(await s.engine.alerts.deliverDue(ctx), 1);
      let d = await delivery();
      assert.deepEqual([d.attempts, d.state, d.last_status], [1, "pending", 500]);
      const wait = d.next_attempt_at.getTime() - d.last_attempt_at!.getTime();
      assert.ok(wait >= 100 && wait <= 200, `backoff with jitter: ${wait} ms`);
      assert.equal(await s.engine.alerts.deliverDue(ctx), 0, "not due before its backoff");

      clock.advance(250);
      assert.equal(await s.engine.alerts.deliverDue(ctx), 1);
      d = await delivery();
      assert.deepEqual([d.attempts, d.state, d.last_status], [2, "pending", 429]);
      assert.equal(d.next_attempt_at.getTime() - d.last_attempt_at!.getTime(), 2000, "Retry-After: 2");

      // Each attempt is counted by sink kind (never its URL) and outcome.
      const metrics = await (await s.request("GET", "/metrics")).text();
      const failed = metrics.split("\n").find((l) =>
        l.startsWith("pg_trickle_webhook_deliveries_total{") && l.includes('sink="webhook"') &&
        l.includes('outcome="failed"')
      );
      assert.equal(failed?.split(" ").at(-1), "2", metrics);
      assert.ok(!metrics.includes("in-the-query") && !metrics.includes("/hooks/trickle"));

      // The service restarts: a new engine (with its own log) carries on from the outbox.
      const restarted = await reopen(s, { clock, planning: plan, log: capturingLogger(logs) });
      try {
        clock.advance(1000);
        assert.equal(await restarted.alerts.deliverDue(restarted.db()), 0, "Retry-After is honoured");
        clock.advance(1100);
        assert.equal(await restarted.alerts.deliverDue(restarted.db()), 1);
        d = await delivery();
        assert.deepEqual([d.attempts, d.last_status], [3, 503]);
        assert.equal(d.next_attempt_at.getTime() - d.last_attempt_at!.getTime(), 1000, "Retry-After: 1");

        clock.advance(1100);
        assert.equal(await restarted.alerts.deliverDue(restarted.db()), 1);
        d = await delivery();
        assert.deepEqual([d.attempts, d.state, d.last_status], [4, "pending", null]);
        assert.match(d.last_error!, /^network: no answer within 300 ms$/);

        clock.advance(1700); // the backoff after 4 attempts is at most 1.6 s
        assert.equal(await restarted.alerts.deliverDue(restarted.db()), 1);
        d = await delivery();
        assert.deepEqual([d.attempts, d.state, d.last_status, d.last_error], [5, "delivered", 204, null]);
        assert.equal(await restarted.alerts.deliverDue(restarted.db()), 0, "delivered: never sent again");
      } finally {
        await restarted.close(1000);
      }

      assert.equal(received.length, 5);
      assert.ok(received.every((r) => r.verified), "every attempt verifies with the standardwebhooks scheme");
      assert.equal(new Set(received.map((r) => r.id)).size, 1, "one webhook-id across retries and the restart");
      assert.deepEqual([...accepted.values()], [2], "taken twice, once a duplicate the webhook-id dedupes");
      const body = received.at(-1)!.body;
      assert.equal(body.type, "alert.firing");
      assert.deepEqual(
        { ...(body.data as Record<string, unknown>), alert_id: 0, at: "", fired_at: "" },
        {
          alert_id: 0,
          kind: "predicted_sla_breach",
          state: "firing",
          severity: "warning",
          stream_table: "public.daily_totals",
          db_name: ctx.name,
          db_oid: ctx.oid,
          at: "",
          fired_at: "",
          predicted_ms: 4200,
          sla_ms: 2000,
          staleness_ms: 100,
          pending_changes: 40,
        },
      );
      // A tampered body does not verify.
      assert.throws(() =>
        verifier.verify(JSON.stringify({ ...body, type: "alert.resolved" }), {
          "webhook-id": received[0]!.id,
          "webhook-timestamp": received.at(-1)!.timestamp,
          "webhook-signature": "v1,AAAA",
        })
      );

      const res = await s.request("GET", "/alerts");
      const text = await res.clone().text();
      const alerts = await ok<{ deliveries: { target: string; state: string; attempts: number }[] }[]>(res);
      assert.deepEqual(alerts[0]!.deliveries.map((x) => [x.target, x.state, x.attempts]), [
        [`http://127.0.0.1:${server.addr.port}/hooks/trickle`, "delivered", 5],
      ]);
      for (const secret of [SECRET, SECRET.slice(6), "in-the-query"]) {
        assert.ok(!text.includes(secret), "no secret or URL query in /alerts");
        assert.ok(!logs.some((l) => l.includes(secret)), "no secret in the log");
      }
      assert.ok(logs.some((l) => l.includes("alert delivery will retry")), "the log says what happened");
    } finally {
      await s.close();
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "alert delivery: an unreachable webhook is retried, then dead, visible in /alerts; the service carries on",
  ...dbTest,
  fn: async () => {
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close(); // nothing listens there now
    const clock = new OffsetClock();
    const plan = await planning(
      { webhooks: [{ url: `http://user:pw-in-url@127.0.0.1:${port}/hook?token=in-the-query`, secret: SECRET }] },
      { maxAttempts: 3, retryBaseMs: 10 },
    );
    const s = await startTestService({ clock, planning: plan });
    const ctx = s.engine.db();
    try {
      await fireOne(ctx, clock, plan.settings.sinks);
      for (let i = 0; i < 5; i++) {
        await s.engine.alerts.deliverDue(ctx);
        clock.advance(100);
      }
      const alerts = await ok<{ deliveries: Record<string, unknown>[] }[]>(await s.request("GET", "/alerts"));
      const d = alerts[0]!.deliveries[0]!;
      assert.equal(d.state, "dead");
      assert.equal(d.attempts, 3, "dead after the attempt limit, not tried again");
      assert.equal(d.last_status, null);
      assert.match(d.last_error as string, /^network: /);
      assert.equal(d.target, `http://127.0.0.1:${port}/hook`);
      const text = JSON.stringify(alerts);
      for (const hidden of ["pw-in-url", "in-the-query", SECRET]) assert.ok(!text.includes(hidden), hidden);
      assert.equal(d.next_attempt_at, null);
      // The service is unaffected: it answers, and stream tables work.
      await ok(await s.request("GET", "/health"));
      await ok(
        await s.request("POST", "/stream-tables", { name: "still_works", query: "SELECT id FROM src", schedule: "1m" }),
        201,
      );
    } finally {
      await s.close();
    }
  },
});
