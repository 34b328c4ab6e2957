/**
 * The Grafana JSON datasource under /grafana, over a real listener with real refresh history in two databases:
 * requests shaped as the plugin sends them (tests/fixtures/grafana/openapi.yaml), answers in the shapes it accepts,
 * figures that agree with the history table, payload choices and ad-hoc filters (`filters` and `adhocFilters`),
 * variables, tag keys and values, annotations, errors as {"message"}, and the read token.
 */
import assert from "node:assert/strict";
import { listen, type Listener } from "../routes/listener.ts";
import { silentLogger } from "../log.ts";
import { writeAlert } from "../engine/alerts/outbox.ts";
import { dbTest, startTestService, type TestService } from "./support/service.ts";

const ADMIN = "admin-token-0123456789";
const READ = "read-token-0123456789";

type Series = { target: string; refId?: string; datapoints: [number, number][] };
type Table = { type: "table"; refId?: string; columns: { text: string; type?: string }[]; rows: unknown[][] };

/** The answer shapes the plugin's /query accepts (openapi.yaml: timeseries or table). */
function assertFrames(frames: unknown): (Series | Table)[] {
  assert.ok(Array.isArray(frames), JSON.stringify(frames));
  for (const f of frames as Record<string, unknown>[]) {
    if ("datapoints" in f) {
      assert.equal(typeof f.target, "string");
      for (const p of f.datapoints as unknown[]) {
        assert.ok(Array.isArray(p) && p.length === 2 && p.every((x) => typeof x === "number"), JSON.stringify(p));
      }
    } else {
      assert.equal(f.type, "table");
      const columns = f.columns as { text: unknown }[];
      assert.ok(columns.every((c) => typeof c.text === "string"));
      for (const r of f.rows as unknown[][]) assert.equal(r.length, columns.length);
    }
  }
  return frames as (Series | Table)[];
}

