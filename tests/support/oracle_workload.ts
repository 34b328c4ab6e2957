/**
 * The differential oracle's run (tests/differential_oracle_test.ts, tests/differential_wider_oracle_test.ts,
 * tests/differential_set_operations_test.ts): seeded rounds of random DML over a workload's source tables (inserts,
 * updates of values, keys, join keys and group keys, deletes, NULLs, a truncate, a transaction spanning two refreshes,
 * a rolled-back transaction, concurrent writers), every case as a FULL and a DIFFERENTIAL stream table created and
 * refreshed by the engine, checked against its query after every refresh. The default workload is four tables a, b,
 * c, d; a test may bring its own (`Workload`).
 */
import assert from "node:assert/strict";
import type { QueryPlan } from "../../engine/plan.ts";
import { type Mode, OracleEngine, Rng, type Sql, StreamTableUnderTest, type Tx } from "./oracle.ts";

/**
 * A stream table under test: its query over the workload's tables; `after` names a case whose stream table this one
 * reads (its query names it by the workload's `upstream` placeholder).
 */
export interface OracleCase {
  name: string;
  query: string;
  after?: string;
}

/** The source tables of an oracle run and the writes to them. */
export interface Workload {
  /** Named in the failure message. */
  name: string;
  createSources(sql: Sql, rng: Rng): Promise<void>;
  /** One random write (a statement or a few), in a transaction of the caller's. */
  randomWrite(sql: Sql | Tx, rng: Rng): Promise<void>;
  /** Round 7: a source truncated and filled again. */
  truncate(sql: Sql, rng: Rng): Promise<void>;
  /** The word in a case's query that stands for the stream table of its `after` case. */
  upstream: string;
}

interface Pair {
  name: string;
  full: StreamTableUnderTest;
  diff: StreamTableUnderTest;
}

async function createSources(sql: Sql, rng: Rng): Promise<void> {
  await sql.unsafe(`
    CREATE TABLE a (id int PRIMARY KEY, k int, g int, v int, n numeric(10,2), f float8, s text);
    CREATE TABLE b (id int PRIMARY KEY, k2 int, name text, w int);
    CREATE TABLE c (id1 int, id2 int, x int, PRIMARY KEY (id1, id2));
    CREATE TABLE d (k int PRIMARY KEY, label text);`);
  for (let i = 0; i < 150; i++) await insertA(sql, rng);
  for (let i = 0; i < 12; i++) await insertB(sql, rng);
  for (let i = 0; i < 30; i++) await insertC(sql, rng);
  for (let k = 0; k < 8; k++) await sql`INSERT INTO d VALUES (${k}, ${"label" + (k % 3)})`;
}

type Exec = Sql | Tx;

async function insertA(sql: Exec, rng: Rng): Promise<void> {
  await sql`INSERT INTO a VALUES (${rng.int(1, 400)}, ${rng.maybeNull(rng.int(0, 11))}, ${
    rng.maybeNull(rng.int(0, 7))
  }, ${rng.maybeNull(rng.int(-5, 100))}, ${rng.maybeNull((rng.int(-10000, 10000) / 100).toFixed(2))}, ${
    rng.maybeNull(rng.int(0, 1000) / 7)
  }, ${rng.maybeNull(rng.pick(["x", "y", "z", "w"]))}) ON CONFLICT DO NOTHING`;
}

async function insertB(sql: Exec, rng: Rng): Promise<void> {
  await sql`INSERT INTO b VALUES (${rng.int(0, 14)}, ${rng.maybeNull(rng.int(0, 4))}, ${
    rng.maybeNull(rng.pick(["n1", "n2", "n3"]))
  }, ${rng.maybeNull(rng.int(0, 9))}) ON CONFLICT DO NOTHING`;
}

async function insertC(sql: Exec, rng: Rng): Promise<void> {
  await sql`INSERT INTO c VALUES (${rng.int(0, 4)}, ${rng.int(0, 7)}, ${rng.maybeNull(rng.int(0, 50))})
    ON CONFLICT DO NOTHING`;
}

