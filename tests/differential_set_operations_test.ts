/**
 * The oracle for set operations (UNION, INTERSECT, EXCEPT, their ALL forms, trees of them with UNION ALL): seeded
 * random DML against three source tables whose values overlap often (small domains, NULLs, duplicates), each case as
 * a FULL and a DIFFERENTIAL stream table created and refreshed by the engine; after every refresh the stream table
 * equals its query as a multiset (checked in the refresh transaction's own snapshot, tests/support/oracle.ts).
 * Replay a failure with ORACLE_SEED=<seed> (the seed is printed).
 */
import assert from "node:assert/strict";
import { oracleSeed, type Rng, type Sql, type Tx } from "./support/oracle.ts";
import { type OracleCase, runOracle, type Workload } from "./support/oracle_workload.ts";

/** `after` names a stream table this one reads (created first, refreshed first). */
const CASES: OracleCase[] = [
  { name: "union", query: "SELECT x, y FROM p UNION SELECT x, y FROM q" },
  {
    name: "union_join",
    query: "SELECT p.x, r.tag FROM p JOIN r ON r.id = p.g UNION SELECT q.x, q.y FROM q JOIN r ON r.x = q.x",
  },
  { name: "intersect", query: "SELECT x, y FROM p INTERSECT SELECT x, y FROM q WHERE g <> 1" },
  { name: "except", query: "SELECT x, y FROM p EXCEPT SELECT x, y FROM q" },
  { name: "intersect_all", query: "SELECT x, y FROM p INTERSECT ALL SELECT x, y FROM q" },
  { name: "except_all", query: "SELECT x, y FROM p EXCEPT ALL SELECT x, y FROM q WHERE g > 0" },
  // ((p UNION ALL p) EXCEPT ALL q): multiplicities up to twice p's.
  { name: "except_all_doubled", query: "SELECT x FROM p UNION ALL SELECT x FROM p EXCEPT ALL SELECT x FROM q" },
  {
    name: "nested",
    query: "(SELECT x FROM p UNION ALL SELECT x FROM q WHERE y = 'a') " +
      "EXCEPT ALL (SELECT x FROM r INTERSECT SELECT g FROM q) UNION ALL SELECT DISTINCT g FROM p",
  },
  {
    name: "nested_sets",
    query: "SELECT y, g FROM p EXCEPT (SELECT y, g FROM q UNION SELECT tag, x FROM r) ORDER BY 1",
  },
  {
    name: "grouped_except",
    query: "SELECT g, max(x) AS m FROM p GROUP BY g EXCEPT SELECT g, max(x) FROM q GROUP BY g",
  },
  {
    name: "grouped_intersect_all",
    query: "SELECT g, min(x) AS m FROM p GROUP BY g HAVING count(*) > 2 INTERSECT ALL SELECT g, x FROM q",
  },
  {
    name: "grouped_join_union",
    query: "SELECT r.tag, count(*) % 3 AS c FROM p JOIN r ON r.id = p.g GROUP BY r.tag " +
      "UNION SELECT y, x FROM q UNION SELECT max(y), 1 FROM p",
  },
  // A stream table over a set operation's stream table: its row id is the source's key.
  { name: "over_except_all", query: "SELECT x, count(*) AS c FROM st_src GROUP BY x", after: "except_all" },
  {
    name: "nulls",
    query: "SELECT y, NULL::int AS z FROM p UNION ALL SELECT y, x FROM q INTERSECT SELECT tag, x FROM r",
  },
];

type Exec = Sql | Tx;

