/**
 * Top-k (ORDER BY ... LIMIT n [OFFSET m]) refreshed DIFFERENTIAL recomputes only when a change reaches the stored rows
 * or sorts before the last of them (docs/differential.md, "Top-k"): a refresh whose changes all miss that boundary
 * writes nothing and does not read the source table (its scan counters in pg_stat_user_tables stay put), one whose
 * change reaches it does. The oracle (tests/differential_wider_oracle_test.ts) checks the contents under random DML.
 */
import assert from "node:assert/strict";
import type { Sql } from "../db/pool.ts";
import { dbTest, type TestService } from "./support/service.ts";
import { assertSameRows, created, ok, type RefreshResult, withService } from "./support/api.ts";

const TOP_QUERY = "SELECT id, v FROM scores ORDER BY v DESC, id LIMIT 5";
const WINDOW_QUERY = "SELECT id, v FROM scores ORDER BY v DESC NULLS LAST, id LIMIT 3 OFFSET 2";

/**
 * Seq and index scans of a table so far, once every backend has flushed its statistics: a backend that flushed less
 * than a second before going idle flushes again only after 10 s idle (PostgreSQL's PGSTAT_IDLE_INTERVAL).
 */
async function scans(sql: Sql, table: string): Promise<number> {
  await new Promise((r) => setTimeout(r, 11_000));
  await sql`SELECT pg_catalog.pg_stat_clear_snapshot()`;
  const [row] = await sql<{ n: string }[]>`
    SELECT seq_scan + coalesce(idx_scan, 0) AS n FROM pg_catalog.pg_stat_user_tables WHERE relname = ${table}`;
  return Number(row!.n);
}

async function refresh(s: TestService, name: string): Promise<RefreshResult> {
  return await ok<RefreshResult>(await s.request("POST", `/stream-tables/${name}/refresh`));
}

Deno.test({
  name: "top-k: changes beyond the boundary write nothing and do not read the source; a change reaching it recomputes",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      await sql`CREATE TABLE scores (id int PRIMARY KEY, v int)`;
      await sql`INSERT INTO scores SELECT i, i FROM generate_series(1, 2000) i`;
      // Statistics let the refresh size the source from pg_class instead of counting it (a scan of its own).
      await sql`ANALYZE scores`;
      const st = await created(s, { name: "top_scores", query: TOP_QUERY, schedule: "1h" });
      assert.equal(st.effective_refresh_mode, "DIFFERENTIAL");
      assert.match(st.plan_notes[0]!, /only when a change reaches its rows or sorts before its last row/);

      // Updates, inserts and deletes of small values: none reaches the top 5 (1996..2000).
      await sql`UPDATE scores SET v = v + 7 WHERE id <= 60`;
      await sql`INSERT INTO scores SELECT i, i - 3000 FROM generate_series(3001, 3020) i`;
      await sql`DELETE FROM scores WHERE id BETWEEN 100 AND 110`;
      const before = await scans(sql, "scores");
      const miss = await refresh(s, "top_scores");
      assert.deepEqual(
        { action: miss.action, inserted: miss.rows_inserted, deleted: miss.rows_deleted },
        { action: "DIFFERENTIAL", inserted: 0, deleted: 0 },
      );
      assert.equal(await scans(sql, "scores"), before, "the skipped refresh read the source table");
      await assertSameRows(sql, { table: "top_scores", query: TOP_QUERY, columns: ["id", "v"] });

      // A row tying the boundary (v = 1996, id 1 sorts first among the ties) enters; 1996 leaves.
      await sql`UPDATE scores SET v = 1996 WHERE id = 1`;
      const beforeHit = await scans(sql, "scores");
      const hit = await refresh(s, "top_scores");
      assert.deepEqual([hit.action, hit.rows_inserted, hit.rows_deleted], ["DIFFERENTIAL", 1, 1]);
      assert.ok((await scans(sql, "scores")) > beforeHit, "a refresh reaching the boundary recomputes");
      await assertSameRows(sql, { table: "top_scores", query: TOP_QUERY, columns: ["id", "v"] });
      const ids = await sql<{ id: number }[]>`SELECT id FROM top_scores ORDER BY v DESC, id`;
      assert.deepEqual(ids.map((r) => r.id), [2000, 1999, 1998, 1997, 1]);

      // A stored row's own change (its value drops below the boundary) is found by its row id.
      await sql`UPDATE scores SET v = 0 WHERE id = 1999`;
      const own = await refresh(s, "top_scores");
      assert.deepEqual([own.rows_inserted, own.rows_deleted], [1, 1]);
      await assertSameRows(sql, { table: "top_scores", query: TOP_QUERY, columns: ["id", "v"] });
    }),
});

