/**
 * Schema changes to a source, as a user makes them: capture never breaks the user's writes, and a stream table whose
 * source changed under it either keeps equalling its query or goes to ERROR at once with a reason naming the source
 * and the change (in GET /stream-tables/{name}, its history, and a 409 SourceChanged on a manual refresh).
 */
import assert from "node:assert/strict";
import { assertEqualsQuery } from "./support/oracle.ts";
import { type HistoryEntry, ok, type RefreshResult, type StreamTable } from "./support/api.ts";
import type { Sql } from "../db/pool.ts";
import type { Problem } from "../routes/problem.ts";
import { findStreamTable } from "../engine/catalog.ts";
import { refreshStreamTable } from "../engine/refresh/refresh.ts";
import { one } from "./support/rows.ts";
import { dbTest, startTestService, type TestService } from "./support/service.ts";

/** Creates a stream table through the API. */
async function create(svc: TestService, name: string, query: string, mode = "AUTO"): Promise<StreamTable> {
  return await ok<StreamTable>(
    await svc.request("POST", "/stream-tables", { name, query, schedule: "1h", refresh_mode: mode }),
    201,
  );
}

async function refresh(svc: TestService, name: string): Promise<RefreshResult> {
  return await ok<RefreshResult>(await svc.request("POST", `/stream-tables/${name}/refresh`), 200);
}

/** A manual refresh answers 409 SourceChanged whose detail matches `detail`; GET and the history say the same. */
async function assertSourceChanged(svc: TestService, name: string, detail: RegExp): Promise<void> {
  const res = await svc.request("POST", `/stream-tables/${name}/refresh`);
  const text = await res.text();
  assert.equal(res.status, 409, text);
  assert.equal(res.headers.get("content-type"), "application/problem+json");
  const p = JSON.parse(text) as Problem;
  assert.equal(p.code, "SourceChanged", text);
  assert.match(p.detail, detail);
  const st = await ok<StreamTable>(await svc.request("GET", `/stream-tables/${name}`), 200);
  assert.equal(st.status, "ERROR", "one detected source change is enough for ERROR");
  assert.match(st.last_error ?? "", detail);
  const [last] = await ok<HistoryEntry[]>(await svc.request("GET", `/stream-tables/${name}/history?limit=1`), 200);
  assert.equal(last?.status, "FAILED");
  assert.match(last?.error ?? "", detail);
}

/** Everything change capture leaves in the database: buffers, guards, capture functions, triggers, catalog rows. */
async function captureObjects(sql: Sql): Promise<string[]> {
  const rows = await sql<{ x: string }[]>`
    SELECT c.relname AS x FROM pg_class c WHERE c.relnamespace = 'pgtrickle_changes'::regnamespace
    UNION ALL SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'pgtrickle_changes'::regnamespace
    UNION ALL SELECT tgname FROM pg_trigger WHERE tgname LIKE 'pgt_capture%'
    UNION ALL SELECT 'buffer row ' || source_relid FROM pgtrickle.pgt_change_buffers
    ORDER BY 1`;
  return rows.map((r) => r.x);
}

