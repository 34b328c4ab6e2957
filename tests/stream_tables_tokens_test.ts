/**
 * Bearer tokens and the body limit: writes need the admin token, reads the read token (or the admin one), probes
 * need none; a refused request creates nothing; a body over the limit is 413.
 */
import assert from "node:assert/strict";
import { dbTest, type TestService } from "./support/service.ts";
import {
  dbState,
  type HistoryEntry,
  ok,
  problem,
  type RefreshResult,
  regclass,
  type StreamTable,
  withService,
} from "./support/api.ts";

const ADMIN = "a".repeat(32);
const READ = "r".repeat(32);
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const CREATE = { name: "guarded", query: "SELECT id, v FROM y" };

/** A service with both tokens and a 1 KiB body limit, over table y; with `guarded` created by the admin token. */
function withTokens(options: { guarded: boolean }, fn: (s: TestService) => Promise<void>): Promise<void> {
  return withService({ adminToken: ADMIN, readToken: READ, bodyLimitBytes: 1024 }, async (s) => {
    await s.db.sql`CREATE TABLE y (id int PRIMARY KEY, v int)`;
    await s.db.sql`INSERT INTO y VALUES (1, 10), (2, 20)`;
    if (options.guarded) {
      await ok<StreamTable>(await s.request("POST", "/stream-tables", CREATE, bearer(ADMIN)), 201);
      await ok<StreamTable>(await s.request("PATCH", "/stream-tables/guarded", { schedule: "5m" }, bearer(ADMIN)));
    }
    await fn(s);
  });
}

Deno.test({
  name: "no token: 401 with WWW-Authenticate, for reads and writes, and nothing is created",
  ...dbTest,
  fn: () =>
    withTokens({ guarded: false }, async (s) => {
      const before = await dbState(s.db.sql);
      for (const [method, path, body] of [["GET", "/stream-tables"], ["POST", "/stream-tables", CREATE]] as const) {
        const res = await s.request(method, path, body);
        assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer /);
        await problem(res, 401, "Unauthorized", /bearer token/);
      }
      const basic = await s.request("GET", "/stream-tables", undefined, {
        authorization: `Basic ${btoa("admin:" + ADMIN)}`,
      });
      await problem(basic, 401, "Unauthorized");
      assert.deepEqual(await dbState(s.db.sql), before);
    }),
});

Deno.test({
  name: "a wrong token: 403, and nothing is created",
  ...dbTest,
  fn: () =>
    withTokens({ guarded: false }, async (s) => {
      const before = await dbState(s.db.sql);
      const wrong = bearer("x".repeat(32));
      await problem(await s.request("GET", "/stream-tables", undefined, wrong), 403, "Forbidden", /not valid/);
      await problem(await s.request("POST", "/stream-tables", CREATE, wrong), 403, "Forbidden");
      await problem(await s.request("POST", "/stream-tables", CREATE, bearer(ADMIN.slice(1))), 403, "Forbidden");
      await problem(await s.request("POST", "/stream-tables", CREATE, bearer(ADMIN + "a")), 403, "Forbidden");
      assert.deepEqual(await dbState(s.db.sql), before);
    }),
});

Deno.test({
  name: "the admin token creates, reads, changes and deletes",
  ...dbTest,
  fn: () =>
    withTokens({ guarded: false }, async (s) => {
      const req = s.request;
      await ok<StreamTable>(await req("POST", "/stream-tables", CREATE, bearer(ADMIN)), 201);
      assert.notEqual(await regclass(s.db.sql, "guarded"), null);
      await ok<StreamTable>(await req("GET", "/stream-tables/guarded", undefined, bearer(ADMIN)));
      await ok<StreamTable>(await req("PATCH", "/stream-tables/guarded", { schedule: "5m" }, bearer(ADMIN)));
      await ok<RefreshResult>(await req("POST", "/stream-tables/guarded/refresh", undefined, bearer(ADMIN)));
      assert.equal((await req("DELETE", "/stream-tables/guarded", undefined, bearer(ADMIN))).status, 204);
      assert.equal(await regclass(s.db.sql, "guarded"), null);
    }),
});

Deno.test({
  name: "the read token reads (200) but cannot write (403)",
  ...dbTest,
  fn: () =>
    withTokens({ guarded: true }, async (s) => {
      const req = s.request;
      const list = await ok<StreamTable[]>(await req("GET", "/stream-tables", undefined, bearer(READ)));
      assert.deepEqual(list.map((x) => x.name), ["public.guarded"]);
      await ok<StreamTable>(await req("GET", "/stream-tables/guarded", undefined, bearer(READ)));
      await ok<HistoryEntry[]>(await req("GET", "/stream-tables/guarded/history", undefined, bearer(READ)));
      await ok(await req("GET", "/openapi.json", undefined, bearer(READ)));
      const before = await dbState(s.db.sql);
      for (
        const [method, path, body] of [
          ["POST", "/stream-tables", { ...CREATE, name: "by_reader" }],
          ["PATCH", "/stream-tables/guarded", { schedule: "1h" }],
          ["DELETE", "/stream-tables/guarded"],
          ["POST", "/stream-tables/guarded/refresh"],
        ] as [string, string, unknown?][]
      ) {
        await problem(
          await req(method, path, body, bearer(READ)),
          403,
          "Forbidden",
          /read token does not allow changes/,
        );
      }
      assert.deepEqual(await dbState(s.db.sql), before);
      const st = await ok<StreamTable>(await req("GET", "/stream-tables/guarded", undefined, bearer(READ)));
      assert.equal(st.schedule, "5m");
    }),
});

Deno.test({
  name: "/health and /ready need no token; OpenAPI declares bearer auth",
  ...dbTest,
  fn: () =>
    withTokens({ guarded: false }, async (s) => {
      assert.equal((await ok<{ status: string }>(await s.request("GET", "/health"))).status, "ok");
      assert.equal((await ok<{ ready: boolean }>(await s.request("GET", "/ready"))).ready, true);
      const doc = await ok<{ security: unknown; components: { securitySchemes: Record<string, unknown> } }>(
        await s.request("GET", "/openapi.json", undefined, bearer(ADMIN)),
      );
      assert.deepEqual(doc.security, [{ bearer: [] }]);
      assert.deepEqual(doc.components.securitySchemes.bearer, { type: "http", scheme: "bearer" });
    }),
});

Deno.test({
  name: "a body over the limit is 413 and creates nothing; one under it works",
  ...dbTest,
  fn: () =>
    withTokens({ guarded: true }, async (s) => {
      const req = s.request;
      const before = await dbState(s.db.sql);
      const big = { name: "too_big", query: `SELECT id, v FROM y -- ${"x".repeat(1100)}` };
      await problem(await req("POST", "/stream-tables", big, bearer(ADMIN)), 413, "PayloadTooLarge", /1024 bytes/);
      await problem(
        await req("PATCH", "/stream-tables/guarded", { schedule: "5m", pad: "x".repeat(2000) }, bearer(ADMIN)),
        413,
        "PayloadTooLarge",
      );
      assert.deepEqual(await dbState(s.db.sql), before);
      const fits = { name: "fits", query: `SELECT id, v FROM y -- ${"x".repeat(900)}` };
      assert.ok(JSON.stringify(fits).length < 1024);
      await ok<StreamTable>(await req("POST", "/stream-tables", fits, bearer(ADMIN)), 201);
    }),
});