/** One random write: inserts, updates of values, keys, join keys and group keys, deletes, NULLs. */
async function randomWrite(sql: Exec, rng: Rng): Promise<void> {
  const r = rng.int(0, 15);
  const id = rng.int(1, 400);
  switch (r) {
    case 0:
    case 1:
      return insertA(sql, rng);
    case 2:
      await sql`UPDATE a SET v = ${rng.maybeNull(rng.int(-5, 100))}, n = ${
        rng.maybeNull((rng.int(-10000, 10000) / 100).toFixed(2))
      } WHERE id BETWEEN ${id} AND ${id + 20}`;
      return;
    case 3: // group key
      await sql`UPDATE a SET g = ${rng.maybeNull(rng.int(0, 7))} WHERE id BETWEEN ${id} AND ${id + 10}`;
      return;
    case 4: // join key
      await sql`UPDATE a SET k = ${rng.maybeNull(rng.int(0, 11))}, s = ${rng.maybeNull(rng.pick(["x", "y", "q"]))}
        WHERE id BETWEEN ${id} AND ${id + 10}`;
      return;
    case 5: { // primary key
      const to = rng.int(1, 400);
      await sql`UPDATE a SET id = ${to} WHERE id = (SELECT min(id) FROM a WHERE id >= ${id})
        AND NOT EXISTS (SELECT 1 FROM a WHERE id = ${to})`;
      return;
    }
    case 6:
      await sql`DELETE FROM a WHERE id BETWEEN ${id} AND ${id + rng.int(0, 8)}`;
      return;
    case 7: // the same rows several times
      await sql`UPDATE a SET v = coalesce(v, 0) + 1, f = ${rng.int(0, 100) / 3} WHERE g = ${rng.int(0, 7)}`;
      return;
    case 8:
      return insertB(sql, rng);
    case 9:
      await sql`UPDATE b SET name = ${rng.maybeNull(rng.pick(["n1", "n2", "n3", "n4"]))}, w = ${
        rng.maybeNull(rng.int(0, 9))
      } WHERE id = ${rng.int(0, 14)}`;
      return;
    case 10:
      await sql`UPDATE b SET k2 = ${rng.maybeNull(rng.int(0, 4))} WHERE id = ${rng.int(0, 14)}`;
      return;
    case 11: {
      const to = rng.int(0, 14);
      await sql`UPDATE b SET id = ${to} WHERE id = ${rng.int(0, 14)} AND NOT EXISTS (SELECT 1 FROM b WHERE id = ${to})`;
      return;
    }
    case 12:
      await sql`DELETE FROM b WHERE id = ${rng.int(0, 14)}`;
      return;
    case 13:
      return insertC(sql, rng);
    case 14:
      await sql`UPDATE c SET x = ${rng.maybeNull(rng.int(0, 50))}, id2 = (id2 + 1) % 8
        WHERE id1 = ${
        rng.int(0, 4)
      } AND NOT EXISTS (SELECT 1 FROM c c2 WHERE c2.id1 = c.id1 AND c2.id2 = (c.id2 + 1) % 8)`;
      return;
    default:
      await sql`DELETE FROM c WHERE id1 = ${rng.int(0, 4)} AND id2 = ${rng.int(0, 7)}`;
      await sql`UPDATE d SET label = ${rng.pick(["label0", "label1", "other"])} WHERE k = ${rng.int(0, 7)}`;
  }
}

async function randomTransaction(sql: Sql, rng: Rng, write: Workload["randomWrite"]): Promise<void> {
  const n = rng.int(1, 4);
  try {
    await sql.begin(async (tx) => {
      for (let i = 0; i < n; i++) await write(tx, rng);
    });
  } catch (e) {
    // Concurrent writers may collide on a key or deadlock; the transaction rolls back, which is a case too.
    const code = (e as { code?: string }).code;
    if (code !== "23505" && code !== "40P01") throw e;
  }
}

async function refreshAll(pairs: Pair[], rng: Rng): Promise<void> {
  // Upstream stream tables first (creation order); FULL and DIFFERENTIAL interleaved in random order otherwise.
  for (const p of pairs) {
    const order = rng.chance(0.5) ? [p.full, p.diff] : [p.diff, p.full];
    for (const st of order) await st.refresh();
  }
}

async function assertModesAgree(sql: Sql, pairs: Pair[]): Promise<void> {
  for (const p of pairs) {
    const cols = p.diff.plan.columns.map((c) => `"${c.name}"`).join(", ");
    const [row] = await sql.unsafe(`SELECT
      (SELECT count(*) FROM (SELECT ${cols} FROM "${p.full.name}" EXCEPT ALL SELECT ${cols} FROM "${p.diff.name}") x) +
      (SELECT count(*) FROM (SELECT ${cols} FROM "${p.diff.name}" EXCEPT ALL SELECT ${cols} FROM "${p.full.name}") y)
      AS n`);
    assert.equal(Number(row!["n"]), 0, `FULL and DIFFERENTIAL content of "${p.name}" differ`);
  }
}

