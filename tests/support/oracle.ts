/**
 * The oracle (docs/differential.md): after every refresh a stream table equals its defining query's result as a
 * multiset. An `OracleEngine` is a real engine over a fresh database; its stream tables are created with
 * createStreamTable and refreshed with refreshStreamTable, the production path (the refresh decision, per-source
 * change counts, source checks, history), and every refresh checks the oracle from the engine's committing hook:
 * inside the refresh transaction, so the comparison sees exactly the snapshot the refresh saw, concurrent writers or
 * not, and a mismatch rolls the refresh back.
 */
import type postgres from "postgres";
import { quoteIdent } from "../../db/identifiers.ts";
import { findStreamTable } from "../../engine/catalog.ts";
import type { DatabaseContext } from "../../engine/context.ts";
import { TrickleError } from "../../engine/errors.ts";
import type { QueryPlan } from "../../engine/plan.ts";
import { type Action, refreshStreamTable } from "../../engine/refresh/refresh.ts";
import { createStreamTable } from "../../engine/stream_tables.ts";
import { freshDatabase } from "./db.ts";
import { startTestService, type TestService, type TestServiceOptions } from "./service.ts";

export type Sql = postgres.Sql;
export type Tx = postgres.TransactionSql;

/** A small seeded PRNG (mulberry32): the same seed replays the same workload. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)]!;
  }
  /** `value`, or null with probability p. */
  maybeNull<T>(value: T, p = 0.15): T | null {
    return this.chance(p) ? null : value;
  }
}

/** The seed of this run: ORACLE_SEED when set (to replay a failure), else a fresh one. */
export function oracleSeed(): number {
  const env = Deno.env.get("ORACLE_SEED");
  return env !== undefined && env !== "" ? Number(env) : Math.floor(Math.random() * 2 ** 31);
}

export interface TestDatabase {
  sql: Sql;
  url: string;
  close(): Promise<void>;
}

/** A fresh, migrated database (tests/support/db.ts: the server of TEST_DATABASE_URL, a clone of the template). */
export async function freshTestDatabase(label: string): Promise<TestDatabase> {
  const db = await freshDatabase(label);
  return { sql: db.sql as unknown as Sql, url: db.url, close: () => db.drop() };
}

export type Mode = "FULL" | "DIFFERENTIAL";

/** A mismatch between a stream table and its query; the message says which rows differ. */
export class OracleMismatch extends Error {}

/** An engine over a fresh database whose refreshes of the stream tables under test check the oracle. */
export class OracleEngine {
  /** Stream tables under test, by qualified name: their defining query. */
  readonly #queries = new Map<string, string>();
  private constructor(readonly service: TestService, readonly ctx: DatabaseContext, readonly sql: Sql) {}

  /** Starts the engine (its scheduler stays off: tests refresh) and hooks the oracle into every refresh. */
  static async start(options: TestServiceOptions = {}): Promise<OracleEngine> {
    const service = await startTestService(options);
    const ctx = service.engine.db();
    const oracle = new OracleEngine(service, ctx, service.db.sql as unknown as Sql);
    ctx.events.onRefreshCommitting(async (tx, facts) => {
      const query = oracle.#queries.get(facts.stream_table);
      if (query === undefined) return;
      const [row] = await tx<{ plan: QueryPlan; name: string }[]>`
        SELECT plan, pgt_name AS name FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${facts.pgt_id}`;
      await assertSameContent(tx as unknown as Tx, row!.name, row!.plan, query);
    });
    return oracle;
  }

  /** Checks the oracle on every refresh of `public.<name>` from now on. */
  watch(name: string, query: string): void {
    this.#queries.set(`public.${name}`, query);
  }

  close(): Promise<void> {
    return this.service.close();
  }
}

/** One refresh as the engine reported it. */
export interface RefreshRecord {
  action: Action;
  inserted: number;
  deleted: number;
  deltaRows: number;
}

/** A stream table created and refreshed by the engine, checking the oracle on every refresh (in public). */
export class StreamTableUnderTest {
  refreshes: RefreshRecord[] = [];
  /** Why the engine chose FULL (AUTO), else null. */
  fallbackReason: string | null = null;
  private constructor(
    readonly oracle: OracleEngine,
    readonly pgtId: number,
    readonly name: string,
    readonly query: string,
    readonly mode: Mode,
    readonly plan: QueryPlan,
  ) {}

