/**
 * A creation interrupted by a crash: the stream table it left INITIALIZING is removed by the leader of the database
 * (at its next start, or by another instance), with a log line, and the same name can be created again. A creation
 * still in progress is left alone.
 */
import assert from "node:assert/strict";
import type { Sql } from "../db/pool.ts";
import { freshDatabase } from "./support/db.ts";
import { eventually, logLines, postJson, type ServiceProcess, spawnService, stopAll } from "./support/process.ts";
import { dbTest, startTestService } from "./support/service.ts";
import { one } from "./support/rows.ts";

const REMOVED = "removed a stream table whose creation was interrupted";

/** What a user checks: is there a table, a catalog row, and capture left on the source? */
async function leftovers(
  sql: Sql,
  name: string,
  source: string,
): Promise<{ table: boolean; row: boolean; capture: number }> {
  return {
    ...one(
      await sql<{ table: boolean; row: boolean; capture: number }[]>`
    SELECT to_regclass(${name}) IS NOT NULL AS table,
      EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_name = ${name}) AS row,
      (SELECT count(*)::int FROM pg_trigger WHERE tgrelid = ${source}::regclass AND NOT tgisinternal) AS capture`,
    ),
  };
}

Deno.test({
  name: "kill -9 during a create: the restarted service removes the stream table, logs it, and a re-create succeeds",
  ...dbTest,
  fn: async () => {
    const db = await freshDatabase();
    const procs: ServiceProcess[] = [];
    try {
      await db.sql`CREATE TABLE big (id int PRIMARY KEY, v int)`;
      await db.sql`INSERT INTO big SELECT i, i FROM generate_series(1, 400000) i`;
      const first = await spawnService({ databaseUrl: db.url });
      procs.push(first);
      const body = { name: "copy", query: "SELECT id, v FROM big", schedule: "1m" };
      const creating = postJson(first, "/stream-tables", body).catch((e) => e);
      // Killed while its initial refresh writes the storage (a few seconds for 400,000 rows).
      assert.ok(
        await eventually(async () =>
          (await db.sql`
            SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.relation = to_regclass('public.copy') AND l.mode = 'RowExclusiveLock'
              AND a.application_name = ${"trickle:" + first.pid}`).length > 0, 10_000),
        "the initial refresh is running",
      );
      first.kill("SIGKILL");
      await first.status;
      assert.ok(!((await creating) instanceof Response), "the client got no answer");
      assert.equal(
        one(await db.sql<{ status: string }[]>`SELECT status FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'copy'`)
          .status,
        "INITIALIZING",
        "the crash left the stream table half-created",
      );

      const second = await spawnService({ databaseUrl: db.url });
      procs.push(second);
      assert.ok(
        await eventually(async () => {
          const left = await leftovers(db.sql, "copy", "big");
          return !left.table && !left.row && left.capture === 0;
        }, 5000),
        `the half-created stream table is gone, with its capture: ${
          JSON.stringify(await leftovers(db.sql, "copy", "big"))
        }`,
      );
      const [line] = logLines(second, REMOVED);
      assert.equal(line?.stream_table, "copy", second.log());

      const again = await postJson(second, "/stream-tables", body);
      assert.equal(again.status, 201, await again.text());
      assert.equal(one(await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM copy`).n, 400_000);
    } finally {
      await stopAll(procs);
      await db.drop();
    }
  },
});

Deno.test({
  name: "a tick removes an INITIALIZING stream table whose creator is gone and leaves a creation in progress alone",
  ...dbTest,
  fn: async () => {
    const svc = await startTestService();
    const sql = svc.db.sql;
    try {
      await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await sql`INSERT INTO src SELECT i, i FROM generate_series(1, 10) i`;
      // What a crash after registering leaves: a stream table whose initial refresh never committed.
      const made = await svc.request("POST", "/stream-tables", { name: "orphan", query: "SELECT id, v FROM src" });
      assert.equal(made.status, 201, await made.text());
      await sql`UPDATE pgtrickle.pgt_stream_tables SET status = 'INITIALIZING', frontier = NULL
        WHERE pgt_name = 'orphan'`;
      // A creation in progress: its initial refresh takes about 2 s.
      const slow = svc.request("POST", "/stream-tables", {
        name: "slow",
        query: "SELECT s.id, s.v FROM src s CROSS JOIN (SELECT pg_sleep(2) AS z) z",
        refresh_mode: "FULL",
      });
      assert.ok(
        await eventually(
          async () => (await sql`SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'slow'`).length > 0,
          5000,
        ),
      );

      await svc.engine.scheduler.tick();
      await svc.engine.scheduler.idle();
      const orphan = await leftovers(sql, "orphan", "src");
      assert.deepEqual([orphan.table, orphan.row], [false, false], "the abandoned stream table is gone");
      const status = await sql<{ status: string }[]>`SELECT status FROM pgtrickle.pgt_stream_tables
        WHERE pgt_name = 'slow'`;
      assert.equal(one(status).status, "INITIALIZING", "the creation in progress is untouched");

      const done = await slow;
      assert.equal(done.status, 201, await done.text());
      assert.equal(one(await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM slow`).n, 10);
      const again = await svc.request("POST", "/stream-tables", { name: "orphan", query: "SELECT id, v FROM src" });
      assert.equal(again.status, 201, await again.text());
    } finally {
      await svc.close();
    }
  },
});
