/**
 * e2e: the real service (main.ts) with TRICKLE_ALERTMANAGER_URL pointing at Debian's Alertmanager
 * (`prometheus-alertmanager`): a stream table past its freshness deadline fires freshness_deadline_missed after a
 * scheduler tick, Alertmanager lists it in GET /api/v2/alerts with its labels, and the resolve (endsAt) clears it.
 */
import assert from "node:assert/strict";
import { freePort } from "../../db/embedded.ts";
import { freshDatabase } from "../support/db.ts";
import { eventually, spawnService } from "../support/process.ts";

interface AmAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  status: { state: string };
  endsAt: string;
}

async function startAlertmanager(): Promise<{ url: string; stop: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "trickle-am-" });
  const port = await freePort();
  // The least configuration: every alert to a receiver that sends nothing; the API is what the test reads.
  await Deno.writeTextFile(
    `${dir}/alertmanager.yml`,
    'route:\n  receiver: "null"\n  group_wait: 1s\nreceivers:\n  - name: "null"\n',
  );
  const child = new Deno.Command("prometheus-alertmanager", {
    args: [
      `--config.file=${dir}/alertmanager.yml`,
      `--storage.path=${dir}/data`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--cluster.listen-address=", // one instance, no gossip port
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  const up = await eventually(async () => {
    try {
      const r = await fetch(`${url}/-/ready`);
      await r.body?.cancel();
      return r.ok;
    } catch {
      return false;
    }
  }, 15_000);
  if (!up) {
    child.kill("SIGKILL");
    throw new Error(`Alertmanager did not start: ${new TextDecoder().decode((await child.output()).stderr)}`);
  }
  return {
    url,
    stop: async () => {
      child.kill("SIGTERM");
      await child.stderr.cancel();
      await child.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test({
  name: "e2e: Alertmanager receives freshness_deadline_missed from the service, lists it, and sees it resolved",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const am = await startAlertmanager();
    const db = await freshDatabase("e2e");
    const service = await spawnService({
      databaseUrl: db.url,
      env: { TRICKLE_ALERTMANAGER_URL: am.url, TRICKLE_COORDINATION_DATABASE: db.name },
    });
    const amAlerts = async () => {
      const r = await fetch(`${am.url}/api/v2/alerts`);
      return (await r.json()) as AmAlert[];
    };
    try {
      await db.sql`CREATE TABLE src (id int PRIMARY KEY)`;
      const post = await fetch(`${service.url}/stream-tables`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        // Refreshed at creation, then not for an hour: with a 1 ms deadline the data is too old at once.
        body: JSON.stringify({ name: "stale", query: "SELECT id FROM src", schedule: "1h", freshness_deadline_ms: 1 }),
      });
      assert.equal(post.status, 201, await post.text());

      const missed = (a: AmAlert) =>
        a.labels.stream_table === "public.stale" && a.labels.alertname === "freshness_deadline_missed";
      const listed = await eventually(async () => (await amAlerts()).some(missed), 20_000);
      assert.ok(listed, `Alertmanager never listed the alert; service log:\n${service.log()}`);
      const alert = (await amAlerts()).find(missed)!;
      assert.deepEqual(alert.labels, {
        alertname: "freshness_deadline_missed",
        stream_table: "public.stale",
        db_name: db.name,
        severity: "critical",
      });
      assert.equal(alert.status.state, "active");
      assert.match(alert.annotations.summary!, /public\.stale is older than its 1 ms freshness deadline/);

      // /alerts on the service shows the delivery as delivered.
      const ours = await (await fetch(`${service.url}/alerts`)).json() as {
        deliveries: { sink: string; state: string }[];
      }[];
      assert.deepEqual(ours[0]!.deliveries.map((d) => [d.sink, d.state]), [["alertmanager", "delivered"]]);

      // A generous deadline: the next tick's pass resolves both, and Alertmanager no longer lists them as active.
      const patch = await fetch(`${service.url}/stream-tables/stale`, {
        method: "PATCH",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ freshness_deadline_ms: 3_600_000 }),
      });
      assert.equal(patch.status, 200, await patch.text());
      const resolved = await eventually(
        async () =>
          !(await amAlerts()).some((a) => a.labels.stream_table === "public.stale" && a.status.state === "active"),
        20_000,
      );
      assert.ok(resolved, `Alertmanager still lists the alert as active; service log:\n${service.log()}`);
    } finally {
      service.kill("SIGTERM");
      await service.status;
      await am.stop();
      await db.drop();
    }
  },
});
