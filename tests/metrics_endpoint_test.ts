/**
 * GET /metrics from a live service over real databases: both formats by content negotiation, valid OpenMetrics,
 * every series labelled with its database, names that need escaping, counters that only grow, and the freshness lag
 * of a stream table that misses committed changes.
 */
import assert from "node:assert/strict";
import { connect, type Sql, urlForDatabase } from "../db/pool.ts";
import { validateOpenMetrics } from "../engine/metrics/conformance.ts";
import { recordAlert, recordDelivery } from "../engine/metrics/registry.ts";
import { dbTest, type TestService } from "./support/service.ts";
import { created, ok, withService } from "./support/api.ts";
import { OPENMETRICS, PROMETHEUS_ACCEPT, sample, samples, scrape, TEXT } from "./support/metrics.ts";

/** A schema and a table whose names hold a double quote, a backslash and a newline. */
const ODD_SCHEMA = 'we"ird\\sch\nema';
const ODD_TABLE = 'ta"b\\le';
const ODD_SCHEMA_SQL = `"we""ird\\sch\nema"`;
const ODD_SOURCE = `${ODD_SCHEMA_SQL}."ta""b\\le"`;

async function withTwoDatabases(fn: (s: TestService, db2: string, sql2: Sql) => Promise<void>): Promise<void> {
  await withService({ extraDatabases: 1 }, async (s) => {
    const db2 = s.databases[0]!;
    const sql2 = connect(urlForDatabase(s.db.serverUrl, db2), { max: 2 });
    try {
      await fn(s, db2, sql2);
    } finally {
      await sql2.end({ timeout: 1 });
    }
  });
}

