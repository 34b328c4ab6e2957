/**
 * Queries whose value depends on the time, the transaction or the session (now(), CURRENT_DATE, CURRENT_USER,
 * current_setting(), a user's STABLE function...) are refreshed FULL: AUTO resolves FULL with a reason naming the
 * function, DIFFERENTIAL is refused, and after writes and refreshes the stream table equals its query. Functions
 * stable only through settings (to_char, concat, timestamptz arithmetic) stay DIFFERENTIAL.
 */
import assert from "node:assert/strict";
import { ok, problem, type StreamTable } from "./support/api.ts";
import { assertSameContent } from "./support/oracle.ts";
import type { QueryPlan } from "../engine/plan.ts";
import { dbTest, startTestService, type TestService } from "./support/service.ts";

/** Time-dependent queries (each deterministic within one transaction, so the oracle can compare) and the name due. */
const TIME_DEPENDENT: { name: string; query: string; names: RegExp }[] = [
  { name: "zero", query: "SELECT id, v, now() - now() AS zero FROM t", names: /now\(\)/ },
  {
    name: "stamped",
    query: "SELECT id, v, transaction_timestamp() AS at FROM t WHERE v > 10",
    names: /transaction_timestamp/,
  },
  { name: "due", query: "SELECT id, v FROM t WHERE d <= current_date", names: /CURRENT_DATE/ },
  { name: "mine", query: "SELECT id, current_user AS who FROM t WHERE v % 2 = 0", names: /CURRENT_USER/ },
  {
    name: "by_day",
    query: "SELECT d, count(*) AS n, current_date - d AS age_days FROM t GROUP BY d",
    names: /CURRENT_DATE/,
  },
  { name: "mem", query: "SELECT id, current_setting('work_mem') AS wm FROM t", names: /current_setting\(\)/ },
  { name: "recent", query: "SELECT id, v FROM t WHERE recent(d)", names: /recent\(\)/ },
  { name: "today", query: "SELECT id, d = 'today'::date AS is_today FROM t", names: /'today'::date/ },
  { name: "age", query: "SELECT id, age(ts) > interval '1 year' AS old FROM t", names: /age\(\)/ },
];

/** Stable only through settings: still maintained differentially. */
const SETTINGS_ONLY = [
  "SELECT id, to_char(v, 'FM999') AS s, concat(v, '/', d) AS c, 'v=' || v AS l FROM t",
  "SELECT id, ts + interval '1 day' AS later, date_trunc('month', ts) AS month FROM t WHERE ts > '2020-01-01'::date",
  "SELECT d, count(*) AS n FROM t GROUP BY d",
];

async function write(s: TestService, round: number): Promise<void> {
  const sql = s.db.sql;
  await sql`INSERT INTO t SELECT i, i % 40, current_date - (i % 5), now() - i * interval '1 day'
    FROM generate_series(${10_000 + round * 10}::int, ${10_000 + round * 10 + 9}::int) i`;
  await sql`UPDATE t SET v = v + 1, d = d - 1 WHERE id % 97 = ${round}`;
  await sql`DELETE FROM t WHERE id % 89 = ${round}`;
}

Deno.test({
  name: "time functions: FULL with the function named, DIFFERENTIAL refused, and the content equals the query",
  ...dbTest,
  async fn(t) {
    const s = await startTestService();
    const sql = s.db.sql;
    try {
      await sql.unsafe(`
        CREATE TABLE t (id int PRIMARY KEY, v int, d date, ts timestamptz);
        INSERT INTO t SELECT i, i % 40, current_date + (i % 7) - 3, now() - i * interval '1 day'
          FROM generate_series(1, 2000) i;
        CREATE FUNCTION recent(d date) RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT d >= now()::date - 1 $$;`);

      await t.step("AUTO resolves FULL and names the function; DIFFERENTIAL is refused", async () => {
        for (const c of TIME_DEPENDENT) {
          const refused = await s.request("POST", "/stream-tables", {
            name: `${c.name}_d`,
            query: c.query,
            refresh_mode: "DIFFERENTIAL",
          });
          await problem(refused, 422, "UnsupportedQuery", c.names);
          const st = await ok<StreamTable>(
            await s.request("POST", "/stream-tables", { name: c.name, query: c.query }),
            201,
          );
          assert.equal(st.effective_refresh_mode, "FULL", c.query);
          assert.match(st.fallback_reason ?? "", c.names, c.query);
        }
        const [left] = await sql`SELECT count(*)::int AS n FROM pg_tables WHERE tablename LIKE '%\\_d'`;
        assert.equal(left!["n"], 0, "a refused stream table leaves no table behind");
      });

      await t.step("functions stable only through settings stay DIFFERENTIAL", async () => {
        for (const [i, query] of SETTINGS_ONLY.entries()) {
          const st = await ok<StreamTable>(
            await s.request("POST", "/stream-tables", { name: `plain_${i}`, query }),
            201,
          );
          assert.equal(st.effective_refresh_mode, "DIFFERENTIAL", query);
          assert.equal(st.fallback_reason, null, query);
        }
      });

      await t.step("after writes and refreshes every stream table equals its query", async () => {
        const all = [
          ...TIME_DEPENDENT.map((c) => ({ name: c.name, query: c.query })),
          ...SETTINGS_ONLY.map((query, i) => ({ name: `plain_${i}`, query })),
        ];
        for (let round = 0; round < 3; round++) {
          await write(s, round);
          for (const c of all) {
            const r = await ok<{ action: string }>(await s.request("POST", `/stream-tables/${c.name}/refresh`), 200);
            assert.equal(r.action, c.name.startsWith("plain_") ? "DIFFERENTIAL" : "FULL", c.query);
          }
          for (const c of all) {
            if (c.name === "stamped") continue; // the refresh's own timestamp: compared below
            const st = await ok<StreamTable>(await s.request("GET", `/stream-tables/${c.name}`), 200);
            await sql.begin((tx) =>
              assertSameContent(tx as never, c.name, { columns: st.columns } as QueryPlan, c.query)
            );
          }
          // Every row carries the timestamp of the last refresh (before the fix, only the rows that changed did).
          const [stamps] = await sql`SELECT count(DISTINCT at)::int AS n FROM stamped`;
          assert.equal(stamps!["n"], 1);
        }
      });
    } finally {
      await s.close();
    }
  },
});
