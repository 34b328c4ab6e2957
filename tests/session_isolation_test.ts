/**
 * A defining query cannot change the service's own sessions: whatever its functions do to the connection they run
 * on (settings, role, session advisory locks, LISTEN, prepared statements, temporary tables), every pooled
 * connection is left as a fresh one, after successful and failed refreshes alike, FULL and DIFFERENTIAL.
 */
import assert from "node:assert/strict";
import { ok, type StreamTable } from "./support/api.ts";
import { connect, type Sql } from "../db/pool.ts";
import { dbTest, startTestService, type TestService } from "./support/service.ts";

/** The engine's pool size in startTestService. */
const POOL = 5;

interface SessionState {
  search_path: string;
  statement_timeout: string;
  lock_timeout: string;
  work_mem: string;
  current_user: string;
  session_user: string;
  listening: number;
  prepared: number;
  temp_relations: number;
  advisory_locks: number;
}

/**
 * What a user could notice about a session; schema-qualified so that a changed search_path cannot hide it. The
 * engine's own delta tables (`pgt_delta_*`), which a session keeps so that a refresh runs no DDL, are not counted.
 */
async function sessionState(sql: Sql): Promise<SessionState> {
  const [row] = await sql<SessionState[]>`
    SELECT pg_catalog.current_setting('search_path') AS search_path,
      pg_catalog.current_setting('statement_timeout') AS statement_timeout,
      pg_catalog.current_setting('lock_timeout') AS lock_timeout,
      pg_catalog.current_setting('work_mem') AS work_mem,
      current_user::text AS current_user, session_user::text AS session_user,
      (SELECT count(*) FROM pg_catalog.pg_listening_channels())::int8 AS listening,
      (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)::int8 AS prepared,
      (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()
        AND relname NOT LIKE 'pgt\_delta\_%')::int8 AS temp_relations,
      (SELECT count(*) FROM pg_catalog.pg_locks
       WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())::int8 AS advisory_locks`;
  return row!;
}

/** Every connection of the engine's pool (all reserved at once, so each is a different one) against a new one. */
async function assertPoolClean(s: TestService): Promise<void> {
  const fresh = connect(s.db.url, { max: 1 });
  let expected: SessionState;
  try {
    expected = await sessionState(fresh);
  } finally {
    await fresh.end();
  }
  const pool = s.engine.db().sql;
  const reserved = await Promise.all(Array.from({ length: POOL }, () => pool.reserve()));
  try {
    for (const [i, c] of reserved.entries()) {
      assert.deepEqual(await sessionState(c as unknown as Sql), expected, `pooled connection ${i + 1} of ${POOL}`);
    }
  } finally {
    for (const c of reserved) c.release();
  }
  // No session of the service holds an advisory lock (the scheduler, which would hold its leader lock, is off).
  const [locks] = await s.db.sql<{ n: number }[]>`
    SELECT count(*)::int8 AS n FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND a.datname = ${s.db.name}`;
  assert.equal(locks!.n, 0, "advisory locks held in the test database");
}

/** Creates `n` plain stream tables with unqualified names: all must be DIFFERENTIAL, with no fallback reason. */
async function createPlain(s: TestService, prefix: string, table: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const st = await ok<StreamTable>(
      await s.request("POST", "/stream-tables", { name: `${prefix}_${i}`, query: `SELECT id, v FROM ${table}` }),
      201,
    );
    assert.equal(st.effective_refresh_mode, "DIFFERENTIAL", `${prefix}_${i}`);
    assert.equal(st.fallback_reason, null, `${prefix}_${i}`);
  }
}

Deno.test({
  name: "session isolation: a query that sets search_path for the session (the issue's case) leaves no trace",
  ...dbTest,
  async fn() {
    const s = await startTestService();
    try {
      await s.db.sql.unsafe(`
        CREATE TABLE t2 (id int PRIMARY KEY, v int);
        INSERT INTO t2 SELECT i, i FROM generate_series(1, 100) i;`);
      const query = "SELECT set_config('search_path', 'nowhere', false) AS x FROM t2 LIMIT 1";
      const st = await ok<StreamTable>(await s.request("POST", "/stream-tables", { name: "meddler", query }), 201);
      assert.equal(st.effective_refresh_mode, "FULL");
      for (let i = 0; i < 2 * POOL; i++) {
        await s.db.sql`INSERT INTO t2 VALUES (${1000 + i}, ${i})`;
        await ok(await s.request("POST", "/stream-tables/meddler/refresh"), 200);
      }
      await createPlain(s, "plain", "t2", 2 * POOL);
      await assertPoolClean(s);
    } finally {
      await s.close();
    }
  },
});

