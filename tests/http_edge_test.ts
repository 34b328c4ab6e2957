/** The HTTP edge: request timeouts, row-locking queries refused, request ids on every answer. */
import assert from "node:assert/strict";
import { dbTest, startTestService } from "./support/service.ts";
import { eventually } from "./support/process.ts";
import { one } from "./support/rows.ts";

Deno.test({
  name: "http edge",
  ...dbTest,
  fn: async (t) => {
    const svc = await startTestService({ requestTimeoutMs: 300 });
    const sql = svc.db.sql;
    try {
      await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await sql`INSERT INTO src VALUES (1, 1)`;

      await t.step("a handler past the time limit is answered 503 Timeout, and the service keeps serving", async () => {
        const t0 = performance.now();
        const res = await svc.request("POST", "/stream-tables", {
          name: "slow",
          query: "SELECT s.id FROM src s CROSS JOIN (SELECT pg_sleep(1) AS z) z",
        });
        assert.ok(performance.now() - t0 < 900, "answered at the limit, not when the work ends");
        assert.equal(res.status, 503);
        assert.equal(res.headers.get("content-type"), "application/problem+json");
        const body = await res.json();
        assert.equal(body.code, "Timeout");
        assert.match(body.detail, /300 ms/);
        assert.ok(typeof body.request_id === "string" && body.request_id.length > 0, "the timeout names its request");
        assert.equal(body.request_id, res.headers.get("x-request-id"));
        const health = await svc.request("GET", "/health");
        assert.equal(health.status, 200);
        // What the request started still completes, whole.
        assert.ok(
          await eventually(async () => {
            const r = await svc.request("GET", "/stream-tables/slow");
            return r.status === 200 && (await r.json()).status === "ACTIVE";
          }, 5000),
        );
        assert.equal(one(await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM slow`).n, 1);
      });

      await t.step("a query that locks rows is refused", async () => {
        const res = await svc.request("POST", "/stream-tables", {
          name: "locking",
          query: "SELECT id FROM src FOR UPDATE",
        });
        assert.equal(res.status, 422);
        const body = await res.json();
        assert.equal(body.code, "InvalidQuery");
        assert.match(body.detail, /FOR UPDATE/);
        assert.equal(one(await sql<{ t: string | null }[]>`SELECT to_regclass('locking')::text AS t`).t, null);
      });

      await t.step("validation failures carry the request id too", async () => {
        const res = await svc.request("POST", "/stream-tables", { name: 1 });
        assert.equal(res.status, 400);
        const body = await res.json();
        assert.equal(body.code, "BadRequest");
        assert.equal(body.request_id, res.headers.get("x-request-id"));
      });

      await t.step("a known path with another method is 405 with Allow; an unknown path is 404", async () => {
        const put = await svc.request("PUT", "/stream-tables/slow", { schedule: "5m" });
        assert.equal(put.status, 405);
        assert.equal(put.headers.get("allow"), "GET, PATCH, DELETE");
        assert.equal((await put.json()).code, "MethodNotAllowed");
        const missing = await svc.request("GET", "/openapiXjson");
        assert.equal(missing.status, 404);
        assert.equal((await missing.json()).code, "NotFound");
        const st = await svc.request("GET", "/stream-tables/slow");
        assert.equal((await st.json()).schedule, "1m", "the refused PUT changed nothing");
      });
    } finally {
      await svc.close();
    }
  },
});