Deno.test({
  name: "metrics: two databases, odd names; OpenMetrics and 0.0.4 by Accept, valid, every series labelled",
  ...dbTest,
  fn: () =>
    withTwoDatabases(async (s, db2, sql2) => {
      // Test-only SQL: constant text.
      await s.db.sql.unsafe(`
        CREATE SCHEMA ${ODD_SCHEMA_SQL};
        CREATE TABLE ${ODD_SOURCE} (id int PRIMARY KEY, v int);
        INSERT INTO ${ODD_SOURCE} VALUES (1, 1), (2, 2);`);
      await sql2`CREATE TABLE y (id int PRIMARY KEY, v int)`;
      await sql2`INSERT INTO y VALUES (1, 10)`;
      await created(s, { name: "odd_reader", query: `SELECT id, v FROM ${ODD_SOURCE}`, schedule: "1h" });
      await created(s, { name: "two", query: "SELECT id, v FROM y", schedule: "1h", database: db2 });
      await s.db.sql.unsafe(`INSERT INTO ${ODD_SOURCE} VALUES (3, 3)`);

      const om = await scrape(s, PROMETHEUS_ACCEPT, OPENMETRICS);
      const verdict = validateOpenMetrics(om);
      assert.deepEqual(verdict.violations, [], "the OpenMetrics body is valid");
      assert.ok(om.endsWith("# EOF\n"));
      const oids = new Map<string, string>();
      for (const [name, sql] of [[s.db.name, s.db.sql], [db2, sql2]] as const) {
        const [row] = await sql<{ oid: string }[]>`SELECT oid::text AS oid FROM pg_database WHERE datname = ${name}`;
        oids.set(name, row!.oid);
      }
      const all = samples(om);
      for (const x of all) {
        assert.ok(x.labels.db_name !== undefined && oids.get(x.labels.db_name) === x.labels.db_oid, JSON.stringify(x));
      }
      const db1 = { db_name: s.db.name, db_oid: oids.get(s.db.name)! };
      const two = { db_name: db2, db_oid: oids.get(db2)! };
      sample(all, "pg_trickle_database_info", db1);
      sample(all, "pg_trickle_database_info", two);
      assert.equal(sample(all, "pg_trickle_up", two).value, 1);
      const reader = { ...db1, schema: "public", name: "odd_reader" };
      assert.equal(sample(all, "pg_trickle_refreshes_total", reader).value, 1, "the initial refresh");
      assert.ok(sample(all, "pg_trickle_refreshes_created", reader).value > 0);
      assert.equal(sample(all, "pg_trickle_rows_changed_total", reader).value, 2);
      assert.equal(sample(all, "pg_trickle_refreshes_total", { ...two, name: "two" }).value, 1);
      assert.equal(sample(all, "pg_trickle_active", reader).value, 1);
      // The label value is escaped in the body and reads back as the name PostgreSQL has.
      assert.ok(om.includes('schema="we\\"ird\\\\sch\\nema",name="ta\\"b\\\\le"'), "escaped in the body");
      assert.equal(
        sample(all, "pg_trickle_change_buffer_rows", { ...db1, schema: ODD_SCHEMA, name: ODD_TABLE }).value,
        1,
      );
      assert.ok(sample(all, "pg_trickle_freshness_lag_seconds", reader).value >= 0);
      assert.equal(sample(all, "pg_trickle_freshness_lag_seconds", { ...two, name: "two" }).value, 0);
      assert.equal(sample(all, "pg_trickle_refresh_duration_seconds_count", { ...db1, action: "FULL" }).value, 1);
      assert.equal(
        sample(all, "pg_trickle_refresh_duration_seconds_bucket", { ...db1, action: "FULL", le: "+Inf" }).value,
        1,
      );

      // No Accept, or one that prefers plain text: Prometheus text 0.0.4, the same series without _created.
      const text = await scrape(s, undefined, TEXT);
      await scrape(s, "text/plain;version=0.0.4,application/openmetrics-text;q=0.5", TEXT);
      assert.ok(!text.includes("# EOF") && !text.includes("_created"));
      assert.match(text, /^# TYPE pg_trickle_refreshes_total counter$/m);
      assert.match(text, /^# TYPE pg_trickle_info gauge$/m);
      const key = (x: { name: string; labels: Record<string, string> }) => x.name + JSON.stringify(x.labels);
      const inText = new Set(samples(text).map(key));
      const inOm = new Set(all.filter((x) => !x.name.endsWith("_created")).map(key));
      assert.deepEqual([...inText].sort(), [...inOm].sort(), "the same series in both formats");
    }),
});

Deno.test({
  name: "metrics: counters only grow, keep their _created, and count failures, alerts and deliveries",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      await s.db.sql`CREATE TABLE d (id int PRIMARY KEY, v int NOT NULL)`;
      await s.db.sql`INSERT INTO d VALUES (1, 1)`;
      await created(s, { name: "inv", query: "SELECT id, 10 / v AS r FROM d", schedule: "1h", refresh_mode: "FULL" });
      const st = { db_name: s.db.name, schema: "public", name: "inv" };
      const before = samples(await scrape(s, PROMETHEUS_ACCEPT, OPENMETRICS));
      for (let i = 0; i < 3; i++) await ok(await s.request("POST", "/stream-tables/inv/refresh"));
      await s.db.sql`INSERT INTO d VALUES (2, 0)`; // 10 / 0: the next refresh fails on the data
      assert.equal((await s.request("POST", "/stream-tables/inv/refresh")).status, 422);
      const ctx = s.engine.db();
      recordAlert(ctx, "freshness_deadline_missed");
      recordDelivery(ctx, { sink: "https://hooks.example/a", outcome: "failed" });
      recordDelivery(ctx, { sink: "https://hooks.example/a", outcome: "failed" });
      const om = await scrape(s, PROMETHEUS_ACCEPT, OPENMETRICS);
      assert.deepEqual(validateOpenMetrics(om).violations, []);
      const after = samples(om);
      assert.equal(
        sample(after, "pg_trickle_refreshes_total", st).value,
        sample(before, "pg_trickle_refreshes_total", st).value + 3,
      );
      assert.equal(sample(after, "pg_trickle_refresh_failures_total", st).value, 1);
      assert.equal(sample(after, "pg_trickle_consecutive_errors", st).value, 1);
      // Every successful refresh is in the histogram of its action (these were NO_DATA: nothing had changed).
      const observed = ["FULL", "DIFFERENTIAL", "NO_DATA"].map((action) =>
        sample(after, "pg_trickle_refresh_duration_seconds_count", { db_name: s.db.name, action }).value
      );
      assert.equal(observed.reduce((a, b) => a + b), 4, `histogram counts ${observed}`);
      for (const x of before) {
        if (!x.name.endsWith("_total") && !x.name.endsWith("_created") && !x.name.endsWith("_count")) continue;
        const y = sample(after, x.name, x.labels);
        if (x.name.endsWith("_created")) assert.equal(y.value, x.value, `${x.name} kept its start`);
        else assert.ok(y.value >= x.value, `${x.name}${JSON.stringify(x.labels)} went down`);
      }
      assert.equal(sample(after, "pg_trickle_alerts_total", { kind: "freshness_deadline_missed" }).value, 1);
      assert.equal(sample(after, "pg_trickle_webhook_deliveries_total", { outcome: "failed" }).value, 2);
    }),
});