Deno.test({
  name:
    "session isolation: settings, role, advisory locks, LISTEN, PREPARE, temporary tables from a FULL query, also when it fails",
  ...dbTest,
  async fn() {
    const s = await startTestService();
    try {
      await s.db.sql.unsafe(`
        CREATE TABLE t1 (id int PRIMARY KEY, v int NOT NULL);
        INSERT INTO t1 SELECT i, i FROM generate_series(1, 100) i;
        CREATE FUNCTION leave_traces(v int) RETURNS int LANGUAGE plpgsql AS $$
        BEGIN
          EXECUTE 'LISTEN trickle_traces';
          IF NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE name = 'traced') THEN
            EXECUTE 'PREPARE traced AS SELECT 1';
          END IF;
          CREATE TEMP TABLE IF NOT EXISTS traces (x int);
          RETURN v;
        END $$;`);
      // Volatile functions: AUTO resolves FULL. The role change would make the engine's own catalog writes fail.
      const query = `SELECT id, set_config('statement_timeout', '987s', false) AS st,
          set_config('work_mem', '7777kB', false) AS wm, pg_try_advisory_lock(4242) AS locked,
          leave_traces(v) AS lt, set_config('role', 'pg_read_all_data', false) AS r, 100 / v AS q
        FROM t1`;
      const st = await ok<StreamTable>(await s.request("POST", "/stream-tables", { name: "meddler", query }), 201);
      assert.equal(st.effective_refresh_mode, "FULL");
      assert.equal(st.row_count, 100);
      for (let i = 0; i < 2 * POOL; i++) {
        await s.db.sql`INSERT INTO t1 VALUES (${1000 + i}, ${i + 1})`;
        const r = await ok<{ action: string }>(await s.request("POST", "/stream-tables/meddler/refresh"), 200);
        assert.equal(r.action, "FULL");
      }
      await assertPoolClean(s);

      // The query fails on a row (division by zero) after taking the lock and changing the settings.
      await s.db.sql`INSERT INTO t1 VALUES (5000, 0)`;
      for (let i = 0; i < POOL; i++) {
        const failed = await s.request("POST", "/stream-tables/meddler/refresh");
        assert.equal(failed.status, 422, await failed.text());
      }
      // The same query failing at creation: refused, nothing left behind.
      const refused = await s.request("POST", "/stream-tables", { name: "meddler_2", query });
      assert.equal(refused.status, 422, await refused.text());
      await assertPoolClean(s);
      await createPlain(s, "plain", "t1", POOL);
    } finally {
      await s.close();
    }
  },
});

Deno.test({
  name: "session isolation: settings and advisory locks from a function in a DIFFERENTIAL query, also when it fails",
  ...dbTest,
  async fn() {
    const s = await startTestService();
    try {
      // Declared IMMUTABLE (falsely), so the query is maintained differentially and the function runs in the delta
      // SQL as well as in FULL refreshes; v = 13 makes it fail half-way. (PostgreSQL refuses LISTEN, PREPARE and
      // CREATE in a non-volatile function, so those are left to the FULL test above.)
      await s.db.sql.unsafe(`
        CREATE TABLE t3 (id int PRIMARY KEY, v int NOT NULL);
        INSERT INTO t3 SELECT i, i % 10 FROM generate_series(1, 200) i;
        CREATE FUNCTION meddle(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
          PERFORM pg_catalog.set_config('search_path', 'nowhere', false);
          PERFORM pg_catalog.set_config('lock_timeout', '6543ms', false);
          PERFORM pg_catalog.pg_advisory_lock(4343);
          IF v = 13 THEN RAISE EXCEPTION 'meddle refuses 13' USING ERRCODE = 'data_exception'; END IF;
          RETURN v;
        END $$;`);
      const query = "SELECT id, public.meddle(v) AS m FROM t3";
      const st = await ok<StreamTable>(
        await s.request("POST", "/stream-tables", { name: "meddler", query, refresh_mode: "DIFFERENTIAL" }),
        201,
      );
      assert.equal(st.effective_refresh_mode, "DIFFERENTIAL");
      for (let i = 0; i < 2 * POOL; i++) {
        await s.db.sql`UPDATE t3 SET v = v + 1 WHERE id = ${i + 1}`;
        const r = await ok<{ action: string }>(await s.request("POST", "/stream-tables/meddler/refresh"), 200);
        assert.equal(r.action, "DIFFERENTIAL");
      }
      await assertPoolClean(s);

      await s.db.sql`UPDATE t3 SET v = 13 WHERE id = 100`;
      for (let i = 0; i < POOL; i++) {
        const failed = await s.request("POST", "/stream-tables/meddler/refresh");
        assert.equal(failed.status, 422, await failed.text());
      }
      await assertPoolClean(s);
      await createPlain(s, "plain", "t3", POOL);
      await assertPoolClean(s);
    } finally {
      await s.close();
    }
  },
});
