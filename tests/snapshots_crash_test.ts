/**
 * A restore interrupted midway (the service killed with SIGKILL, or its connection cut by the server) leaves the
 * stream table as it was: the same rows, the same frontier. A restore run to its end afterwards continues
 * DIFFERENTIAL, and the stream table equals its defining query (the oracle's check).
 */
import assert from "node:assert/strict";
import type { Sql } from "../db/pool.ts";
import type { QueryPlan } from "../engine/plan.ts";
import { freshDatabase } from "./support/db.ts";
import { assertSameContent } from "./support/oracle.ts";
import { eventually, postJson, type ServiceProcess, spawnService } from "./support/process.ts";
import { one } from "./support/rows.ts";
import { dbTest } from "./support/service.ts";

const QUERY = "SELECT id, v FROM big";
/** No scheduled refresh interferes: a restore makes the stream table due at once, and this test refreshes itself. */
const QUIET = { TRICKLE_SCHEDULER_INTERVAL_MS: "3600000" };

/** What a user checks after the interruption: the rows (by their hash), the frontier, the catalog's view. */
async function state(sql: Sql) {
  return one(
    await sql<{ hash: string; frontier: string; pending: string | null; status: string }[]>`
    SELECT pgtrickle.content_hash('public.copy') AS hash, frontier::text AS frontier,
      pending_full_reason AS pending, status
    FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'copy'`,
  );
}

/** True once the service's restore holds the stream table exclusively (it has truncated it, the insert runs). */
async function restoring(sql: Sql, proc: ServiceProcess): Promise<number | null> {
  const [row] = await sql<{ pid: number }[]>`
    SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.relation = to_regclass('public.copy') AND l.mode = 'AccessExclusiveLock' AND l.granted
      AND a.application_name = ${"trickle:" + proc.pid}`;
  return row?.pid ?? null;
}

Deno.test({
  name: "a restore killed midway (SIGKILL, then a cut connection) leaves the stream table as it was",
  ...dbTest,
  fn: async () => {
    const db = await freshDatabase();
    const procs: ServiceProcess[] = [];
    const stopAll = async () => {
      for (const p of procs.splice(0)) {
        try {
          p.kill("SIGKILL");
        } catch {
          // already gone
        }
        await p.status;
      }
    };
    try {
      await db.sql`CREATE TABLE big (id int PRIMARY KEY, v int)`;
      await db.sql`INSERT INTO big SELECT i, i FROM generate_series(1, 600000) i`;
      const first = await spawnService({ databaseUrl: db.url, env: QUIET });
      procs.push(first);
      const made = await postJson(first, "/stream-tables", { name: "copy", query: QUERY, schedule: "1h" });
      assert.equal(made.status, 201, await made.text());
      const snap = await postJson(first, "/snapshots", { stream_table: "copy" });
      assert.equal(snap.status, 201);
      const { snapshot } = await snap.json() as { snapshot: string };
      await db.sql`UPDATE big SET v = v + 1 WHERE id <= 1000`;
      const refreshed = await postJson(first, "/stream-tables/copy/refresh", {});
      assert.equal(refreshed.status, 200, await refreshed.text());
      const before = await state(db.sql);

      // 1. The service process is killed while its restore writes the rows.
      const answer = postJson(first, "/restore", { stream_table: "copy", source: snapshot }).catch((e) => e);
      assert.ok(await eventually(async () => await restoring(db.sql, first) !== null, 20_000), "the restore runs");
      first.kill("SIGKILL");
      await first.status;
      assert.ok(!((await answer) instanceof Response), "the client got no answer");
      assert.ok(
        // The backend finds its client gone when its statement ends (it may be on the insert still), then rolls back.
        await eventually(async () => (await restoring(db.sql, first)) === null, 60_000),
        "the server rolled the restore back",
      );
      assert.deepEqual(await state(db.sql), before, "rows and frontier are as they were");

      // 2. The connection of a restore is cut by the server.
      const second = await spawnService({ databaseUrl: db.url, env: QUIET });
      procs.push(second);
      const cut = postJson(second, "/restore", { stream_table: "copy", source: snapshot });
      let backend: number | null = null;
      assert.ok(
        await eventually(async () => (backend = await restoring(db.sql, second)) !== null, 20_000),
        "the restore runs",
      );
      await db.sql`SELECT pg_terminate_backend(${backend!})`;
      const res = await cut;
      assert.equal(res.status, 503, await res.clone().text());
      assert.equal((await res.json() as { code: string }).code, "DatabaseUnavailable");
      assert.deepEqual(await state(db.sql), before, "rows and frontier are as they were");
      // postgres.js 3.4.9 may then kill the process: the rollback it sends on the closed connection is written from
      // a setImmediate after the socket is gone, an uncaught TypeError (porsager/postgres#1154, #1208; fixes not
      // released). The database is unaffected, which is what this test is about; the next step uses a new process.
      await stopAll();
      const third = await spawnService({ databaseUrl: db.url, env: QUIET });
      procs.push(third);

      // 3. Run to its end, the restore continues from the snapshot's frontier.
      const done = await postJson(third, "/restore", { stream_table: "copy", source: snapshot });
      assert.equal(done.status, 200, await done.clone().text());
      const r = await done.json() as { next_refresh: { mode: string }; pending_changes: number };
      assert.equal(r.next_refresh.mode, "DIFFERENTIAL");
      assert.equal(r.pending_changes, 2000, "the 1,000 updated rows, each a D and an I");
      const again = await postJson(third, "/stream-tables/copy/refresh", {});
      const refresh = await again.json() as { action: string; delta_rows: number };
      assert.deepEqual([refresh.action, refresh.delta_rows], ["DIFFERENTIAL", 2000]);
      const plan = one(
        await db.sql<{ plan: QueryPlan }[]>`
        SELECT plan FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'copy'`,
      ).plan;
      await assertSameContent(db.sql as never, "copy", plan, QUERY);
    } finally {
      await stopAll();
      await db.drop();
    }
  },
});
