/**
 * The oracle (DESIGN.md section 7): after every refresh a stream table equals its defining query's result as a
 * multiset. A `StreamTableUnderTest` is created and refreshed with the engine's own pieces (describeQuery, planQuery,
 * installCapture, applyFull, applyDifferential) and checks itself inside each refresh transaction, so the comparison
 * sees exactly the snapshot the refresh saw, concurrent writers or not.
 */
import type postgres from "postgres";
import { deltaStats, installCapture } from "../../engine/cdc.ts";
import { describeQuery } from "../../engine/query.ts";
import { applyDifferential, planQuery } from "../../engine/refresh/differential.ts";
import { applyFull } from "../../engine/refresh/full.ts";
import type { QueryPlan } from "../../engine/refresh/plan.ts";
import { quoteIdent } from "../../db/identifiers.ts";
import { freshDatabase } from "./db.ts";

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

/** A stream table kept by the engine's refresh functions in a test, checking the oracle on every refresh. */
export class StreamTableUnderTest {
  frontier: string | null = null;
  refreshes: { action: string; inserted: number; deleted: number; deltaRows: number }[] = [];
  private constructor(
    readonly sql: Sql,
    readonly name: string,
    readonly query: string,
    readonly mode: Mode,
    readonly plan: QueryPlan,
    readonly sourceRelids: number[],
  ) {}

  /** Plans, creates storage, installs capture, and runs the initial FULL refresh. */
  static async create(
    sql: Sql,
    opts: { name: string; query: string; mode: Mode; streamTableSources?: string[] },
  ): Promise<StreamTableUnderTest> {
    const description = await describeQuery(sql as never, opts.query);
    for (const s of description.sources) {
      // Stream tables as sources: their engine-maintained key stands in for a primary key.
      if (opts.streamTableSources?.includes(s.name)) s.primaryKey = ["__pgt_row_id"];
    }
    const plan = await planQuery(sql as never, { query: opts.query, description, requested: opts.mode });
    if (opts.mode === "DIFFERENTIAL" && plan.unsupportedReason !== null) {
      throw new Error(`Query not supported DIFFERENTIAL: ${plan.unsupportedReason}\n${opts.query}`);
    }
    // Round-trip through JSON, as the catalog stores it.
    const stored = JSON.parse(JSON.stringify(plan)) as QueryPlan;
    const cols = [...stored.columns, ...stored.hiddenColumns].map((c) => `${quoteIdent(c.name)} ${c.type}`);
    await sql.unsafe(`CREATE TABLE ${quoteIdent(opts.name)} (${cols.join(", ")})`);
    if (stored.uniqueKey !== null) {
      await sql.unsafe(
        `CREATE UNIQUE INDEX ON ${quoteIdent(opts.name)} (${stored.uniqueKey.map(quoteIdent).join(", ")})`,
      );
    }
    for (const s of description.sources) await sql.begin((tx) => installCapture(tx as never, s));
    const st = new StreamTableUnderTest(
      sql,
      opts.name,
      opts.query,
      opts.mode,
      stored,
      description.sources.map((s) => s.relid),
    );
    await st.refresh();
    return st;
  }

  /** One refresh (FULL when there is no frontier yet, the mode is FULL, or a source was truncated), then the oracle. */
  async refresh(): Promise<void> {
    await this.sql.begin("isolation level repeatable read", async (tx) => {
      const [snap] = await tx<{ s: string }[]>`SELECT pg_current_snapshot()::text AS s`;
      let action: string = this.mode;
      let deltaRows = 0;
      if (this.frontier === null) action = "FULL";
      else {
        for (const relid of this.sourceRelids) {
          const d = await deltaStats(tx as never, relid, this.frontier);
          deltaRows += d.rows;
          if (d.truncated) action = "FULL";
        }
      }
      const target = { schema: "public", name: this.name };
      let counts = { inserted: 0, deleted: 0, deltaRows };
      if (action === "FULL") {
        counts = { ...(await applyFull(tx as never, { plan: this.plan, target })), deltaRows };
      } else {
        counts = {
          ...(await applyDifferential(tx as never, { plan: this.plan, target, frontier: this.frontier! })),
          deltaRows,
        };
      }
      await assertSameContent(tx, this.name, this.plan, this.query);
      this.refreshes.push({ action, ...counts });
      this.frontier = snap!.s;
    });
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
