/**
 * Defining queries written the ways people write them: trailing comments and semicolons, `TABLE name`, and reads of
 * system catalogs (refused with a reason that says so).
 */
import assert from "node:assert/strict";
import { ok, problem, type StreamTable } from "./support/api.ts";
import { assertSameContent } from "./support/oracle.ts";
import type { QueryPlan } from "../engine/plan.ts";
import { dbTest, startTestService, type TestService } from "./support/service.ts";

let round = 0;

/** Creates the stream tables (all DIFFERENTIAL), writes, refreshes, and checks each equals its query. */
async function maintained(s: TestService, cases: { name: string; query: string }[]): Promise<void> {
  const base = 1000 + 100 * ++round;
  const columns = new Map<string, StreamTable["columns"]>();
  for (const c of cases) {
    const st = await ok<StreamTable>(await s.request("POST", "/stream-tables", c), 201);
    assert.equal(st.fallback_reason, null, c.query);
    assert.equal(st.effective_refresh_mode, "DIFFERENTIAL", c.query);
    columns.set(c.name, st.columns);
  }
  await s.db.sql`INSERT INTO t SELECT i, i % 4, i FROM generate_series(${base}::int, ${base + 9}::int) i`;
  await s.db.sql`UPDATE t SET v = v + 1 WHERE id % 50 = ${round}`;
  await s.db.sql`DELETE FROM t WHERE id % 70 = ${round}`;
  await s.db.sql`INSERT INTO t2 VALUES (${base}, 1, 1)`;
  for (const c of cases) {
    const r = await ok<{ action: string }>(await s.request("POST", `/stream-tables/${c.name}/refresh`), 200);
    assert.equal(r.action, "DIFFERENTIAL", c.query);
    const plan = { columns: columns.get(c.name)! } as QueryPlan;
    // The oracle wraps the query in parentheses: a trailing line comment needs the line to end first.
    await s.db.sql.begin((tx) =>
      assertSameContent(tx as never, c.name, plan, `${c.query.replace(/;\s*(--.*)?$/, "")}\n`)
    );
  }
}

Deno.test({
  name: "query text: comments, semicolons, TABLE and system catalogs",
  ...dbTest,
  async fn(t) {
    const s = await startTestService();
    try {
      await s.db.sql.unsafe(`
        CREATE TABLE t (id int PRIMARY KEY, g int, v int);
        INSERT INTO t SELECT i, i % 4, i FROM generate_series(1, 1000) i;
        CREATE TABLE t2 (id int PRIMARY KEY, g int, v int);
        INSERT INTO t2 SELECT i, i % 3, -i FROM generate_series(1, 200) i;`);

      await t.step("a trailing comment or semicolon does not change how a query is maintained", async () => {
        await maintained(s, [
          { name: "line_comment", query: "SELECT id, v FROM t WHERE v > 1 -- trailing comment" },
          { name: "grouped_comment", query: "SELECT g, count(*) AS c, sum(v) AS s FROM t GROUP BY g -- by g" },
          { name: "having_comment", query: "SELECT g, max(v) AS m FROM t GROUP BY g HAVING count(*) > 1 -- max" },
          { name: "block_comment", query: "SELECT id, v FROM t /* every row */" },
          { name: "semicolon", query: "SELECT id, v FROM t WHERE v > 1;" },
          { name: "semicolon_comment", query: "SELECT t.id, t2.v FROM t JOIN t2 ON t2.id = t.id; -- done" },
          {
            name: "comments_inside",
            query: "SELECT id, -- the key\n  v /* the value */ FROM t -- every table\n WHERE v > 1 -- small ones",
          },
        ]);
      });

      await t.step("TABLE name is SELECT * FROM name", async () => {
        await maintained(s, [
          { name: "table_t", query: "TABLE t" },
          { name: "table_union", query: "TABLE t UNION ALL TABLE t2" },
          { name: "table_label", query: "SELECT id, v AS table FROM t -- not a TABLE" },
        ]);
        const st = await ok<StreamTable>(await s.request("GET", "/stream-tables/table_t"), 200);
        assert.deepEqual(st.columns.map((c) => c.name), ["id", "g", "v"]);
      });

      await t.step("a system catalog cannot be a source, and the reason says so", async () => {
        for (
          const [query, catalog] of [
            ["SELECT * FROM pg_class", "pg_catalog.pg_class"],
            ["SELECT oid, relname FROM pg_catalog.pg_class", "pg_catalog.pg_class"],
            ["SELECT t.id, c.relname FROM t JOIN pg_class c ON c.oid = t.id", "pg_catalog.pg_class"],
            [
              "SELECT id FROM t WHERE EXISTS (SELECT FROM pg_namespace n WHERE n.oid = t.id)",
              "pg_catalog.pg_namespace",
            ],
            ["SELECT table_name FROM information_schema.tables", "information_schema.tables"],
          ]
        ) {
          const res = await s.request("POST", "/stream-tables", { name: "cat", query });
          await problem(res, 422, "InvalidQuery", new RegExp(`system catalog "${catalog!.replace(".", "\\.")}"`));
        }
        // A WITH query of a catalog's name is not the catalog.
        const st = await ok<StreamTable>(
          await s.request("POST", "/stream-tables", {
            name: "cte_named_pg_class",
            query: "WITH pg_class AS (SELECT id, v FROM t) SELECT id, v FROM pg_class",
          }),
          201,
        );
        // Inlined (flatten.ts): it reads t, maintained differentially.
        assert.equal(st.effective_refresh_mode, "DIFFERENTIAL");
        // A query that reads no table at all is still told so.
        const none = await s.request("POST", "/stream-tables", { name: "nothing", query: "SELECT 1 AS one" });
        await problem(none, 422, "InvalidQuery", /reads no table/);
      });
    } finally {
      await s.close();
    }
  },
});