async function insertRow(sql: Exec, rng: Rng, table: "p" | "q"): Promise<void> {
  await sql.unsafe(`INSERT INTO ${table} VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, [
    rng.int(1, 120),
    rng.maybeNull(rng.int(0, 5)),
    rng.maybeNull(rng.pick(["a", "b", "c"])),
    rng.maybeNull(rng.int(0, 3)),
  ]);
}

async function insertR(sql: Exec, rng: Rng): Promise<void> {
  await sql`INSERT INTO r VALUES (${rng.int(0, 7)}, ${rng.maybeNull(rng.int(0, 5))}, ${
    rng.maybeNull(rng.pick(["a", "b", "t"]))
  }) ON CONFLICT DO NOTHING`;
}

async function createSources(sql: Sql, rng: Rng): Promise<void> {
  await sql.unsafe(`
    CREATE TABLE p (id int PRIMARY KEY, x int, y text, g int);
    CREATE TABLE q (id int PRIMARY KEY, x int, y text, g int);
    CREATE TABLE r (id int PRIMARY KEY, x int, tag text);`);
  for (let i = 0; i < 80; i++) await insertRow(sql, rng, "p");
  for (let i = 0; i < 80; i++) await insertRow(sql, rng, "q");
  for (let i = 0; i < 6; i++) await insertR(sql, rng);
}

/** One random write: inserts, updates of values (to and from NULL), primary keys and join keys, deletes. */
async function randomWrite(sql: Exec, rng: Rng): Promise<void> {
  const table = rng.pick(["p", "q"] as const);
  const id = rng.int(1, 120);
  switch (rng.int(0, 9)) {
    case 0:
    case 1:
      return insertRow(sql, rng, table);
    case 2:
      await sql.unsafe(`UPDATE ${table} SET x = $1 WHERE id BETWEEN $2 AND $2 + 6`, [rng.maybeNull(rng.int(0, 5)), id]);
      return;
    case 3:
      await sql.unsafe(`UPDATE ${table} SET y = $1, g = $2 WHERE id BETWEEN $3 AND $3 + 4`, [
        rng.maybeNull(rng.pick(["a", "b", "c"])),
        rng.maybeNull(rng.int(0, 3)),
        id,
      ]);
      return;
    case 4: { // primary key
      const to = rng.int(1, 120);
      await sql.unsafe(
        `UPDATE ${table} SET id = $1 WHERE id = (SELECT min(id) FROM ${table} WHERE id >= $2)
         AND NOT EXISTS (SELECT 1 FROM ${table} WHERE id = $1)`,
        [to, id],
      );
      return;
    }
    case 5:
      await sql.unsafe(`DELETE FROM ${table} WHERE id BETWEEN $1 AND $1 + $2`, [id, rng.int(0, 5)]);
      return;
    case 6: // the same rows again: values that cancel out
      await sql.unsafe(`UPDATE ${table} SET x = (coalesce(x, 0) + 1) % 6 WHERE g = $1`, [rng.int(0, 3)]);
      return;
    case 7:
      return insertR(sql, rng);
    case 8:
      await sql`UPDATE r SET x = ${rng.maybeNull(rng.int(0, 5))}, tag = ${rng.maybeNull(rng.pick(["a", "b", "t"]))}
        WHERE id = ${rng.int(0, 7)}`;
      return;
    default:
      await sql`DELETE FROM r WHERE id = ${rng.int(0, 7)}`;
  }
}

/** Three tables with small, overlapping value domains; a case over another's stream table names `st_src`. */
const SETS: Workload = {
  name: "Set-operation oracle",
  createSources,
  randomWrite,
  truncate: async (sql, rng) => {
    await sql`TRUNCATE q`;
    for (let i = 0; i < 40; i++) await insertRow(sql, rng, "q");
  },
  upstream: "st_src",
};

Deno.test({
  name: "set operations oracle: every case equals its query after every refresh (fixed seed)",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const stats = await runOracle(Number(Deno.env.get("ORACLE_SEED") ?? 20261127), CASES, SETS);
    // The workload must really exercise the differential path (a truncate's refresh is FULL).
    assert.ok(stats.differential > stats.refreshes * 0.8, JSON.stringify(stats));
  },
});

Deno.test({
  name: "set operations oracle: a fresh random seed each run",
  ignore: Deno.env.get("ORACLE_SEED") !== undefined,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const seed = oracleSeed();
    console.log(`set operations oracle seed ${seed} (replay with ORACLE_SEED=${seed})`);
    const stats = await runOracle(seed, CASES, SETS);
    assert.ok(stats.differential > stats.refreshes * 0.8, JSON.stringify(stats));
  },
});