Deno.test({
  name: "source schema changes",
  ...dbTest,
  fn: async (t) => {
    const svc = await startTestService();
    const sql = svc.db.sql;
    try {
      await t.step("renaming a captured column: writes keep working, readers of it go to ERROR naming it", async () => {
        await sql`CREATE TABLE src (id int PRIMARY KEY, v int, w text)`;
        await sql`INSERT INTO src SELECT i, i % 7, 'w' || i FROM generate_series(1, 1000) i`;
        await create(svc, "src_vw", "SELECT id, v, w FROM src");
        await create(svc, "src_v", "SELECT id, v FROM src");
        await create(svc, "src_g", "SELECT v, count(*) AS c FROM src GROUP BY v");
        await create(svc, "src_full", "SELECT id, upper(w) AS uw FROM src", "FULL");

        await sql`ALTER TABLE src RENAME COLUMN w TO w2`;
        // The tester's reproduction: this failed inside the capture trigger.
        await sql`UPDATE src SET w2 = 'x' WHERE id = 500`;
        await sql`INSERT INTO src VALUES (1001, 3, 'new')`;
        await sql`DELETE FROM src WHERE id = 10`;

        const named = /"public\.src".*"w".*renamed to "w2"/;
        await assertSourceChanged(svc, "src_vw", named);
        await assertSourceChanged(svc, "src_full", named);
        // Queries that do not read the renamed column keep equalling their query, now and after more changes; two
        // readers adapting to the rename at once both succeed.
        await Promise.all([refresh(svc, "src_v"), refresh(svc, "src_g")]);
        await assertEqualsQuery(sql, "src_v", "SELECT id, v FROM src");
        await assertEqualsQuery(sql, "src_g", "SELECT v, count(*) AS c FROM src GROUP BY v");
        await sql`UPDATE src SET v = v + 1 WHERE id BETWEEN 100 AND 120`;
        await sql`UPDATE src SET w2 = 'y' WHERE id = 7`;
        for (
          const [name, query] of [["src_v", "SELECT id, v FROM src"], [
            "src_g",
            "SELECT v, count(*) AS c FROM src GROUP BY v",
          ]]
        ) {
          const r = await refresh(svc, name!);
          assert.equal(r.action, "DIFFERENTIAL", `${name} is maintained differentially again`);
          await assertEqualsQuery(sql, name!, query!);
        }
        const st = await ok<StreamTable>(await svc.request("GET", "/stream-tables/src_v"), 200);
        assert.equal(st.status, "ACTIVE");
      });

      await t.step("a new stream table over the renamed column captures it", async () => {
        await create(svc, "src_w2", "SELECT id, w2 FROM src");
        await sql`UPDATE src SET w2 = 'z' WHERE id BETWEEN 1 AND 5`;
        const r = await refresh(svc, "src_w2");
        assert.equal(r.action, "DIFFERENTIAL");
        await assertEqualsQuery(sql, "src_w2", "SELECT id, w2 FROM src");
        await refresh(svc, "src_v");
        await assertEqualsQuery(sql, "src_v", "SELECT id, v FROM src");
      });

      await t.step("adding a column keeps capture and refreshes working", async () => {
        await create(svc, "src_star", "SELECT * FROM src");
        await create(svc, "src_star_full", "SELECT * FROM src", "FULL");
        await sql`ALTER TABLE src ADD COLUMN extra int DEFAULT 5`;
        await sql`INSERT INTO src VALUES (2000, 1, 'a', 9)`;
        await sql`UPDATE src SET extra = 6, v = 0 WHERE id = 20`;
        // A differential plan expanded the `*` when it was made, as a view does: it keeps its columns.
        const star = "SELECT id, v, w2 FROM src";
        for (
          const [name, query] of [["src_v", "SELECT id, v FROM src"], ["src_w2", "SELECT id, w2 FROM src"], [
            "src_star",
            star,
          ]]
        ) {
          const r = await refresh(svc, name!);
          assert.equal(r.action, "DIFFERENTIAL");
          await assertEqualsQuery(sql, name!, query!);
        }
        // FULL runs the query's text, whose `*` now returns one more column than the stream table has.
        await assertSourceChanged(svc, "src_star_full", /"public\.src" changed: column "extra" was added.*now returns/);
      });

      await t.step("dropping or retyping a captured column is refused while capture is installed", async () => {
        await assert.rejects(() => sql`ALTER TABLE src DROP COLUMN v`, /other objects depend on it/);
        await assert.rejects(() => sql`ALTER TABLE src ALTER COLUMN v TYPE bigint`, /used by a view or rule/);
        await sql`UPDATE src SET v = 2 WHERE id = 30`;
        await refresh(svc, "src_v");
        await assertEqualsQuery(sql, "src_v", "SELECT id, v FROM src");
      });

      await t.step("DROP COLUMN ... CASCADE: writes keep working; readers of the column go to ERROR", async () => {
        await sql`CREATE TABLE dc (id int PRIMARY KEY, a int, b int)`;
        await sql`INSERT INTO dc SELECT i, i, i FROM generate_series(1, 50) i`;
        await create(svc, "dc_ab", "SELECT id, a, b FROM dc");
        await create(svc, "dc_a", "SELECT id, a FROM dc");
        await sql`ALTER TABLE dc DROP COLUMN b CASCADE`;
        await sql`UPDATE dc SET a = a + 1 WHERE id < 10`;
        await sql`INSERT INTO dc VALUES (51, 51)`;
        await assertSourceChanged(svc, "dc_ab", /"public\.dc".*column "b" was dropped/);
        // A reader of the other columns refreshes FULL (changes made while capture was incomplete are not lost).
        await refresh(svc, "dc_a");
        await assertEqualsQuery(sql, "dc_a", "SELECT id, a FROM dc");
        await sql`UPDATE dc SET a = 0 WHERE id = 51`;
        const r = await refresh(svc, "dc_a");
        assert.equal(r.action, "DIFFERENTIAL");
        await assertEqualsQuery(sql, "dc_a", "SELECT id, a FROM dc");
      });

      await t.step("a dropped and recreated source puts its stream tables in ERROR at once", async () => {
        await sql`CREATE TABLE gone (id int PRIMARY KEY, v int)`;
        await sql`INSERT INTO gone SELECT i, i FROM generate_series(1, 10) i`;
        await create(svc, "gone_st", "SELECT id, v FROM gone");
        await sql`DROP TABLE gone CASCADE`;
        await sql`CREATE TABLE gone (id int PRIMARY KEY, v int)`;
        await sql`INSERT INTO gone VALUES (1, 100)`;
        await assertSourceChanged(svc, "gone_st", /"public\.gone".*dropped/);
      });

      await t.step("a dropped source puts its stream table in ERROR from the scheduler too", async () => {
        await sql`CREATE TABLE gone2 (id int PRIMARY KEY, v int)`;
        await create(svc, "gone2_st", "SELECT id, v FROM gone2");
        await sql`DROP TABLE gone2 CASCADE`;
        const ctx = svc.engine.db();
        const row = (await findStreamTable(sql, { schema: "public", name: "gone2_st" }))!;
        await assert.rejects(() => refreshStreamTable(ctx, row.pgt_id, { initiatedBy: "SCHEDULER" }), /dropped/);
        const after = await ok<StreamTable>(await svc.request("GET", "/stream-tables/gone2_st"), 200);
        assert.equal(after.status, "ERROR");
        assert.match(after.last_error ?? "", /"public\.gone2".*dropped/);
      });

      await t.step("capture written by an earlier version is rewritten by the next refresh", async () => {
        await sql`CREATE TABLE legacy (id int PRIMARY KEY, v int)`;
        await create(svc, "legacy_v", "SELECT id, v FROM legacy");
        const { oid } = one(await sql<{ oid: number }[]>`SELECT 'legacy'::regclass::oid::int8 AS oid`);
        // What the first version installed: a function naming the columns, which a rename broke.
        await sql.unsafe(`
          UPDATE pgtrickle.pgt_change_buffers SET capture_version = 1 WHERE source_relid = ${oid};
          CREATE OR REPLACE FUNCTION pgtrickle_changes.capture_${oid}() RETURNS trigger LANGUAGE plpgsql AS $body$
          DECLARE stmt bigint := nextval('pgtrickle_changes.changes_${oid}_seq');
          BEGIN
            IF TG_OP = 'INSERT' THEN
              INSERT INTO pgtrickle_changes.changes_${oid} (change_id, action, id, v) SELECT stmt, 'I', id, v FROM pgt_new;
            ELSIF TG_OP = 'UPDATE' THEN
              INSERT INTO pgtrickle_changes.changes_${oid} (change_id, action, id, v)
                SELECT stmt, 'D', id, v FROM pgt_old UNION ALL SELECT stmt, 'I', id, v FROM pgt_new;
            ELSIF TG_OP = 'DELETE' THEN
              INSERT INTO pgtrickle_changes.changes_${oid} (change_id, action, id, v) SELECT stmt, 'D', id, v FROM pgt_old;
            ELSE
              INSERT INTO pgtrickle_changes.changes_${oid} (change_id, action) VALUES (stmt, 'T');
            END IF;
            RETURN NULL;
          END $body$;`);
        await sql`INSERT INTO legacy VALUES (1, 1)`;
        await refresh(svc, "legacy_v");
        await sql`ALTER TABLE legacy RENAME COLUMN v TO v2`;
        await sql`INSERT INTO legacy VALUES (2, 2)`;
        await assertSourceChanged(svc, "legacy_v", /"public\.legacy".*"v" was renamed to "v2"/);
      });

      await t.step("DELETE removes stream tables whose source is gone, and all capture with them", async () => {
        const all = await sql<{ name: string }[]>`SELECT pgt_name AS name FROM pgtrickle.pgt_stream_tables`;
        assert.ok(all.some((r) => r.name === "gone_st") && all.some((r) => r.name === "src_vw"));
        for (const { name } of all) {
          const res = await svc.request("DELETE", `/stream-tables/${name}`);
          assert.equal(res.status, 204, `${name}: ${await res.text()}`);
        }
        assert.deepEqual(await captureObjects(sql), []);
        // The sources are plain tables again: their columns can be dropped and retyped.
        await sql`ALTER TABLE src DROP COLUMN w2`;
        await sql`ALTER TABLE src ALTER COLUMN v TYPE bigint`;
        await sql`INSERT INTO gone VALUES (2, 2)`;
      });
    } finally {
      await svc.close();
    }
  },
});