Deno.test({
  name: "grafana datasource",
  ...dbTest,
  fn: async (t) => {
    const svc: TestService = await startTestService({ extraDatabases: 1, adminToken: ADMIN, readToken: READ });
    let listener: Listener | undefined;
    try {
      listener = await listen(svc.app, { hostname: "127.0.0.1", port: 0, setting: "-", log: silentLogger, name: "t" });
      const base = `http://127.0.0.1:${listener.port}`;
      const db1 = svc.db.name;
      const db2 = svc.databases[0]!;
      const call = async (method: string, path: string, body?: unknown, token = ADMIN) => {
        return await fetch(base + path, {
          method,
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
        });
      };
      const post = async (path: string, body: unknown, token = READ) => {
        const res = await call("POST", `/grafana${path}`, body, token);
        const text = await res.text();
        assert.equal(res.status, 200, `${path}: ${text}`);
        assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
        return JSON.parse(text);
      };
      const message = async (path: string, body: unknown, status: number, says: RegExp) => {
        const res = await call("POST", `/grafana${path}`, body, READ);
        const text = await res.text();
        assert.equal(res.status, status, text);
        const b = JSON.parse(text);
        assert.equal(typeof b.message, "string", text);
        assert.match(b.message, says);
      };

      // Real refresh history: two stream tables in one database, one in the other; changes, a no-op and a failure.
      const sql = svc.db.sql;
      await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await sql`INSERT INTO src SELECT i, i FROM generate_series(1, 10) i`;
      const created = (name: string, query: string, database = db1) =>
        call("POST", "/stream-tables", { name, query, schedule: "1h", database });
      assert.equal((await created("totals", "SELECT sum(v) AS s, count(*) AS n FROM src")).status, 201);
      assert.equal((await created("quotients", "SELECT id, 100 / v AS q FROM src")).status, 201);
      await svc.engine.db(db2).sql`CREATE TABLE other (id int PRIMARY KEY)`;
      await svc.engine.db(db2).sql`INSERT INTO other VALUES (1), (2)`;
      assert.equal((await created("other_copy", "SELECT id FROM other", db2)).status, 201);
      await sql`UPDATE src SET v = v + 1 WHERE id <= 3`;
      assert.equal((await call("POST", "/stream-tables/totals/refresh")).status, 200);
      assert.equal((await call("POST", "/stream-tables/totals/refresh")).status, 200); // nothing pending
      await sql`INSERT INTO src VALUES (11, 11)`;
      assert.equal((await call("POST", "/stream-tables/totals/refresh")).status, 200);
      await sql`UPDATE src SET v = 0 WHERE id = 5`;
      assert.equal((await call("POST", "/stream-tables/quotients/refresh")).status, 422);

      const historyOf = async (database: string) =>
        (await svc.engine.db(database).sql<{ st: string; n: number; changed: number; failed: number }[]>`
        SELECT s.pgt_schema || '.' || s.pgt_name AS st, count(*)::int AS n,
          (sum(h.rows_inserted + h.rows_deleted) FILTER (WHERE h.status = 'SUCCESS'))::int AS changed,
          (count(*) FILTER (WHERE h.status = 'FAILED'))::int AS failed
        FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables s USING (pgt_id) GROUP BY 1`)
          .map((h) => ({ ...h, st: `${database}/${h.st}` }));
      const history = [...await historyOf(db1), ...await historyOf(db2)];
      const hist = new Map(history.map((h) => [h.st.slice(h.st.indexOf("/") + 1), h]));
      assert.equal(hist.get("public.totals")?.n, 4, "CREATE and three manual refreshes");
      assert.equal(hist.get("public.quotients")?.failed, 1);

      const now = Date.now();
      const range = {
        from: new Date(now - 600_000).toISOString(),
        to: new Date(now + 60_000).toISOString(),
        raw: { from: "now-10m", to: "now" },
      };
      /** A /query body as the plugin sends it (openapi.yaml's fields), with our targets. */
      const queryBody = (targets: unknown[], extra: Record<string, unknown> = {}) => ({
        panelId: 1,
        range,
        rangeRaw: { from: "now-10m", to: "now" },
        interval: "1s",
        intervalMs: 1000,
        maxDataPoints: 1000,
        targets,
        scopedVars: { __interval: { text: "1s", value: "1s" }, __interval_ms: { text: 1000, value: 1000 } },
        filters: [],
        ...extra,
      });
      const series = async (target: string, payload: unknown, extra: Record<string, unknown> = {}) => {
        const frames = assertFrames(await post("/query", queryBody([{ target, refId: "A", payload }], extra)));
        const out = new Map<string, [number, number][]>();
        for (const f of frames as Series[]) {
          assert.equal(f.refId, "A");
          out.set(f.target, f.datapoints);
        }
        return out;
      };
      const sum = (points: [number, number][] | undefined) => (points ?? []).reduce((a, [v]) => a + v, 0);

      await t.step("every path of the plugin's API is served; GET /grafana answers 200 (Test connection)", async () => {
        const spec = await Deno.readTextFile(new URL("./fixtures/grafana/openapi.yaml", import.meta.url));
        const paths = [...spec.matchAll(/^ {2}(\/[a-z-]*):$/gm)].map((m) => m[1]!);
        assert.deepEqual(paths, [
          "/",
          "/metrics",
          "/metric-payload-options",
          "/query",
          "/variable",
          "/tag-keys",
          "/tag-values",
        ]);
        const health = await call("GET", "/grafana", undefined, READ);
        assert.equal(health.status, 200);
        await health.body?.cancel();
        for (const p of paths.slice(1)) {
          const res = await call("POST", `/grafana${p}`, {}, READ);
          await res.body?.cancel();
          assert.notEqual(res.status, 404, p);
        }
      });

      await t.step("/metrics lists every target with its payloads; unknown fields are ignored", async () => {
        const list = await post("/metrics", {
          metric: "DescribeCloudWatchDataList",
          payload: { namespace: "x" },
          x: 1,
        });
        assert.deepEqual(list.map((m: { value: string }) => m.value), [
          "refresh_duration_ms",
          "refresh_rate",
          "refresh_failures_count",
          "freshness_lag_seconds",
          "rows_changed",
          "stream_tables",
          "refresh_history",
          "refresh_failures",
          "alerts",
          "recommendations",
          "snapshots",
          "cluster_workers",
        ]);
        for (const m of list) {
          assert.equal(typeof m.label, "string");
          const db = m.payloads.find((p: { name: string }) => p.name === "database");
          assert.equal(db.type, "select");
          assert.deepEqual(db.options.map((o: { value: string }) => o.value), [db1, db2]);
        }
        const workers = list.find((m: { value: string }) => m.value === "cluster_workers");
        assert.deepEqual(workers.payloads.map((p: { name: string }) => p.name), ["database"]);
        const totals = list.find((m: { value: string }) => m.value === "refresh_duration_ms");
        assert.deepEqual(totals.payloads.map((p: { name: string }) => p.name), ["database", "stream_table"]);
        assert.deepEqual(await post("/metrics", {}), list, "an empty body (the plugin's first call) too");
      });

      await t.step("/metric-payload-options lists the stream tables of the chosen database", async () => {
        const opts = (database: unknown) =>
          post("/metric-payload-options", { metric: "rows_changed", payload: { database }, name: "stream_table" });
        assert.deepEqual(await opts(db1), [
          { label: "public.quotients", value: "public.quotients" },
          { label: "public.totals", value: "public.totals" },
        ]);
        assert.deepEqual(await opts(db2), [{ label: "public.other_copy", value: "public.other_copy" }]);
        assert.equal((await opts(undefined)).length, 3, "no database chosen: all of them");
        await message("/metric-payload-options", { metric: "nope", payload: {}, name: "database" }, 400, /"nope"/);
      });

      await t.step("time series agree with the history table", async () => {
        const rate = await series("refresh_rate", { database: db1 });
        // One-second buckets: the rate summed over them is the number of refreshes.
        assert.equal(Math.round(sum(rate.get(`${db1}/public.totals`))), hist.get("public.totals")!.n);
        assert.ok(![...rate.keys()].some((k) => k.startsWith(`${db2}/`)), "only the chosen database");
        const changed = await series("rows_changed", {});
        assert.equal(sum(changed.get(`${db1}/public.totals`)), hist.get("public.totals")!.changed);
        assert.equal(sum(changed.get(`${db2}/public.other_copy`)), hist.get("public.other_copy")!.changed);
        const failures = await series("refresh_failures_count", { database: db1, stream_table: "quotients" });
        assert.deepEqual([...failures.keys()], [`${db1}/public.quotients`]);
        assert.equal(sum(failures.get(`${db1}/public.quotients`)), 1);
        const durations = await series("refresh_duration_ms", { database: [db1], stream_table: ["public.totals"] });
        const points = durations.get(`${db1}/public.totals`)!;
        assert.ok(points.length >= 1 && points.every(([v, ts]) => v > 0 && ts >= now - 600_000 && ts <= now + 60_000));
        assert.deepEqual(points.map(([, ts]) => ts), points.map(([, ts]) => ts).sort((a, b) => a - b), "in time order");
        const lag = (await series("freshness_lag_seconds", { database: db1, stream_table: "totals" })).get(
          `${db1}/public.totals`,
        )!;
        const ageSeconds = (Date.now() - (now - 600_000)) / 1000;
        assert.ok(lag.every(([v]) => v >= 0 && v < ageSeconds), JSON.stringify(lag));
        assert.ok(lag.some(([v]) => v > 0), "a refresh that applied changes had a lag");
      });

      await t.step("a range without refreshes answers no series; a coarse interval merges buckets", async () => {
        const empty = assertFrames(
          await post("/query", {
            ...queryBody([{ target: "rows_changed" }]),
            range: { from: "2020-01-01T00:00:00Z", to: "2020-01-02T00:00:00Z" },
          }),
        );
        assert.deepEqual(empty, []);
        const coarse = await series("refresh_rate", { database: db1 }, { intervalMs: 3_600_000, maxDataPoints: 1 });
        const totals = coarse.get(`${db1}/public.totals`)!;
        assert.ok(totals.length <= 2, "one bucket per hour of a 11-minute range");
      });

      await t.step("ad-hoc filters, as `filters` and as the older `adhocFilters`", async () => {
        for (const field of ["filters", "adhocFilters"]) {
          const only = await series("refresh_rate", {}, {
            filters: undefined,
            [field]: [{ key: "stream_table", operator: "=", value: "quotients" }],
          });
          assert.deepEqual([...only.keys()], [`${db1}/public.quotients`], field);
        }
        const re = await series("refresh_rate", {}, {
          filters: [{ key: "stream_table", operator: "=~", value: "public\\.(tot|oth).*" }],
        });
        assert.deepEqual([...re.keys()].sort(), [`${db1}/public.totals`, `${db2}/public.other_copy`]);
        const not = await series("refresh_rate", {}, { filters: [{ key: "database", operator: "!=", value: db1 }] });
        assert.deepEqual([...not.keys()], [`${db2}/public.other_copy`]);
        await message(
          "/query",
          queryBody([{ target: "refresh_rate" }], { filters: [{ key: "database", operator: "<", value: "a" }] }),
          400,
          /operator "<" is not supported/,
        );
        await message(
          "/query",
          queryBody([{ target: "refresh_rate" }], { filters: [{ key: "colour", operator: "=", value: "a" }] }),
          400,
          /Unknown ad-hoc filter key "colour"/,
        );
      });

      await t.step("tables: stream tables, refresh history, failures, cluster workers", async () => {
        const frames = assertFrames(
          await post(
            "/query",
            queryBody([
              { target: "stream_tables", refId: "S", payload: { database: db1 } },
              { target: "refresh_history", refId: "H" },
              { target: "refresh_failures", refId: "F" },
              { target: "cluster_workers", refId: "W" },
              { refId: "placeholder" },
              { target: "stream_tables", refId: "hidden", hide: true },
            ]),
          ),
        ) as Table[];
        assert.deepEqual(frames.map((f) => f.refId), ["S", "H", "F", "W"]);
        const [sts, hist2, failures, workers] = frames as [Table, Table, Table, Table];
        const col = (tb: Table, name: string) => tb.columns.findIndex((c) => c.text === name);
        const byName = new Map(sts.rows.map((r) => [r[col(sts, "stream_table")], r]));
        assert.deepEqual([...byName.keys()], ["public.quotients", "public.totals"]);
        assert.equal(byName.get("public.quotients")![col(sts, "consecutive_errors")], 1);
        assert.match(String(byName.get("public.quotients")![col(sts, "last_error")]), /division by zero/);
        assert.equal(byName.get("public.totals")![col(sts, "row_count")], 1);
        assert.equal(sts.columns[col(sts, "last_refresh")]!.type, "time");
        const total = history.reduce((a, h) => a + h.n, 0);
        assert.equal(hist2.rows.length, total, "every refresh of both databases");
        const times = hist2.rows.map((r) => r[0] as number);
        assert.deepEqual(times, [...times].sort((a, b) => b - a), "newest first");
        assert.equal(failures.rows.length, 1);
        assert.match(String(failures.rows[0]![col(failures, "title")]), /public\.quotients/);
        assert.match(String(failures.rows[0]![col(failures, "text")]), /division by zero/);
        const cluster = await svc.engine.scheduler.clusterWorkers();
        assert.deepEqual(workers.columns.map((c) => c.text), [
          "database",
          "db_oid",
          "workers_active",
          "workers_queued",
          "quota",
          "quota_utilization_pct",
          "oldest_queued_wait_ms",
        ]);
        assert.deepEqual(workers.rows.map((r) => r[0]), cluster.databases.map((d) => d.db_name));
        await message("/query", queryBody([{ target: "forecast" }]), 400, /Unknown target "forecast"/);
        // Recommendations: what a planner pass stored, as pgtrickle.schedule_recommendations() gives it.
        await svc.engine.planner.pass(svc.engine.db(), { recommend: true });
        const [recs] = assertFrames(
          await post("/query", queryBody([{ target: "recommendations", refId: "R", payload: { database: db1 } }])),
        ) as Table[];
        const expected = await svc.db.sql<{ stream_table: string; confidence: number }[]>`
          SELECT stream_table, confidence FROM pgtrickle.schedule_recommendations()`;
        assert.deepEqual(
          recs!.rows.map((r) => [r[col(recs!, "stream_table")], r[col(recs!, "confidence")]]),
          expected.map((r) => [r.stream_table, r.confidence]),
        );
        assert.ok(recs!.rows.length > 0);
        // Snapshots: one taken through the API is listed with its figures.
        const taken = await svc.request("POST", "/snapshots", { stream_table: "totals" }, {
          authorization: `Bearer ${ADMIN}`,
        });
        assert.equal(taken.status, 201, await taken.clone().text());
        const snapshot = (await taken.json()) as { snapshot: string; row_count: number };
        const [snaps] = assertFrames(
          await post("/query", queryBody([{ target: "snapshots", refId: "N", payload: { database: db1 } }])),
        ) as Table[];
        assert.deepEqual(
          snaps!.rows.map((
            r,
          ) => [r[col(snaps!, "stream_table")], r[col(snaps!, "snapshot")], r[col(snaps!, "row_count")]]),
          [["public.totals", snapshot.snapshot, snapshot.row_count]],
        );
        assert.equal(snaps!.columns[col(snaps!, "created_at")]!.type, "time");
        // Code mode sends the payload as the JSON text typed in the editor.
        const code = assertFrames(
          await post("/query", queryBody([{ target: "stream_tables", payload: JSON.stringify({ database: db2 }) }])),
        ) as Table[];
        assert.deepEqual(code[0]!.rows.map((r) => r[1]), ["public.other_copy"]);
        await message(
          "/query",
          queryBody([{ target: "stream_tables", payload: "{oops" }]),
          400,
          /payload must be a JSON/,
        );
      });

      await t.step("/variable lists databases and stream tables as __text/__value", async () => {
        const v = (payload: unknown) => post("/variable", { payload, range });
        assert.deepEqual(await v({ target: "databases" }), [{ __text: db1, __value: db1 }, {
          __text: db2,
          __value: db2,
        }]);
        assert.deepEqual((await v({ target: "stream_tables" })).map((x: { __value: string }) => x.__value), [
          "public.quotients",
          "public.totals",
          "public.other_copy",
        ]);
        assert.deepEqual(await v({ target: "stream_tables", database: db2 }), [{
          __text: "public.other_copy",
          __value: "public.other_copy",
        }]);
        await message("/variable", { payload: { target: "nope" } }, 400, /Unknown variable query "nope"/);
      });

      await t.step("/tag-keys and /tag-values for ad-hoc filters", async () => {
        assert.deepEqual(await post("/tag-keys", {}), [
          { type: "string", text: "database" },
          { type: "string", text: "stream_table" },
          { type: "string", text: "status" },
        ]);
        assert.deepEqual(await post("/tag-values", { key: "database" }), [{ text: db1 }, { text: db2 }]);
        assert.deepEqual(await post("/tag-values", { key: "stream_table" }), [
          { text: "public.other_copy" },
          { text: "public.quotients" },
          { text: "public.totals" },
        ]);
        await message("/tag-values", {}, 400, /key/);
      });

      await t.step("/annotations (the older form): refresh failures in the range", async () => {
        const events = await post("/annotations", {
          annotation: {
            name: "failures",
            datasource: "trickle",
            enable: true,
            iconColor: "red",
            query: "refresh_failures",
          },
          range,
          rangeRaw: range.raw,
          variables: {},
        });
        assert.equal(events.length, 1);
        assert.equal(events[0].annotation.name, "failures");
        assert.ok(events[0].time <= events[0].timeEnd && events[0].time >= now - 600_000);
        assert.match(events[0].text, /division by zero/);
        assert.ok(events[0].tags.includes("stream_table:public.quotients"));
      });

      await t.step("/annotations with the alerts query: the planner's alerts in the range", async () => {
        const ctx = svc.engine.db();
        const [st] = await ctx.sql<{ pgt_id: number }[]>`
          SELECT pgt_id FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'totals'`;
        await ctx.sql.begin((tx) =>
          writeAlert(tx, {
            pgt_id: st!.pgt_id,
            stream_table: "public.totals",
            kind: "freshness_deadline_missed",
            state: "firing",
            severity: "warning",
            db_name: ctx.name,
            db_oid: ctx.oid,
            figures: { staleness_ms: 9000, sla_ms: 5000 },
          }, { now: new Date(), sinks: { webhooks: [], alertmanagerUrl: null } })
        );
        const events = await post("/annotations", {
          annotation: { name: "alerts", datasource: "trickle", enable: true, iconColor: "orange", query: "alerts" },
          range,
          rangeRaw: range.raw,
          variables: {},
        });
        assert.equal(events.length, 1);
        assert.match(events[0].title, /freshness_deadline_missed firing for public\.totals/);
        assert.ok(events[0].tags.includes("alert") && events[0].tags.includes("stream_table:public.totals"));
        assert.equal(JSON.parse(events[0].text).staleness_ms, 9000);
        await message("/annotations", { annotation: { query: "forecasts" }, range }, 400, /Unknown annotation query/);
      });

      await t.step("errors are {message} with a 4xx; no token is 401, the read token is enough", async () => {
        await message("/query", "{not json", 400, /not JSON/);
        await message("/query", { targets: "x" }, 400, /targets/);
        const anonymous = await fetch(`${base}/grafana/query`, { method: "POST", body: "{}" });
        assert.equal(anonymous.status, 401);
        await anonymous.body?.cancel();
        const read = await call("POST", "/grafana/query", queryBody([]), READ);
        assert.equal(read.status, 200);
        assert.deepEqual(await read.json(), []);
        const write = await call("POST", "/stream-tables/totals/refresh", undefined, READ);
        assert.equal(write.status, 403, "the read token still cannot change anything");
        await write.body?.cancel();
      });
    } finally {
      await listener?.shutdown();
      await svc.close();
    }
  },
});
