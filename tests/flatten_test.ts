/**
 * Subqueries in FROM and WITH queries (engine/refresh/differential/flatten.ts): the simple ones are merged into the
 * block around them and maintained DIFFERENTIAL; the rest are named with a precise fallback reason. Then the oracle:
 * each flattened construct as a FULL and a DIFFERENTIAL stream table under seeded random DML, equal to its query
 * after every refresh (fixed seed and a fresh one; replay with ORACLE_SEED=<seed>).
 */
import assert from "node:assert/strict";
import { describeQuery } from "../engine/query.ts";
import { flattenQuery } from "../engine/refresh/differential/differential.ts";
import { freshTestDatabase } from "./support/oracle.ts";
import { plan, strategies } from "./support/plans.ts";

Deno.test({
  name: "planQuery: simple subqueries in FROM and WITH queries are merged; the rest name why not",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const db = await freshTestDatabase("flatten");
    const sql = db.sql;
    try {
      await sql.unsafe(`
        CREATE TABLE t (id int PRIMARY KEY, g int, v int, s text);
        CREATE TABLE u (id int PRIMARY KEY, t_id int, w int);`);

      await t.step("merged: maintained differentially, no subquery left in the plan's SELECT", async () => {
        const cases: [string, string[]][] = [
          ["SELECT x.id, x.v2 FROM (SELECT id, v * 2 AS v2 FROM t WHERE v > 1) x", ["rows"]],
          ["SELECT id, v2 FROM (SELECT id, v * 2 AS v2 FROM t) AS x WHERE v2 > 3", ["rows"]],
          ["SELECT * FROM (SELECT id, v FROM t WHERE v > 1) x", ["rows"]],
          ["SELECT x.* FROM (SELECT id, v FROM t) x", ["rows"]],
          ["SELECT a, b FROM (SELECT id, v FROM t) x(a, b) WHERE b > 0", ["rows"]],
          ["SELECT x.id, u.w FROM (SELECT id, v FROM t WHERE v > 0) x JOIN u ON u.t_id = x.id", ["rows"]],
          ["SELECT u.id, x.v FROM u JOIN (SELECT id, v FROM t WHERE v > 0) x ON u.t_id = x.id", ["rows"]],
          ["SELECT x.g, count(*) AS c, sum(x.v) AS sv FROM (SELECT g, v FROM t WHERE v > 0) x GROUP BY x.g", [
            "algebraic",
          ]],
          ["SELECT g2, max(w) AS m FROM (SELECT t.g + 1 AS g2, u.w FROM t, u WHERE t.id = u.t_id) y GROUP BY g2", [
            "recompute",
          ]],
          ["SELECT y.id FROM (SELECT x.id FROM (SELECT id FROM t WHERE v > 0) x WHERE x.id > 2) y", ["rows"]],
          ["WITH x AS (SELECT id, v FROM t WHERE v > 0) SELECT a.id, b.v FROM x a JOIN x b ON a.id = b.v", ["rows"]],
          ["WITH x AS (SELECT id, v FROM t), y AS (SELECT x.id FROM x JOIN u ON u.t_id = x.id) SELECT id FROM y", [
            "rows",
          ]],
          ["WITH x AS MATERIALIZED (SELECT id FROM t) SELECT id FROM x", ["rows"]],
          ["WITH x AS (TABLE t) SELECT id FROM x WHERE g > 1", ["rows"]],
          ["SELECT t.id, x.id AS xid FROM t JOIN (SELECT t.id, t.g FROM t WHERE t.v > 5) x ON x.g = t.id", ["rows"]],
        ];
        for (const [query, expected] of cases) {
          const p = await plan(sql, query);
          assert.equal(p.unsupportedReason, null, query);
          assert.deepEqual(strategies(p), expected, query);
          assert.ok(!/\(\s*SELECT/i.test(p.fullSelect), `${query}\n=> ${p.fullSelect}`);
        }
      });

      await t.step("the rewrite returns the query's rows, outer joins included", async () => {
        await sql.unsafe(`
          INSERT INTO t SELECT i, i % 4, CASE WHEN i % 5 = 0 THEN NULL ELSE i % 7 END, 's' || (i % 3)
          FROM generate_series(1, 40) i;
          INSERT INTO u SELECT i, CASE WHEN i % 6 = 0 THEN NULL ELSE i % 45 END, i % 9 FROM generate_series(1, 30) i;`);
        const queries = [
          "SELECT x.id, x.v2 FROM (SELECT id, v * 2 AS v2 FROM t WHERE v > 1) x",
          "SELECT u.id, x.v FROM u LEFT JOIN (SELECT id, v FROM t WHERE v > 2) x ON u.t_id = x.id",
          "SELECT u.id, x.v FROM u LEFT JOIN (SELECT t.id, t.v, u.w FROM t JOIN u ON u.t_id = t.id WHERE t.v > 2) x " +
          "ON u.w = x.v",
          "SELECT u.id, y.v FROM u JOIN (t JOIN (SELECT id, v FROM t WHERE v > 0) y ON y.id = t.g) ON u.t_id = t.id",
          "SELECT x.g, count(*) AS c FROM (SELECT g, v FROM t WHERE s = 's1') x GROUP BY x.g ORDER BY g",
          "WITH a AS (SELECT id, g FROM t WHERE v > 1), b AS (SELECT a.id FROM a WHERE a.g > 0) " +
          "SELECT a.id, b.id AS bid FROM a JOIN b ON a.id = b.id + 1",
          "SELECT * FROM (SELECT id, v FROM t) x(a, b) WHERE b IS NULL",
          "SELECT id, v FROM (SELECT id, v FROM t WHERE v > 1) x UNION ALL SELECT id, w FROM (SELECT id, w FROM u) y",
          // The subquery's table name is also the outer one's: renamed inside.
          "SELECT t.id, x.id AS xid FROM t JOIN (SELECT t.id, t.g FROM t WHERE t.v > 5) x ON x.g = t.id",
          // Inside an EXISTS, correlated to the outer query.
          "SELECT u.id FROM u WHERE EXISTS (SELECT 1 FROM (SELECT id, v FROM t WHERE v > 1) x WHERE x.id = u.t_id)",
          "SELECT x.*, u.w FROM (SELECT id, v + 1 AS v1, upper(s) FROM t) x, u WHERE u.t_id = x.id",
          "WITH m AS MATERIALIZED (SELECT g, v FROM t) SELECT m.g, sum(m.v) AS sv FROM m GROUP BY m.g",
          "SELECT x.v AS g, x.g AS v FROM (SELECT g, v FROM t WHERE id > 3) x ORDER BY v",
          // * in the subquery: the tables' columns, from the query's description.
          "WITH a AS (SELECT * FROM t) SELECT id, s FROM a WHERE g > 1",
          "SELECT * FROM (SELECT t.*, u.w FROM t JOIN u ON u.t_id = t.id) x(a) WHERE x.a > 2",
          "SELECT x.v, x.w FROM (SELECT * FROM t, u WHERE u.t_id = t.g) x",
        ];
        for (const query of queries) {
          const description = await describeQuery(sql as never, query);
          const flat = await flattenQuery(sql as never, {
            query,
            aggregates: new Set(),
            sources: description.sources,
          });
          assert.notEqual(flat, query, "rewritten");
          const [row] = await sql.unsafe(`SELECT
            (SELECT count(*) FROM ((${query}) EXCEPT ALL (${flat})) a)
              + (SELECT count(*) FROM ((${flat}) EXCEPT ALL (${query})) b) AS n,
            (SELECT count(*) FROM (${query}) q) AS rows`);
          assert.equal(Number(row!["n"]), 0, `${query}\n=> ${flat}`);
          assert.ok(Number(row!["rows"]) > 0, query);
        }
      });

      await t.step("not merged: the reason names the construct", async () => {
        const cases: [string, string][] = [
          ["SELECT x.g FROM (SELECT g, count(*) AS c FROM t GROUP BY g) x", "subquery in FROM with GROUP BY"],
          ["SELECT x.c FROM (SELECT count(*) AS c FROM t) x", "subquery in FROM with an aggregate"],
          ["SELECT x.g FROM (SELECT DISTINCT g FROM t) x", "subquery in FROM with DISTINCT"],
          ["SELECT x.id FROM (SELECT id FROM t LIMIT 3) x", "subquery in FROM with LIMIT/OFFSET"],
          ["SELECT x.id FROM (SELECT id FROM t UNION ALL SELECT id FROM u) x", "subquery in FROM with UNION"],
          [
            "SELECT x.n FROM (SELECT id, row_number() OVER () AS n FROM t) x",
            "subquery in FROM with a window function",
          ],
          ["WITH RECURSIVE x AS (SELECT id FROM t) SELECT id FROM x", "WITH RECURSIVE"],
          [
            "WITH r AS (SELECT g, sum(v) AS sv FROM t GROUP BY g) SELECT t.id FROM t, r WHERE t.g = r.g",
            "subquery in FROM with GROUP BY",
          ],
          [
            "SELECT t.id, x.n FROM t, LATERAL (SELECT u.w AS n FROM u WHERE u.t_id = t.id) x",
            "LATERAL subquery in FROM",
          ],
          [
            "SELECT x.id, u.w FROM (SELECT id FROM t WHERE v > 0) x LEFT JOIN u ON u.t_id = x.id",
            "subquery in FROM with WHERE as the left operand of a LEFT JOIN",
          ],
          ["SELECT x.id FROM (SELECT * FROM t JOIN u USING (id)) x", "subquery in FROM with * in its select list"],
          [
            "SELECT x.g FROM (SELECT id, g FROM t) x JOIN u USING (id)",
            "subquery in FROM joined with USING or NATURAL",
          ],
        ];
        for (const [query, reason] of cases) {
          const p = await plan(sql, query);
          assert.equal(p.unsupportedReason, reason, query);
          assert.equal(p.fullSelect, query);
        }
      });
    } finally {
      await db.close();
    }
  },
});
