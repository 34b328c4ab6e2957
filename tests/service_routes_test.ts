/** The service's own routes: /health, /ready (every managed database), /openapi.json, /docs, and unknown routes. */
import assert from "node:assert/strict";
import { VERSION } from "../version.ts";
import { dbTest } from "./support/service.ts";
import { ok, problem, withService } from "./support/api.ts";

Deno.test({
  name: "GET /health, /ready, /openapi.json, /docs; an unknown route is a 404 problem, a wrong method 405",
  ...dbTest,
  fn: () =>
    withService({ extraDatabases: 1 }, async (s) => {
      const get = (path: string) => s.request("GET", path);
      assert.deepEqual(await ok(await get("/health")), { status: "ok", version: VERSION });
      const ready = await ok<{ ready: boolean; databases: { name: string; ok: boolean }[] }>(await get("/ready"));
      assert.equal(ready.ready, true);
      assert.deepEqual(ready.databases.map((d) => [d.name, d.ok]), [[s.db.name, true], [s.databases[0]!, true]]);

      const doc = await ok<
        { openapi: string; info: { title: string; version: string }; paths: Record<string, object> }
      >(await get("/openapi.json"));
      assert.match(doc.openapi, /^3\./);
      assert.equal(doc.info.version, VERSION);
      const methods = Object.fromEntries(Object.entries(doc.paths).map(([p, item]) => [p, Object.keys(item).sort()]));
      assert.deepEqual(methods["/stream-tables"], ["get", "post"]);
      assert.deepEqual(methods["/stream-tables/{name}"], ["delete", "get", "patch"]);
      assert.deepEqual(methods["/stream-tables/{name}/refresh"], ["post"]);
      assert.deepEqual(methods["/stream-tables/{name}/history"], ["get"]);
      assert.deepEqual(methods["/health"], ["get"]);
      assert.deepEqual(methods["/ready"], ["get"]);
      const create =
        (doc.paths["/stream-tables"] as Record<string, { responses: Record<string, { content?: object }> }>).post!;
      assert.ok(
        "application/problem+json" in (create.responses["422"]?.content ?? {}),
        "errors are documented as problems",
      );

      const docs = await get("/docs");
      assert.equal(docs.status, 200);
      assert.match(docs.headers.get("content-type") ?? "", /^text\/html/);
      const html = await docs.text();
      const fetched = /url: new URL\("([^"]+)", location\.href\)/.exec(html);
      assert.ok(fetched !== null, "the page reads the OpenAPI document (Swagger UI; tests/docs_page_test.ts)");
      assert.equal(new URL(fetched[1]!, "http://host/docs").pathname, "/openapi.json");

      const p = await problem(await get("/no/such/route"), 404, "NotFound", /GET \/no\/such\/route/);
      assert.equal(typeof p.request_id, "string");
      await problem(await s.request("PUT", "/stream-tables"), 405, "MethodNotAllowed", /allowed: GET, POST/);
    }),
});