Deno.test({
  name: "top-k with OFFSET: a change before the window shifts it; fewer rows than LIMIT: any new row enters",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      await sql`CREATE TABLE scores (id int PRIMARY KEY, v int)`;
      await sql`INSERT INTO scores SELECT i, i FROM generate_series(1, 500) i`;
      await created(s, { name: "score_window", query: WINDOW_QUERY, schedule: "1h" });
      await created(s, {
        name: "few",
        query: "SELECT id, v FROM scores WHERE v < 3 ORDER BY v LIMIT 4",
        schedule: "1h",
      });
      const check = async () => {
        await assertSameRows(sql, { table: "score_window", query: WINDOW_QUERY, columns: ["id", "v"] });
        await assertSameRows(sql, {
          table: "few",
          query: "SELECT id, v FROM scores WHERE v < 3 ORDER BY v LIMIT 4",
          columns: ["id", "v"],
        });
      };
      await check();
      // The first row (before the window) leaves: the window shifts by one. A NULL sorts last: it misses.
      await sql`DELETE FROM scores WHERE id = 500`;
      await sql`INSERT INTO scores VALUES (1060, NULL), (1061, 1)`;
      const shifted = await refresh(s, "score_window");
      assert.deepEqual([shifted.rows_inserted, shifted.rows_deleted], [1, 1]);
      const few = await refresh(s, "few");
      assert.deepEqual([few.rows_inserted, few.rows_deleted], [1, 0]);
      await check();
      // Beyond the window and not under v < 3: nothing changes in either.
      await sql`UPDATE scores SET v = v + 1 WHERE id BETWEEN 10 AND 12`;
      for (const name of ["score_window", "few"]) {
        const r = await refresh(s, name);
        assert.deepEqual([r.action, r.rows_inserted, r.rows_deleted], ["DIFFERENTIAL", 0, 0], name);
      }
      await check();
    }),
});

Deno.test({
  name: "top-k over a column with its own collation compares the boundary under that collation",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      // The database's collation is C; an ICU collation (when the server has ICU) sorts case-insensitively first, so
      // comparing under the stored column's collation (C) instead would get 'Y' against 'm99' wrong.
      const [icu] = await sql<
        { n: number }[]
      >`SELECT count(*)::int AS n FROM pg_collation WHERE collname = 'und-x-icu'`;
      const coll = icu!.n > 0 ? "und-x-icu" : "C";
      const query = "SELECT id, name FROM names ORDER BY name DESC, id LIMIT 2";
      await sql.unsafe(`CREATE TABLE names (id int PRIMARY KEY, name text COLLATE "${coll}")`);
      await sql`INSERT INTO names SELECT i, 'm' || i FROM generate_series(1, 200) i`;
      await sql`INSERT INTO names VALUES (201, 'b'), (202, 'Z')`;
      await created(s, { name: "last_names", query, schedule: "1h" });
      // ICU: the top 2 are 'Z', 'm99'; 'Y' enters, then 'n' misses. C: 'm99', 'm98'; 'Y' misses, then 'n' enters.
      const expected = coll === "C" ? [[0, 0], [1, 1]] : [[1, 1], [0, 0]];
      for (const [i, name] of ["Y", "n"].entries()) {
        await sql`INSERT INTO names VALUES (${203 + i}, ${name})`;
        const r = await refresh(s, "last_names");
        assert.deepEqual([r.action, r.rows_inserted, r.rows_deleted], ["DIFFERENTIAL", ...expected[i]!], name);
        await assertSameRows(sql, { table: "last_names", query, columns: ["id", "name"] });
      }
    }),
});
