/**
 * /metrics read by real consumers from Debian, against the real service (main.ts) over real sockets: Python's
 * OpenMetrics parser (python3-prometheus-client), `promtool check metrics` on the 0.0.4 output, and a Prometheus
 * server that scrapes the service with the read token and answers a query for pg_trickle_refreshes_total.
 */
import assert from "node:assert/strict";
import { freePort } from "../../db/embedded.ts";
import { freshDatabase, type TestDatabase } from "../support/db.ts";
import { eventually, type ServiceProcess, spawnService } from "../support/process.ts";
import { OPENMETRICS, TEXT } from "../support/metrics.ts";

const ADMIN = "admin-token-0123456789";
const READ = "read-token-0123456789ab";

interface Running {
  db: TestDatabase;
  db2: TestDatabase;
  service: ServiceProcess;
}

/** The service over two databases, with a stream table in each (one reading a source with an odd schema name). */
async function withRunningService(fn: (r: Running) => Promise<void>): Promise<void> {
  const db = await freshDatabase("e2e");
  const db2 = await freshDatabase("e2e");
  let service: ServiceProcess | null = null;
  try {
    // Test-only SQL: constant text.
    await db.sql.unsafe(`
      CREATE SCHEMA "odd""sch\\ema";
      CREATE TABLE "odd""sch\\ema".src (id int PRIMARY KEY, v int);
      INSERT INTO "odd""sch\\ema".src VALUES (1, 1), (2, 2);`);
    await db2.sql`CREATE TABLE y (id int PRIMARY KEY)`;
    service = await spawnService({
      databaseUrl: db.url,
      env: {
        TRICKLE_DATABASES: `${db.name},${db2.name}`,
        TRICKLE_COORDINATION_DATABASE: db.name,
        TRICKLE_ADMIN_TOKEN: ADMIN,
        TRICKLE_READ_TOKEN: READ,
        TRICKLE_METRICS_SELF_CHECK: "true",
      },
    });
    const post = async (body: Record<string, unknown>) => {
      const res = await fetch(`${service!.url}/stream-tables`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      assert.equal(res.status, 201, await res.text());
    };
    await post({ name: "odd_reader", query: `SELECT id, v FROM "odd""sch\\ema".src`, schedule: "1s" });
    await post({ name: "two", query: "SELECT id FROM y", schedule: "1s", database: db2.name });
    await db.sql.unsafe(`INSERT INTO "odd""sch\\ema".src VALUES (3, 3)`);
    await fn({ db, db2, service });
  } finally {
    if (service !== null) {
      service.kill("SIGTERM");
      await service.status;
    }
    await db.drop();
    await db2.drop();
  }
}

async function get(r: Running, accept: string | null, token: string | null = READ): Promise<Response> {
  const headers: Record<string, string> = {};
  if (accept !== null) headers.accept = accept;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  return await fetch(`${r.service.url}/metrics`, { headers });
}

/** The first python3 that has prometheus_client (a pyenv shim may come first on PATH without it). */
async function python(): Promise<string> {
  for (const candidate of ["python3", "/usr/bin/python3"]) {
    try {
      const out = await new Deno.Command(candidate, { args: ["-c", "import prometheus_client"] }).output();
      if (out.success) return candidate;
    } catch {
      // not installed under that name
    }
  }
  throw new Error("no python3 with prometheus_client (install python3-prometheus-client)");
}

async function run(cmd: string, args: string[], stdin: string): Promise<{ code: number; out: string }> {
  const child = new Deno.Command(cmd, { args, stdin: "piped", stdout: "piped", stderr: "piped" }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(stdin));
  await writer.close();
  const out = await child.output();
  const d = new TextDecoder();
  return { code: out.code, out: d.decode(out.stdout) + d.decode(out.stderr) };
}

const PARSE = `
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(sys.stdin.read()))
samples = [s for f in families for s in f.samples]
assert all("db_oid" in s.labels and "db_name" in s.labels for s in samples), "a sample without db labels"
odd = [s for s in samples if s.name == "pg_trickle_change_buffer_rows" and s.labels["schema"] == 'odd"sch\\\\ema']
assert len(odd) == 1, odd
print(len(families), len(samples))
`;

Deno.test({
  name: "e2e metrics: read token; Python parses the OpenMetrics; promtool accepts the 0.0.4",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    withRunningService(async (r) => {
      const anonymous = await get(r, null, null);
      assert.equal(anonymous.status, 401, "behind the read token like other reads");
      await anonymous.body?.cancel();

      const om = await get(r, "application/openmetrics-text; version=1.0.0");
      assert.equal(om.status, 200);
      assert.equal(om.headers.get("content-type"), OPENMETRICS);
      const parsed = await run(await python(), ["-c", PARSE], await om.text());
      assert.equal(parsed.code, 0, parsed.out);
      const [families, samples] = parsed.out.trim().split(" ").map(Number);
      assert.ok(families! >= 15 && samples! > 20, parsed.out);

      const text = await get(r, null);
      assert.equal(text.headers.get("content-type"), TEXT);
      const check = await run("promtool", ["check", "metrics"], await text.text());
      assert.equal(check.code, 0, check.out);
      assert.equal(check.out.trim(), "", `promtool has remarks: ${check.out}`);
    }),
});

Deno.test({
  name: "e2e metrics: a real Prometheus scrapes the service; its query API has pg_trickle_refreshes_total by db_name",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    withRunningService(async (r) => {
      const dir = await Deno.makeTempDir({ prefix: "trickle-prometheus-" });
      const port = await freePort();
      const target = new URL(r.service.url).host;
      await Deno.writeTextFile(`${dir}/token`, READ);
      await Deno.writeTextFile(
        `${dir}/prometheus.yml`,
        [
          "global: { scrape_interval: 1s, scrape_timeout: 1s }",
          "scrape_configs:",
          "  - job_name: trickle",
          `    authorization: { credentials_file: ${dir}/token }`,
          `    static_configs: [ { targets: ["${target}"] } ]`,
        ].join("\n") + "\n",
      );
      const prometheus = new Deno.Command("prometheus", {
        args: [
          `--config.file=${dir}/prometheus.yml`,
          `--storage.tsdb.path=${dir}/data`,
          `--web.listen-address=127.0.0.1:${port}`,
        ],
        stdout: "null",
        stderr: "piped",
      }).spawn();
      let log = "";
      const drained = (async () => {
        for await (const chunk of prometheus.stderr) log += new TextDecoder().decode(chunk);
      })();
      try {
        const query = async (q: string) => {
          try {
            const res = await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(q)}`);
            if (!res.ok) return [];
            const body = await res.json() as { data: { result: { metric: Record<string, string> }[] } };
            return body.data.result;
          } catch {
            return []; // not listening yet
          }
        };
        let result: { metric: Record<string, string> }[] = [];
        const found = await eventually(async () => {
          result = await query("pg_trickle_refreshes_total");
          return new Set(result.map((x) => x.metric.db_name)).size === 2;
        }, 30_000);
        assert.ok(
          found,
          `Prometheus has no pg_trickle_refreshes_total for both databases: ${JSON.stringify(result)}\n${log}`,
        );
        const names = new Set(result.map((x) => x.metric.db_name));
        assert.deepEqual(names, new Set([r.db.name, r.db2.name]));
        assert.ok(result.every((x) => /^\d+$/.test(x.metric.db_oid ?? "")), JSON.stringify(result));
        const up = await query('up{job="trickle"}');
        assert.equal((up[0] as unknown as { value: [number, string] } | undefined)?.value[1], "1", "the target is up");
      } finally {
        prometheus.kill("SIGTERM");
        await prometheus.status;
        await drained;
        await Deno.remove(dir, { recursive: true });
      }
    }),
});
