/**
 * The refresh core against a real PostgreSQL: frontiers with long transactions, stream tables over stream tables,
 * failures to ERROR and back, buffer pruning.
 */
import assert from "node:assert/strict";
import { assertEqualsQuery } from "./support/oracle.ts";
import { findStreamTable } from "../engine/catalog.ts";
import { refreshStreamTable } from "../engine/refresh/refresh.ts";
import { prunesSettled } from "../engine/refresh/prune.ts";
import { alterStreamTable, createStreamTable } from "../engine/stream_tables.ts";
import type { DatabaseContext } from "../engine/context.ts";
import type { Sql } from "../db/pool.ts";
import { dbTest, startTestService } from "./support/service.ts";
import { one } from "./support/rows.ts";

async function create(ctx: DatabaseContext, name: string, query: string, mode: "AUTO" | "FULL" = "AUTO") {
  return await createStreamTable(ctx, {
    name: { schema: "public", name },
    query,
    schedule: "1s",
    refreshMode: mode,
    freshnessDeadlineMs: null,
  });
}

async function bufferRows(sql: Sql, source: string): Promise<number> {
  const { oid } = one(await sql<{ oid: number }[]>`SELECT ${source}::regclass::oid::int8 AS oid`);
  const { n } = one(
    await sql.unsafe<{ n: number }[]>(`SELECT count(*)::int AS n FROM pgtrickle_changes.changes_${oid}`),
  );
  return n;
}