  /** Creates the stream table through the engine (its initial refresh checked too); DIFFERENTIAL must be granted. */
  static async create(
    oracle: OracleEngine,
    opts: { name: string; query: string; mode: Mode | "AUTO" },
  ): Promise<StreamTableUnderTest> {
    oracle.watch(opts.name, opts.query);
    const row = await createStreamTable(oracle.ctx, {
      name: { schema: "public", name: opts.name },
      query: opts.query,
      schedule: "1h",
      refreshMode: opts.mode,
      freshnessDeadlineMs: null,
    });
    if (opts.mode !== "AUTO" && row.effective_refresh_mode !== opts.mode) {
      throw new Error(`"${opts.name}" is ${row.effective_refresh_mode}, not ${opts.mode}: ${row.fallback_reason}`);
    }
    // AUTO: the mode the engine chose.
    const mode = row.effective_refresh_mode as Mode;
    const st = new StreamTableUnderTest(oracle, row.pgt_id, opts.name, opts.query, mode, row.plan);
    st.fallbackReason = row.fallback_reason;
    const [initial] = await oracle.sql<RefreshRecord[]>`
      SELECT action, rows_inserted::int AS inserted, rows_deleted::int AS deleted, delta_rows::int AS "deltaRows"
      FROM pgtrickle.pgt_refresh_history WHERE pgt_id = ${row.pgt_id} AND initiated_by = 'CREATE'`;
    st.refreshes.push({ ...initial! });
    return st;
  }

  /** One refresh by the engine, which decides FULL, DIFFERENTIAL or NO_DATA; the oracle is checked inside it. */
  async refresh(): Promise<RefreshRecord> {
    const r = await refreshStreamTable(this.oracle.ctx, this.pgtId, { initiatedBy: "MANUAL" });
    const record = { action: r.action, inserted: r.rows_inserted, deleted: r.rows_deleted, deltaRows: r.delta_rows };
    this.refreshes.push(record);
    return record;
  }
}

/** Throws OracleMismatch unless the stream table's visible columns equal the query's result as multisets. */
export async function assertSameContent(sql: Sql | Tx, table: string, plan: QueryPlan, query: string): Promise<void> {
  const cols = plan.columns.map((c) => quoteIdent(c.name)).join(", ");
  const st = `SELECT ${cols} FROM ${quoteIdent(table)}`;
  const extra = await sql.unsafe(`${st} EXCEPT ALL (${query}) LIMIT 5`);
  const missing = await sql.unsafe(`(${query}) EXCEPT ALL ${st} LIMIT 5`);
  if (extra.length > 0 || missing.length > 0) {
    throw new OracleMismatch(
      `"${table}" differs from its query.\n  rows only in the stream table: ${JSON.stringify(extra)}\n` +
        `  rows only in the query result: ${JSON.stringify(missing)}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Source schema changes, through the engine (its refresh checks the sources against the catalog)

/** The sources of the schema-change oracle: `s` (renamed and swapped columns), `t` (dropped and recreated). */
export async function createChangingSources(sql: Sql, rng: Rng): Promise<void> {
  await sql.unsafe(`
    CREATE TABLE s (id int PRIMARY KEY, k int, v int, w text);
    CREATE TABLE t (id int PRIMARY KEY, name text);
    CREATE TABLE u (id int PRIMARY KEY, p int, q int);`);
  // Enough rows that a round of writes stays under differential_max_change_ratio.
  await sql`INSERT INTO s SELECT i, i % 10, i % 50, (ARRAY['a', 'b', NULL])[i % 3 + 1] FROM generate_series(1, 2000) i`;
  for (let i = 0; i < 100; i++) await sourceWrite(sql, rng, "w");
  for (let i = 0; i < 8; i++) await sql`INSERT INTO t VALUES (${i}, ${rng.maybeNull(rng.pick(["t1", "t2"]))})`;
  await sql`INSERT INTO u SELECT i, i % 5, i % 3 FROM generate_series(1, 60) i`;
}

/** One random write to `s` (its text column named `wName`) and `u`: inserts, updates of every column, deletes. */
export async function sourceWrite(sql: Sql, rng: Rng, wName: string): Promise<void> {
  const id = rng.int(1, 2500);
  const w = rng.maybeNull(rng.pick(["a", "b", "c"]));
  switch (rng.int(0, 5)) {
    case 0:
    case 1:
      await sql.unsafe(
        `INSERT INTO s (id, k, v, ${quoteIdent(wName)}) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
        [id, rng.maybeNull(rng.int(0, 9)), rng.maybeNull(rng.int(-5, 50)), w],
      );
      return;
    case 2:
      await sql.unsafe(`UPDATE s SET v = $1, ${quoteIdent(wName)} = $2 WHERE id BETWEEN $3 AND $3 + 5`, [
        rng.maybeNull(rng.int(-5, 50)),
        w,
        id,
      ]);
      return;
    case 3:
      await sql`UPDATE s SET k = ${rng.maybeNull(rng.int(0, 9))} WHERE id BETWEEN ${id} AND ${id + 5}`;
      return;
    case 4:
      await sql`DELETE FROM s WHERE id BETWEEN ${id} AND ${id + rng.int(0, 5)}`;
      return;
    default:
      await sql`UPDATE u SET p = ${rng.int(0, 6)}, q = ${rng.int(0, 6)} WHERE id = ${rng.int(1, 60)}`;
  }
}