/** The lag of stream table `name` in the default database, from a fresh scrape. */
async function lag(s: TestService, name: string): Promise<number> {
  const all = samples(await scrape(s, PROMETHEUS_ACCEPT, OPENMETRICS));
  return sample(all, "pg_trickle_freshness_lag_seconds", { db_name: s.db.name, name }).value;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test({
  name: "metrics: freshness lag rises while a suspended stream table misses committed changes, 0 after a refresh",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await sql`INSERT INTO src VALUES (1, 1)`;
      await created(s, { name: "lagging", query: "SELECT id, v FROM src", schedule: "1h" });
      await ok(await s.request("PATCH", "/stream-tables/lagging", { status: "SUSPENDED" }));
      await sleep(1200);
      assert.equal(await lag(s, "lagging"), 0, "time passing without changes is no lag");

      // An uncommitted change is not a change yet.
      const open = await sql.reserve();
      try {
        await open`BEGIN`;
        await open`INSERT INTO src VALUES (2, 2)`;
        assert.equal(await lag(s, "lagging"), 0, "an uncommitted change is not counted");
        await open`COMMIT`;
      } finally {
        open.release();
      }
      const first = await lag(s, "lagging");
      await sleep(1500);
      const second = await lag(s, "lagging");
      assert.ok(second >= first + 1.4, `the lag rises: ${first} then ${second}`);
      assert.ok(second < 3 + 1.5, `bracketed by the previous scrape: ${second}`);
      await ok(await s.request("POST", "/stream-tables/lagging/refresh"));
      assert.equal(await lag(s, "lagging"), 0, "0 once the stream table holds every committed change");
    }),
});

Deno.test({
  name: "metrics: a transaction in flight at a refresh, committed after it, is lag until the next refresh",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await created(s, { name: "frontier", query: "SELECT id, v FROM src", schedule: "1h" });
      const open = await sql.reserve();
      try {
        await open`BEGIN`;
        await open`INSERT INTO src VALUES (1, 1)`;
        // The refresh's snapshot sees this transaction in progress: its frontier does not include it.
        await ok(await s.request("POST", "/stream-tables/frontier/refresh"));
        assert.equal(await lag(s, "frontier"), 0);
        await open`COMMIT`;
      } finally {
        open.release();
      }
      await sleep(300);
      assert.ok(await lag(s, "frontier") > 0, "committed after the frontier: not in the stream table yet");
      await ok(await s.request("POST", "/stream-tables/frontier/refresh"));
      assert.equal(await lag(s, "frontier"), 0);
    }),
});