async function historyCount(sql: Sql, pgtId: number): Promise<number> {
  return one(
    await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history WHERE pgt_id = ${pgtId}`,
  ).n;
}

Deno.test({
  name: "refresh core",
  ...dbTest,
  fn: async (t) => {
    // The scheduler's clock is the test's: `tick()` first moves it past every 1s schedule.
    let now = Date.now();
    const svc = await startTestService({ clock: { now: () => new Date(now) } });
    const tick = async () => {
      now += 2000;
      await svc.engine.scheduler.tick();
      await svc.engine.scheduler.idle();
    };
    const ctx = svc.engine.db();
    const sql = svc.db.sql;
    try {
      await t.step("a writer transaction open across a refresh is picked up by the next one, once", async () => {
        await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
        await sql`INSERT INTO src SELECT i, i FROM generate_series(1, 5) i`;
        const q = "SELECT id, v FROM src";
        const st = await create(ctx, "long_tx", q, "FULL");
        const writer = await sql.reserve();
        try {
          await writer`BEGIN`;
          await writer`INSERT INTO src VALUES (100, 100)`;
          // The refresh's snapshot sees the writer in progress: its row is not in this refresh.
          const r1 = await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
          assert.equal(r1.action, "NO_DATA");
          await writer`COMMIT`;
        } finally {
          writer.release();
        }
        const r2 = await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
        assert.equal(r2.action, "FULL");
        assert.equal(r2.delta_rows, 1, "the committed long transaction is the delta");
        await assertEqualsQuery(sql, "long_tx", q);
        const r3 = await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
        assert.equal(r3.action, "NO_DATA", "nothing is applied twice");
      });

      await t.step("a writer committing while a refresh runs is picked up by the next refresh", async () => {
        await sql`CREATE TABLE slow_src (id int PRIMARY KEY, v int)`;
        await sql`INSERT INTO slow_src VALUES (1, 1)`;
        // The cross join with pg_sleep makes each FULL refresh take about 0.6 s.
        const q = "SELECT s.id, s.v FROM slow_src s CROSS JOIN (SELECT pg_sleep(0.6)) z";
        const st = await create(
          ctx,
          "slow_st",
          "SELECT s.id, s.v FROM slow_src s CROSS JOIN (SELECT pg_sleep(0.6) AS z) z",
        );
        const writer = await sql.reserve();
        try {
          await writer`BEGIN`;
          await writer`INSERT INTO slow_src VALUES (2, 2)`;
          await sql`UPDATE slow_src SET v = 10 WHERE id = 1`; // makes the next refresh non-empty
          const running = refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
          await new Promise((r) => setTimeout(r, 200));
          await writer`COMMIT`; // commits after the refresh took its snapshot
          const r1 = await running;
          assert.equal(r1.action, "FULL");
        } finally {
          writer.release();
        }
        const { n } = one(await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM slow_st WHERE id = 2`);
        assert.equal(n, 0, "the row committed after the snapshot is not in that refresh");
        const r2 = await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
        assert.equal(r2.delta_rows, 1);
        await assertEqualsQuery(sql, "slow_st", q.replace("pg_sleep(0.6)", "pg_sleep(0)"));
      });

      await t.step("a stream table over a stream table refreshes after it, in the same tick", async () => {
        await sql`CREATE TABLE base (id int PRIMARY KEY, g int, v int)`;
        await sql`INSERT INTO base SELECT i, i % 3, i FROM generate_series(1, 30) i`;
        await create(ctx, "lvl1", "SELECT id, g, v * 2 AS v2 FROM base WHERE v > 5");
        await create(ctx, "lvl2", "SELECT g, count(*) AS n, sum(v2) AS s FROM lvl1 GROUP BY g");
        await create(ctx, "lvl3", "SELECT count(*) AS groups, sum(s) AS total FROM lvl2");
        await sql`INSERT INTO base SELECT i, i % 3, i FROM generate_series(31, 40) i`;
        await sql`DELETE FROM base WHERE id = 10`;
        await tick();
        await assertEqualsQuery(sql, "lvl1", "SELECT id, g, v * 2 AS v2 FROM base WHERE v > 5");
        await assertEqualsQuery(
          sql,
          "lvl2",
          "SELECT g, count(*) AS n, sum(v * 2) AS s FROM base WHERE v > 5 GROUP BY g",
        );
        await assertEqualsQuery(
          sql,
          "lvl3",
          "SELECT count(*) AS groups, sum(s) AS total FROM (SELECT g, sum(v * 2) AS s FROM base WHERE v > 5 GROUP BY g) x",
        );
        // All three fresh after a single tick proves the order: each read its source after that one refreshed.
        const order = await sql<{ name: string }[]>`
          SELECT s.pgt_name AS name FROM pgtrickle.pgt_refresh_history h
          JOIN pgtrickle.pgt_stream_tables s USING (pgt_id)
          WHERE s.pgt_name IN ('lvl1', 'lvl2', 'lvl3') AND h.initiated_by = 'SCHEDULER' ORDER BY h.refresh_id`;
        assert.deepEqual(order.map((r) => r.name), ["lvl1", "lvl2", "lvl3"]);
      });

      await t.step("three failed refreshes put a stream table in ERROR until resumed", async () => {
        await sql`CREATE TABLE divisors (id int PRIMARY KEY, v int)`;
        await sql`INSERT INTO divisors VALUES (1, 1), (2, 2)`;
        const st = await create(ctx, "quotients", "SELECT id, 100 / v AS q FROM divisors");
        await sql`UPDATE divisors SET v = 0 WHERE id = 2`;
        for (let i = 1; i <= 3; i++) {
          await tick();
          const row = (await findStreamTable(sql, { schema: "public", name: "quotients" }))!;
          assert.equal(row.consecutive_errors, i);
          assert.match(row.last_error ?? "", /division by zero/);
          assert.equal(row.status, i < 3 ? "ACTIVE" : "ERROR");
        }
        const before = await historyCount(sql, st.pgt_id);
        await tick();
        const after = await historyCount(sql, st.pgt_id);
        assert.equal(after, before, "the scheduler leaves a stream table in ERROR alone");
        await assertEqualsQuery(sql, "quotients", "SELECT 1 AS id, 100 AS q UNION ALL SELECT 2, 50");

        await sql`UPDATE divisors SET v = 4 WHERE id = 2`;
        const resumed = await alterStreamTable(ctx, { schema: "public", name: "quotients" }, { status: "ACTIVE" });
        assert.equal(resumed.status, "ACTIVE");
        assert.equal(resumed.consecutive_errors, 0);
        assert.equal(resumed.last_error, null);
        await tick();
        await assertEqualsQuery(sql, "quotients", "SELECT id, 100 / v AS q FROM divisors");
      });

      await t.step("buffers are pruned once every consumer has passed them", async () => {
        await sql`CREATE TABLE shared_src (id int PRIMARY KEY, v int)`;
        const a = await create(ctx, "reader_a", "SELECT id, v FROM shared_src");
        const b = await create(ctx, "reader_b", "SELECT count(*) AS n FROM shared_src");
        await sql`INSERT INTO shared_src SELECT i, i FROM generate_series(1, 50) i`;
        await sql`UPDATE shared_src SET v = v + 1 WHERE id <= 10`;
        assert.equal(await bufferRows(sql, "shared_src"), 70);
        await refreshStreamTable(ctx, a.pgt_id, { initiatedBy: "MANUAL" });
        await prunesSettled(ctx); // the prune runs after the refresh, off its critical path
        assert.equal(await bufferRows(sql, "shared_src"), 70, "reader_b still needs the changes");
        await refreshStreamTable(ctx, b.pgt_id, { initiatedBy: "MANUAL" });
        await prunesSettled(ctx);
        assert.equal(await bufferRows(sql, "shared_src"), 0, "both readers passed them");
        await assertEqualsQuery(sql, "reader_a", "SELECT id, v FROM shared_src");
        await assertEqualsQuery(sql, "reader_b", "SELECT count(*) AS n FROM shared_src");
      });

      await t.step(
        "captured columns cannot be dropped from a source; columns added later reach new readers",
        async () => {
          await sql`CREATE TABLE evolving (id int PRIMARY KEY, a int, b text)`;
          await sql`INSERT INTO evolving VALUES (1, 1, 'x')`;
          await create(ctx, "evolving_a", "SELECT id, a FROM evolving");
          await assert.rejects(sql`ALTER TABLE evolving DROP COLUMN b`, /depend/);
          await assert.rejects(sql`DROP TABLE evolving`, /depend/);
          await sql`INSERT INTO evolving VALUES (2, 2, 'y')`; // writes still work
          await sql`ALTER TABLE evolving ADD COLUMN c int DEFAULT 7`;
          await sql`INSERT INTO evolving VALUES (3, 3, 'z', 9)`;
          const st = await create(ctx, "evolving_c", "SELECT id, c FROM evolving WHERE c > 0");
          await sql`UPDATE evolving SET c = c + 1`;
          await sql`INSERT INTO evolving VALUES (4, 4, 'w', 1)`;
          await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
          await assertEqualsQuery(sql, "evolving_c", "SELECT id, c FROM evolving WHERE c > 0");
          await tick();
          await assertEqualsQuery(sql, "evolving_a", "SELECT id, a FROM evolving");
        },
      );

      await t.step(
        "a FULL stream table stores the bare result; switching to AUTO adds what DIFFERENTIAL needs",
        async () => {
          await sql`CREATE TABLE modes_src (id int PRIMARY KEY, g int, v int)`;
          await sql`INSERT INTO modes_src SELECT i, i % 4, i FROM generate_series(1, 40) i`;
          const q = "SELECT g, count(*) AS n, sum(v) AS s FROM modes_src GROUP BY g";
          const st = await create(ctx, "modes", q, "FULL");
          const columns = async () =>
            (await sql<{ c: string }[]>`SELECT attname AS c FROM pg_attribute
            WHERE attrelid = 'modes'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`).map((r) => r.c);
          assert.deepEqual(await columns(), ["g", "n", "s"]);
          const altered = await alterStreamTable(ctx, { schema: "public", name: "modes" }, { refreshMode: "AUTO" });
          assert.equal(altered.effective_refresh_mode, "DIFFERENTIAL");
          assert.ok((await columns()).includes("__pgt_row_id"));
          assert.equal(altered.pgt_relid, st.pgt_relid, "the same table: grants and readers keep working");
          await sql`UPDATE modes_src SET v = v + 1 WHERE id < 5`;
          const first = await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
          assert.equal(first.action, "FULL", "the hidden columns are filled by a FULL refresh first");
          await assertEqualsQuery(sql, "modes", q);
          await sql`UPDATE modes_src SET g = 9 WHERE id = 7`;
          const second = await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
          assert.equal(second.action, "DIFFERENTIAL");
          await assertEqualsQuery(sql, "modes", q);
        },
      );
    } finally {
      await svc.close();
    }
  },
});