/** The default workload: tables a, b, c (a two-column key), d; a case reading another's stream table names `st_join`. */
export const ABCD: Workload = {
  name: "Oracle",
  createSources,
  randomWrite,
  truncate: async (sql, rng) => {
    await sql`TRUNCATE c`;
    for (let i = 0; i < 20; i++) await insertC(sql, rng);
  },
  upstream: "st_join",
};

/**
 * Rounds of seeded random DML over the workload's sources, each case as a FULL and a DIFFERENTIAL stream table
 * checked by the oracle after every refresh, and both modes compared after every round. Returns how many refreshes
 * with changes there were, how many were DIFFERENTIAL, and the DIFFERENTIAL stream tables' plans.
 */
export async function runOracle(
  seed: number,
  cases: OracleCase[],
  workload: Workload = ABCD,
): Promise<{ refreshes: number; differential: number; plans: Map<string, QueryPlan> }> {
  const rng = new Rng(seed);
  // The sources are small, so most rounds change more than differential_max_change_ratio of them and the engine
  // would rightly choose FULL: the limit is lifted so that the differential path is what this oracle exercises.
  const oracle = await OracleEngine.start({ settings: { differentialMaxChangeRatio: Number.MAX_VALUE } });
  const sql = oracle.sql;
  const pairs: Pair[] = [];
  let step = "setup";
  try {
    await workload.createSources(sql, rng);
    const write = workload.randomWrite;
    for (const c of cases) {
      step = `create ${c.name}`;
      const make = (mode: Mode) => {
        const suffix = mode === "FULL" ? "full" : "diff";
        const query = c.after === undefined ? c.query : c.query.replace(workload.upstream, `st_${c.after}_${suffix}`);
        return StreamTableUnderTest.create(oracle, { name: `st_${c.name}_${suffix}`, query, mode });
      };
      pairs.push({ name: c.name, full: await make("FULL"), diff: await make("DIFFERENTIAL") });
    }
    for (let round = 0; round < 14; round++) {
      step = `round ${round}`;
      const n = rng.int(1, 5);
      for (let i = 0; i < n; i++) await randomTransaction(sql, rng, write);
      if (round === 3) {
        step = `round ${round}: a transaction spanning two refreshes`;
        const long = await sql.reserve();
        try {
          await long`BEGIN`;
          await write(long, rng);
          await write(long, rng);
          await refreshAll(pairs, rng);
          await write(long, rng);
          await refreshAll(pairs, rng);
          await long`COMMIT`;
        } finally {
          long.release();
        }
      }
      if (round === 5) {
        step = `round ${round}: a rolled-back transaction`;
        await sql.begin(async (tx) => {
          for (let i = 0; i < 4; i++) await write(tx, rng);
          throw new Error("rollback");
        }).catch((e: Error) => assert.equal(e.message, "rollback"));
      }
      if (round === 7) {
        step = `round ${round}: a truncate`;
        await workload.truncate(sql, rng);
      }
      if (round % 4 === 2) {
        step = `round ${round}: concurrent writers during refreshes`;
        const writers = [1, 2].map(async (j) => {
          const w = new Rng(seed + round * 10 + j);
          for (let i = 0; i < 15; i++) {
            await randomTransaction(sql, w, write);
            await new Promise((r) => setTimeout(r, w.int(0, 20)));
          }
        });
        await Promise.all([refreshAll(pairs, rng), ...writers]);
      }
      step = `round ${round}: refresh`;
      await refreshAll(pairs, rng);
      step = `round ${round}: FULL vs DIFFERENTIAL`;
      await assertModesAgree(sql, pairs);
    }
    // Refreshes that had changes to apply (the engine answers NO_DATA when none of a stream table's sources changed).
    const all = pairs.flatMap((p) => p.diff.refreshes).filter((r) => r.action !== "NO_DATA");
    const plans = new Map(pairs.map((p) => [p.name, p.diff.plan]));
    return { refreshes: all.length, differential: all.filter((r) => r.action === "DIFFERENTIAL").length, plans };
  } catch (e) {
    console.error(`${workload.name} failed at ${step}; replay with ORACLE_SEED=${seed}`);
    throw e;
  } finally {
    await oracle.close();
  }
}
