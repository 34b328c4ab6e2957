/**
 * The service's listeners as a client meets them, over real sockets against the running process (main.ts): malformed
 * HTTP gets 400 with a plain-text body saying what was wrong and the server keeps serving, on the main listener and
 * the metrics listener; the metrics listener serves /health and /grafana with its own time limit; a taken main or
 * metrics port stops the start with PortInUse naming the port.
 */
import assert from "node:assert/strict";
import { freePort } from "../db/embedded.ts";
import { freshDatabase } from "./support/db.ts";
import { launchService, logLines, type ServiceProcess, spawnService } from "./support/process.ts";
import { dbTest } from "./support/service.ts";

/** Sends `raw` bytes on a new connection and reads the answer until the server closes it. */
async function rawExchange(
  port: number,
  raw: string | Uint8Array,
): Promise<{ status: number; headers: string; body: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(typeof raw === "string" ? new TextEncoder().encode(raw) : raw);
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(16384);
    const deadline = setTimeout(() => conn.close(), 5000);
    try {
      while (true) {
        const n = await conn.read(buf);
        if (n === null) break;
        chunks.push(buf.slice(0, n));
      }
    } catch {
      // closed by the deadline: what was read is checked below
    } finally {
      clearTimeout(deadline);
    }
    const text = new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
    const split = text.indexOf("\r\n\r\n");
    const head = split === -1 ? text : text.slice(0, split);
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? "0");
    return { status, headers: head.toLowerCase(), body: split === -1 ? "" : text.slice(split + 4) };
  } finally {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

const MALFORMED: { name: string; raw: string | Uint8Array; says: RegExp }[] = [
  {
    name: "garbage bytes",
    raw: new Uint8Array([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x0d, 0x0a, 0x0d, 0x0a]),
    says: /not HTTP: byte 0x16 at offset 0/,
  },
  {
    name: "a bad request line",
    raw: "GET /health HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    says: /bad request line "GET \/health HTTP\/1\.1 extra"/,
  },
  {
    name: "an unknown HTTP version",
    raw: "GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
    says: /unsupported HTTP version "HTTP\/9\.9"/,
  },
  {
    name: "a header without a colon",
    raw: "GET /health HTTP/1.1\r\nHost: x\r\nX-Broken header value\r\n\r\n",
    says: /header line 2 has no colon: "X-Broken header value"/,
  },
];

async function checkMalformed(t: Deno.TestContext, proc: ServiceProcess, port: number, listener: string) {
  for (const m of MALFORMED) {
    await t.step(`${listener} listener: ${m.name} -> 400 saying so, then a normal request works`, async () => {
      const res = await rawExchange(port, m.raw);
      assert.equal(res.status, 400, `${m.name}: ${res.headers}\n${res.body}`);
      assert.match(res.headers, /content-type: text\/plain; charset=utf-8/);
      assert.match(res.body, /^Bad Request: /);
      assert.match(res.body, m.says);
      const ok = await rawExchange(port, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
      assert.equal(ok.status, 200, ok.body);
      assert.match(ok.body, /"status":"ok"/);
    });
  }
  await t.step(`${listener} listener: the log names each malformed request`, () => {
    const lines = logLines(proc, "malformed request").filter((l) => l.listener === listener);
    assert.equal(lines.length, MALFORMED.length, proc.log());
  });
}

Deno.test({
  name: "listeners: malformed requests, the metrics listener and its time limit",
  ...dbTest,
  fn: async (t) => {
    const db = await freshDatabase();
    const metricsPort = await freePort();
    let proc: ServiceProcess | undefined;
    try {
      proc = await spawnService({
        databaseUrl: db.url,
        env: { TRICKLE_METRICS_PORT: String(metricsPort), TRICKLE_METRICS_REQUEST_TIMEOUT_MS: "400" },
      });
      const mainPort = Number(new URL(proc.url).port);
      await checkMalformed(t, proc, mainPort, "main");
      await checkMalformed(t, proc, metricsPort, "metrics");

      await t.step("the metrics listener serves /health, /metrics and /grafana, not the API", async () => {
        const health = await fetch(`http://127.0.0.1:${metricsPort}/health`);
        assert.equal(health.status, 200);
        assert.equal((await health.json()).status, "ok");
        const grafana = await fetch(`http://127.0.0.1:${metricsPort}/grafana`);
        assert.equal(grafana.status, 200, await grafana.clone().text());
        await grafana.body?.cancel();
        const metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, {
          headers: { accept: "application/openmetrics-text; version=1.0.0" },
        });
        const body = await metrics.text();
        assert.equal(metrics.status, 200, body);
        assert.equal(metrics.headers.get("content-type"), "application/openmetrics-text; version=1.0.0; charset=utf-8");
        assert.match(body, /^pg_trickle_up\{.*db_name=.*\} 1$/m);
        assert.ok(body.endsWith("# EOF\n"));
        const api = await fetch(`http://127.0.0.1:${metricsPort}/stream-tables`);
        assert.equal(api.status, 404);
        assert.equal((await api.json()).code, "NotFound");
      });

      await t.step(
        "a Grafana request past metrics_request_timeout_ms is 503 Timeout; the listener keeps serving",
        async () => {
          // A catalog table held by another session: the datasource's history read waits behind the lock.
          const reserved = await db.sql.reserve();
          try {
            await reserved`BEGIN`;
            await reserved`LOCK TABLE pgtrickle.pgt_refresh_history IN ACCESS EXCLUSIVE MODE`;
            for (const port of [metricsPort, mainPort]) {
              const t0 = performance.now();
              const res = await fetch(`http://127.0.0.1:${port}/grafana/query`, {
                method: "POST",
                headers: { "content-type": "application/json" },
                body: JSON.stringify({ targets: [{ target: "refresh_duration_ms", refId: "A" }] }),
              });
              const ms = performance.now() - t0;
              assert.equal(res.status, 503, `port ${port}: ${await res.clone().text()}`);
              assert.equal(res.headers.get("content-type"), "application/problem+json");
              const body = await res.json();
              assert.equal(body.code, "Timeout");
              assert.match(body.detail, /400 ms/);
              assert.ok(ms < 2000, `answered after ${ms} ms`);
            }
          } finally {
            await reserved`ROLLBACK`;
            reserved.release();
          }
          const health = await fetch(`http://127.0.0.1:${metricsPort}/health`);
          assert.equal(health.status, 200);
          await health.body?.cancel();
        },
      );

      await t.step("SIGTERM stops both listeners and exits 0", async () => {
        proc!.kill("SIGTERM");
        const status = await proc!.status;
        assert.equal(status.code, 0, proc!.log());
        await assert.rejects(fetch(`http://127.0.0.1:${metricsPort}/health`));
      });
    } finally {
      try {
        proc?.kill("SIGKILL");
      } catch {
        // already exited
      }
      await proc?.status;
      await db.drop();
    }
  },
});

Deno.test({
  name: "a taken metrics port or main port stops the start with PortInUse naming it, before any other work",
  ...dbTest,
  fn: async (t) => {
    const dataDir = await Deno.makeTempDir({ prefix: "trickle-ports-" });
    await Deno.chmod(dataDir, 0o755);
    const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const takenPort = (taken.addr as Deno.NetAddr).port;
    try {
      for (const which of ["TRICKLE_METRICS_PORT", "TRICKLE_PORT"] as const) {
        await t.step(`${which} taken`, async () => {
          const t0 = Date.now();
          const proc = which === "TRICKLE_PORT"
            ? await launchService({ port: takenPort, env: { TRICKLE_DATA_DIR: dataDir } })
            : await launchService({ env: { TRICKLE_DATA_DIR: dataDir, TRICKLE_METRICS_PORT: String(takenPort) } });
          const status = await proc.status;
          assert.notEqual(status.code, 0, proc.log());
          const error = logLines(proc, "could not listen")[0]?.error as { code?: string; message?: string } | undefined;
          assert.equal(error?.code, "PortInUse", proc.log());
          assert.match(error?.message ?? "", new RegExp(`^Port ${takenPort} on 127\\.0\\.0\\.1 is already in use`));
          assert.match(error?.message ?? "", new RegExp(which));
          assert.ok(Date.now() - t0 < 3000, "found at once");
          assert.deepEqual([...Deno.readDirSync(dataDir)].map((e) => e.name), [], "no embedded server was set up");
        });
      }
    } finally {
      taken.close();
      await Deno.remove(dataDir, { recursive: true });
    }
  },
});