/** Throws OracleMismatch unless `table`'s columns named like the query's outputs equal the query's result. */
export async function assertEqualsQuery(sql: Sql, table: string, query: string): Promise<void> {
  const probe = await sql.unsafe(`SELECT * FROM (${query}) q LIMIT 0`);
  const plan = { columns: probe.columns.map((c) => ({ name: c.name, type: "" })) } as QueryPlan;
  await assertSameContent(sql, table, plan, query);
}

/** A stream table over the changing sources; `fails` matches the SourceChanged message that puts it in ERROR. */
export interface ChangeCase {
  name: string;
  query: string;
  mode?: "FULL";
  fails?: RegExp;
}

/**
 * Through the engine: rounds of random writes, each followed by a refresh of every live case and the oracle; then
 * `s.w` is renamed to `w2` and `u`'s columns p and q swap names (writes go on, the cases `fails` names go to ERROR
 * at once, the others keep equalling their query), then `t` is dropped and recreated.
 */
export async function runSourceChangeOracle(
  seed: number,
  cases: ChangeCase[],
): Promise<{ differentialAfterRename: boolean }> {
  const rng = new Rng(seed);
  const svc = await startTestService();
  const ctx = svc.engine.db();
  const sql = svc.db.sql as unknown as Sql;
  let wName = "w";
  const live = new Map(cases.map((c) => [c.name, c]));
  const ids = new Map<string, number>();
  /** Random writes (each must succeed), then a refresh of every live stream table and the oracle. */
  const round = async (refresh = true) => {
    for (let i = 0; i < 15; i++) await sourceWrite(sql, rng, wName);
    if (!refresh) return;
    for (const c of live.values()) {
      await refreshStreamTable(ctx, ids.get(c.name)!, { initiatedBy: "MANUAL" });
      await assertEqualsQuery(sql, c.name, c.query);
    }
  };
  /** Refreshes the cases whose `fails` is `matching`: each fails with SourceChanged and is ERROR at once. */
  const expectFailures = async (matching: RegExp) => {
    for (const c of [...live.values()].filter((c) => String(c.fails) === String(matching))) {
      const error = await refreshStreamTable(ctx, ids.get(c.name)!, { initiatedBy: "MANUAL" }).then(
        () => new Error(`${c.name}: the refresh succeeded`),
        (e: Error) => e,
      );
      if (!(error instanceof TrickleError) || error.code !== "SourceChanged" || !matching.test(error.message)) {
        throw new OracleMismatch(`${c.name}: expected SourceChanged matching ${matching}, got ${error.message}`);
      }
      const row = await findStreamTable(sql as never, { schema: "public", name: c.name });
      if (row?.status !== "ERROR") throw new OracleMismatch(`${c.name}: status ${row?.status}, expected ERROR`);
      live.delete(c.name);
    }
  };
  try {
    await createChangingSources(sql, rng);
    for (const c of cases) {
      const st = await createStreamTable(ctx, {
        name: { schema: "public", name: c.name },
        query: c.query,
        schedule: "1h",
        refreshMode: c.mode ?? "AUTO",
        freshnessDeadlineMs: null,
      });
      ids.set(c.name, st.pgt_id);
    }
    for (let r = 0; r < 3; r++) await round();

    await sql`ALTER TABLE s RENAME COLUMN w TO w2`;
    await sql.unsafe("ALTER TABLE u RENAME COLUMN p TO tmp; ALTER TABLE u RENAME COLUMN q TO p");
    await sql`ALTER TABLE u RENAME COLUMN tmp TO q`;
    wName = "w2";
    await round(false);
    await expectFailures(/"public\.s" changed: column "w" was renamed to "w2"/);
    for (let r = 0; r < 4; r++) await round();
    const actions = await sql<{ action: string }[]>`
      SELECT action FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables s USING (pgt_id)
      WHERE s.pgt_name = 'unused_group' ORDER BY refresh_id DESC LIMIT 4`;

    await sql.unsafe(`DROP TABLE t CASCADE; CREATE TABLE t (id int PRIMARY KEY, name text);
      INSERT INTO t SELECT i, 'again' FROM generate_series(0, 9) i`);
    await round(false);
    await expectFailures(/"public\.t".*dropped/);
    for (let r = 0; r < 2; r++) await round();
    await sql`INSERT INTO t VALUES (10, 'writes to the new table work')`;
    return { differentialAfterRename: actions.some((a) => a.action === "DIFFERENTIAL") };
  } finally {
    await svc.close();
  }
}
