/**
 * Two managed databases: a stream table lives in the database it was created in (?database= or the body's
 * `database`), an unknown database is 404 on every route, and naming two different databases is refused.
 */
import assert from "node:assert/strict";
import { connect, type Sql, urlForDatabase } from "../db/pool.ts";
import { dbTest, type TestService } from "./support/service.ts";
import {
  assertSameRows,
  created,
  createSources,
  dbState,
  type HistoryEntry,
  ok,
  problem,
  type RefreshResult,
  regclass,
  type StreamTable,
  withService,
} from "./support/api.ts";

/** A service managing two databases, with `fn` given a connection to the second. */
function withTwoDatabases(fn: (s: TestService, db2: string, sql2: Sql) => Promise<void>): Promise<void> {
  return withService({ extraDatabases: 1 }, async (s) => {
    const db2 = s.databases[0]!;
    const sql2 = connect(urlForDatabase(s.db.serverUrl, db2), { max: 2 });
    try {
      await createSources(s.db.sql);
      await fn(s, db2, sql2);
    } finally {
      await sql2.end({ timeout: 1 });
    }
  });
}

Deno.test({
  name: "two managed databases: a stream table lives in the database it was created in",
  ...dbTest,
  fn: () =>
    withTwoDatabases(async (s, db2, sql2) => {
      const sql = s.db.sql;
      const req = s.request;
      const get = async <T>(path: string) => await ok<T>(await req("GET", path));
      await sql2`CREATE TABLE y (id int PRIMARY KEY, v int)`;
      await sql2`INSERT INTO y VALUES (7, 700)`;
      const res = await req("POST", "/stream-tables", {
        name: "only_two",
        query: "SELECT id, v FROM y",
        database: db2,
      });
      const st = await ok<StreamTable>(res, 201);
      assert.equal(st.database, db2);
      assert.equal(res.headers.get("location"), `/stream-tables/public.only_two?database=${db2}`);
      await assertSameRows(sql2, { table: "only_two", query: "SELECT id, v FROM y", columns: ["id", "v"] });
      assert.equal(await regclass(sql, "only_two"), null, "nothing in the default database");

      assert.ok(!(await get<StreamTable[]>("/stream-tables")).some((x) => x.table === "only_two"));
      const list2 = await get<StreamTable[]>(`/stream-tables?database=${db2}`);
      assert.deepEqual(list2.map((x) => x.name), ["public.only_two"]);
      await problem(await req("GET", "/stream-tables/only_two"), 404, "StreamTableNotFound", new RegExp(s.db.name));
      assert.equal((await get<StreamTable>(`/stream-tables/only_two?database=${db2}`)).database, db2);

      // The same name in both databases: two independent stream tables.
      const one = await created(s, { name: "same_name", query: "SELECT id, v FROM y" });
      const two = await created(
        s,
        { name: "same_name", query: "SELECT id, v FROM y" },
        `/stream-tables?database=${db2}`,
      );
      assert.deepEqual([one.database, one.row_count, two.database, two.row_count], [s.db.name, 3, db2, 1]);

      await sql2`INSERT INTO y VALUES (8, 800)`;
      const r = await ok<RefreshResult>(await req("POST", `/stream-tables/same_name/refresh?database=${db2}`));
      assert.equal(r.rows_inserted >= 1, true);
      await assertSameRows(sql2, { table: "same_name", query: "SELECT id, v FROM y", columns: ["id", "v"] });
      assert.equal((await get<HistoryEntry[]>(`/stream-tables/same_name/history?database=${db2}`)).length, 2);
      assert.equal((await get<HistoryEntry[]>("/stream-tables/same_name/history")).length, 1);
      const patched = await ok<StreamTable>(
        await req("PATCH", "/stream-tables/same_name", { schedule: "2m", database: db2 }),
      );
      assert.equal(patched.schedule, "2m");
      assert.equal((await get<StreamTable>("/stream-tables/same_name")).schedule, "1m", "the other is unchanged");
      assert.equal((await req("DELETE", `/stream-tables/same_name?database=${db2}`)).status, 204);
      assert.equal(await regclass(sql2, "same_name"), null);
      assert.notEqual(await regclass(sql, "same_name"), null, "the default database's one is kept");
      assert.equal((await get<StreamTable>("/stream-tables/same_name")).database, s.db.name);
    }),
});

Deno.test({
  name: "an unknown database is 404 DatabaseNotFound on every route, and nothing is created",
  ...dbTest,
  fn: () =>
    withTwoDatabases(async (s) => {
      const sql = s.db.sql;
      await created(s, { name: "same_name", query: "SELECT id, v FROM y" });
      const before = await dbState(sql);
      const cases: [string, string, unknown?][] = [
        ["GET", "/stream-tables?database=nope"],
        ["POST", "/stream-tables?database=nope", { name: "nowhere", query: "SELECT id FROM y" }],
        ["POST", "/stream-tables", { name: "nowhere", query: "SELECT id FROM y", database: "nope" }],
        ["GET", "/stream-tables/same_name?database=nope"],
        ["PATCH", "/stream-tables/same_name?database=nope", { schedule: "5m" }],
        ["PATCH", "/stream-tables/same_name", { schedule: "5m", database: "nope" }],
        ["DELETE", "/stream-tables/same_name?database=nope"],
        ["POST", "/stream-tables/same_name/refresh?database=nope"],
        ["GET", "/stream-tables/same_name/history?database=nope"],
        ["GET", `/stream-tables?database=${encodeURIComponent("x'; drop table y; --")}`],
      ];
      for (const [method, path, body] of cases) {
        await problem(await s.request(method, path, body), 404, "DatabaseNotFound", /is not managed by this service/);
      }
      assert.deepEqual(await dbState(sql), before);
      assert.equal((await ok<StreamTable>(await s.request("GET", "/stream-tables/same_name"))).schedule, "1m");
    }),
});

Deno.test({
  name: "a body database other than ?database= is 400 BadRequest, on POST and PATCH, and changes nothing",
  ...dbTest,
  fn: () =>
    withTwoDatabases(async (s, db2, sql2) => {
      const sql = s.db.sql;
      await sql2`CREATE TABLE y (id int PRIMARY KEY, v int)`;
      await created(s, { name: "same_name", query: "SELECT id, v FROM y" });
      await created(s, { name: "same_name", query: "SELECT id, v FROM y" }, `/stream-tables?database=${db2}`);
      const before = [await dbState(sql), await dbState(sql2)];
      const post = await s.request("POST", `/stream-tables?database=${db2}`, {
        name: "a",
        query: "SELECT id FROM y",
        database: s.db.name,
      });
      await problem(post, 400, "BadRequest", new RegExp(`"${s.db.name}".*"${db2}"`));
      const patch = await s.request("PATCH", `/stream-tables/same_name?database=${s.db.name}`, {
        schedule: "5m",
        database: db2,
      });
      await problem(patch, 400, "BadRequest", new RegExp(`"${db2}".*"${s.db.name}"`));
      assert.deepEqual([await dbState(sql), await dbState(sql2)], before);
    }),
});
