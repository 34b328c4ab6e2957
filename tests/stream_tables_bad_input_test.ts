/**
 * Bad input to the stream-table routes: every malformed, invalid, reserved or injected request gets a 4xx
 * application/problem+json with a stable code, and leaves the database exactly as it was.
 */
import assert from "node:assert/strict";
import { dbTest } from "./support/service.ts";
import {
  assertSameRows,
  bufferOf,
  captureTriggers,
  created,
  createSources,
  dbState,
  ok,
  problem,
  type RefreshResult,
  type StreamTable,
  withService,
} from "./support/api.ts";

Deno.test({
  name: "bad requests get a 4xx problem and leave the database unchanged; the service still serves after them",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      const req = s.request;
      await createSources(sql);
      await sql`CREATE TABLE zero_src (id int PRIMARY KEY, v int NOT NULL)`;
      await sql`INSERT INTO zero_src VALUES (1, 1), (2, 0)`;
      await sql`CREATE TABLE ticks (id int PRIMARY KEY)`;
      await created(s, { name: "tick_copy", query: "SELECT id FROM ticks" });
      const before = await dbState(sql);
      const q = "SELECT id FROM y";
      const zero = "SELECT id, 1 / v AS x FROM zero_src";
      const raw = (init: RequestInit) => () => Promise.resolve(s.app.request("/stream-tables", init));
      // [what, POST /stream-tables body (a string is sent as is) or a request, status, code, detail]
      const cases: [string, unknown, number, string, RegExp][] = [
        ["malformed JSON", '{"name": "a", "query": ', 400, "BadRequest", /Malformed JSON/],
        ["a JSON array", `[{"name": "a", "query": "${q}"}]`, 400, "BadRequest", /expected object, received array/],
        ["a JSON string", `"${q}"`, 400, "BadRequest", /expected object, received string/],
        ["JSON null", "null", 400, "BadRequest", /expected object/],
        ["no body", raw({ method: "POST" }), 400, "BadRequest", /name.*query/],
        [
          "not JSON content",
          raw({
            method: "POST",
            headers: { "content-type": "text/plain" },
            body: JSON.stringify({ name: "a", query: q }),
          }),
          415,
          "UnsupportedMediaType",
          /must be JSON/,
        ],
        ["an unknown field", { name: "a", query: q, shedule: "5m" }, 400, "BadRequest", /"shedule"/],
        ["a missing query", { name: "a" }, 400, "BadRequest", /query/],
        ["a numeric name", { name: 5, query: q }, 400, "BadRequest", /name: .*expected string/],
        ["an array query", { name: "a", query: [q] }, 400, "BadRequest", /query: .*expected string/],
        ["a numeric schedule", { name: "a", query: q, schedule: 30 }, 400, "BadRequest", /schedule/],
        ["an unknown mode", { name: "a", query: q, refresh_mode: "SOMETIMES" }, 400, "BadRequest", /refresh_mode/],
        ["a string deadline", { name: "a", query: q, freshness_deadline_ms: "10" }, 400, "BadRequest", /deadline/],
        ["a negative deadline", { name: "a", query: q, freshness_deadline_ms: -5 }, 400, "BadRequest", /deadline/],
        ["a fractional deadline", { name: "a", query: q, freshness_deadline_ms: 1.5 }, 400, "BadRequest", /deadline/],
        [
          "an injection in the name",
          { name: 'x"; drop table y; --', query: q },
          400,
          "InvalidName",
          /Invalid stream table name "x\\"; drop table y; --"/,
        ],
        ["an injection after a name", { name: "ok; drop table y", query: q }, 400, "InvalidName", /an identifier/],
        ["a three-part name", { name: "a.b.c", query: q }, 400, "InvalidName", /"a\.b\.c"/],
        ["a leading digit", { name: "1abc", query: q }, 400, "InvalidName", /"1abc"/],
        ["an empty name", { name: "", query: q }, 400, "InvalidName", /Invalid stream table name ""/],
        ["a 64-byte name", { name: "n".repeat(64), query: q }, 400, "InvalidName", /at most 63 bytes/],
        ["a quoted name", { name: '"y"', query: q }, 400, "InvalidName", /expected an identifier/],
        ["a missing schema", { name: "nosuch.t", query: q }, 404, "SchemaNotFound", /"nosuch"/],
        ["a syntax error", { name: "a", query: "SELECT id FORM y" }, 422, "InvalidQuery", /at or near "y"/],
        [
          "two statements",
          { name: "a", query: "select 1 as a; drop table y" },
          422,
          "InvalidQuery",
          /exactly one SELECT statement; found 2/,
        ],
        ["a hidden second statement", { name: "a", query: `${q} /* ; */ ; DROP TABLE y` }, 422, "InvalidQuery", /2/],
        ["a DELETE", { name: "a", query: "delete from y" }, 422, "InvalidQuery", /must be a SELECT/],
        ["a DROP", { name: "a", query: "DROP TABLE y" }, 422, "InvalidQuery", /must be a SELECT/],
        ["SELECT INTO", { name: "a", query: "SELECT id INTO z FROM y" }, 422, "InvalidQuery", /SELECT \.\.\. INTO/],
        [
          "a data-modifying WITH",
          { name: "a", query: "WITH d AS (DELETE FROM y RETURNING id) SELECT id FROM d" },
          422,
          "InvalidQuery",
          /data-modifying/,
        ],
        [
          "a missing table",
          { name: "a", query: "SELECT id FROM nope" },
          422,
          "InvalidQuery",
          /"nope" does not exist/,
        ],
        [
          "a missing column",
          { name: "a", query: "SELECT nope FROM y" },
          422,
          "InvalidQuery",
          /"nope" does not exist/,
        ],
        ["an unnamed column", { name: "a", query: "SELECT id, v + 1 FROM y" }, 422, "InvalidQuery", /needs a name/],
        ["a reserved column", { name: "a", query: "SELECT id AS __pgt_x FROM y" }, 422, "InvalidQuery", /reserved/],
        ["no table read", { name: "a", query: "SELECT 1 AS one" }, 422, "InvalidQuery", /reads no table/],
        [
          "a view read",
          { name: "a", query: "SELECT id FROM yv" },
          422,
          "InvalidQuery",
          /"public\.yv", which is a view/,
        ],
        [
          "the catalog read",
          { name: "a", query: "SELECT pgt_id FROM pgtrickle.pgt_stream_tables" },
          422,
          "InvalidQuery",
          /cannot be sources/,
        ],
        ["an existing stream table", { name: "tick_copy", query: q }, 409, "StreamTableAlreadyExists", /"tick_copy"/],
        ["an existing plain table", { name: "y", query: q }, 409, "StreamTableAlreadyExists", /"y" already exists/],
        ["an existing view", { name: "yv", query: q }, 409, "StreamTableAlreadyExists", /"yv" already exists/],
        ["schedule 5x", { name: "a", query: q, schedule: "5x" }, 400, "InvalidSchedule", /"5x"/],
        ["schedule 0s", { name: "a", query: q, schedule: "0s" }, 400, "InvalidSchedule", /"0s": an interval must be/],
        ["a 3-field cron", { name: "a", query: q, schedule: "* * *" }, 400, "InvalidSchedule", /5 or 6 fields/],
        [
          "a 7-field cron",
          { name: "a", query: q, schedule: "0 0 0 * * * *" },
          400,
          "InvalidSchedule",
          /5 or 6 fields/,
        ],
        [
          "a bad cron field",
          { name: "a", query: q, schedule: "61 * * * *" },
          400,
          "InvalidSchedule",
          /not a valid cron/,
        ],
        [
          "DIFFERENTIAL with ROLLUP",
          { name: "a", query: "SELECT id, count(*) AS c FROM y GROUP BY ROLLUP (id)", refresh_mode: "DIFFERENTIAL" },
          422,
          "UnsupportedQuery",
          /ROLLUP/,
        ],
        [
          "DIFFERENTIAL with a subquery in a join condition",
          {
            name: "a",
            query: "SELECT y.id FROM y JOIN y y2 ON y2.id = y.id AND EXISTS (SELECT 1 FROM y y3)",
            refresh_mode: "DIFFERENTIAL",
          },
          422,
          "UnsupportedQuery",
          /subquery in a join condition/,
        ],
        ["IMMEDIATE", { name: "a", query: q, refresh_mode: "IMMEDIATE" }, 422, "UnsupportedRefreshMode", /IMMEDIATE/],
        [
          "a failing initial refresh",
          { name: "a", query: zero },
          422,
          "InvalidQuery",
          /initial refresh failed: division/,
        ],
        [
          "the same in FULL",
          { name: "a", query: zero, refresh_mode: "FULL" },
          422,
          "InvalidQuery",
          /division by zero/,
        ],
        [
          "an injected path name",
          () => req("GET", `/stream-tables/${encodeURIComponent('x"; drop table y; --')}`),
          400,
          "InvalidName",
          /drop table y/,
        ],
        [
          "an injected path name on DELETE",
          () => req("DELETE", `/stream-tables/${encodeURIComponent("y; drop table y")}`),
          400,
          "InvalidName",
          /expected an identifier/,
        ],
        ["a three-part path", () => req("POST", "/stream-tables/a.b.c/refresh"), 400, "InvalidName", /"a\.b\.c"/],
        ...[
          "pgtrickle",
          "pgtrickle_changes",
          "pg_catalog",
          "information_schema",
          "pg_toast",
          "pg_temp",
          "pg_temp_3",
          "pg_toast_temp_3",
        ].map((schema): [string, unknown, number, string, RegExp] => [
          `a stream table in the reserved schema ${schema}`,
          { name: `${schema}.a`, query: q },
          400,
          "InvalidName",
          new RegExp(`schema "${schema}" is reserved`),
        ]),
        [
          "a name like a change buffer",
          async () => req("POST", "/stream-tables", { name: await bufferOf(sql, "y"), query: q }),
          400,
          "InvalidName",
          /schema "pgtrickle_changes" is reserved/,
        ],
        ...([
          ["GET", "/stream-tables/pg_catalog.pg_class"],
          ["GET", "/stream-tables/pgtrickle.pgt_stream_tables/history"],
          ["PATCH", "/stream-tables/pgtrickle.pgt_stream_tables", { schedule: "5m" }],
          ["DELETE", "/stream-tables/pgtrickle.pgt_stream_tables"],
          ["DELETE", "/stream-tables/information_schema.tables"],
          ["POST", "/stream-tables/pgtrickle_changes.x/refresh"],
        ] as [string, string, unknown?][]).map(([method, path, body]): [string, unknown, number, string, RegExp] => [
          `${method} ${path}`,
          () => req(method, path, body),
          400,
          "InvalidName",
          /schema "(pg_catalog|pgtrickle|pgtrickle_changes|information_schema)" is reserved/,
        ]),
      ];
      for (const [what, body, status, code, detail] of cases) {
        const res = typeof body === "function"
          ? await (body as () => Promise<Response>)()
          : await req("POST", "/stream-tables", body);
        const p = await problem(res, status, code, detail);
        assert.ok(!/internal error/i.test(p.detail), `${what}: ${p.detail}`);
        assert.deepEqual(await dbState(sql), before, `${what} changed the database`);
      }
      // The query errors say where, as PostgreSQL does (1-based, in the query as sent).
      const post = (body: unknown) => req("POST", "/stream-tables", body);
      const syntax = await problem(await post({ name: "a", query: "SELECT id FORM y" }), 422, "InvalidQuery");
      assert.equal(syntax.position, 16);
      const missing = await problem(await post({ name: "a", query: "SELECT id FROM nope" }), 422, "InvalidQuery");
      assert.equal(missing.position, 16);
      assert.equal(missing.sqlstate, "42P01");
      const first = await problem(await post({ name: "a", query: "selec id from y" }), 422, "InvalidQuery");
      assert.equal(first.position, 1);
      // No capture was left on the source of the failed initial refresh, and y is intact.
      assert.deepEqual(await captureTriggers(sql, "zero_src"), []);
      assert.deepEqual(before.y, ["1=10", "2=20", "3=30"]);
      assert.deepEqual(await dbState(sql), before);

      // After all the bad requests, the service still serves.
      const still = "SELECT id, v FROM y WHERE v > 10";
      const st = await created(s, { name: "still_works", query: still });
      assert.equal(st.row_count, 2);
      await assertSameRows(sql, { table: "still_works", query: still, columns: ["id", "v"] });
      await sql`INSERT INTO y VALUES (4, 40)`;
      const r = await ok<RefreshResult>(await req("POST", "/stream-tables/still_works/refresh"));
      assert.equal(r.delta_rows, 1);
      await assertSameRows(sql, { table: "still_works", query: still, columns: ["id", "v"] });
      const list = await ok<StreamTable[]>(await req("GET", "/stream-tables"));
      assert.equal(list.some((x) => x.table === "still_works"), true);
    }),
});

Deno.test({
  name: "an unknown stream table is 404 StreamTableNotFound on GET, PATCH, DELETE, refresh, history",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      await createSources(s.db.sql);
      const before = await dbState(s.db.sql);
      for (
        const [method, path, body] of [
          ["GET", "/stream-tables/nope"],
          ["PATCH", "/stream-tables/nope", { schedule: "5m" }],
          ["DELETE", "/stream-tables/nope"],
          ["POST", "/stream-tables/nope/refresh"],
          ["GET", "/stream-tables/nope/history"],
          ["GET", "/stream-tables/analytics.nope"],
          ["GET", "/stream-tables/y"],
        ] as [string, string, unknown?][]
      ) {
        const p = await problem(await s.request(method, path, body), 404, "StreamTableNotFound");
        assert.match(p.detail, /Stream table "(analytics\.)?(nope|y)" does not exist in database/);
      }
      assert.deepEqual(await dbState(s.db.sql), before, "a plain table is not a stream table and DELETE left it alone");
    }),
});
