/**
 * The benchmarks' data: a 1,000,000-row fact table over a 10,000-row dimension, the three stream-table shapes measured
 * on it, and a deterministic change of N fact rows. The engine bench (differential_bench.ts) and the service bench
 * (service_bench.ts) measure the same shapes on the same data, so their figures compare.
 */
import type { Sql } from "../db/pool.ts";
import { exec } from "./support.ts";

export const FACT_ROWS = 1_000_000;
export const DIM_ROWS = 10_000;
export const GROUPS = 100_000;

export interface Shape {
  key: string;
  name: string;
  query: string;
  /** The columns that identify a row of the result (REFRESH MATERIALIZED VIEW CONCURRENTLY needs a unique index). */
  key_columns: string[];
}

export const SHAPES: Shape[] = [
  {
    key: "a",
    name: "GROUP BY count/sum/avg, 100k groups",
    query: "SELECT grp, count(*) AS c, sum(qty) AS sq, avg(amount) AS aa FROM fact GROUP BY grp",
    key_columns: ["grp"],
  },
  {
    key: "b",
    name: "join projection, 1M rows",
    query: "SELECT f.id, f.qty, f.amount, d.name FROM fact f JOIN dim d ON d.id = f.dim_id",
    key_columns: ["id"],
  },
  {
    key: "c",
    name: "join + GROUP BY, 1k groups",
    query: "SELECT d.cat, count(*) AS c, sum(f.amount) AS s, avg(f.qty) AS aq FROM fact f JOIN dim d " +
      "ON d.id = f.dim_id GROUP BY d.cat",
    key_columns: ["cat"],
  },
];

/** Creates and fills `dim` and `fact`, analyzed. */
export async function loadFacts(sql: Sql): Promise<void> {
  await exec(
    sql,
    `CREATE TABLE dim (id int PRIMARY KEY, name text NOT NULL, cat int NOT NULL);
     INSERT INTO dim SELECT i, 'dim ' || i, i % 1000 FROM generate_series(0, ${DIM_ROWS - 1}) i;
     CREATE TABLE fact (id bigint PRIMARY KEY, dim_id int NOT NULL, grp int NOT NULL, qty int NOT NULL,
       amount numeric(12,2) NOT NULL);
     INSERT INTO fact SELECT i, (i * 7) % ${DIM_ROWS}, i % ${GROUPS}, (i % 50) + 1, ((i * 37) % 100000) / 100.0
       FROM generate_series(1, ${FACT_ROWS}) i;
     ANALYZE dim; ANALYZE fact;`,
  );
}

/**
 * Changes `n` fact rows, deterministically, starting after the first `done`: most are updates of values (a seventh
 * move to another group, an eleventh to another dimension row), a tenth deletes, a tenth new rows. The ids are a
 * permutation of 1..FACT_ROWS (7919 is prime), so successive calls touch distinct rows while `done + n` <= FACT_ROWS.
 */
export async function changeFacts(sql: Sql, done: number, n: number): Promise<void> {
  const ids = `SELECT ((g * 7919) % ${FACT_ROWS}) + 1 AS id FROM generate_series(${done + 1}, ${done + n}) g`;
  await exec(
    sql,
    `UPDATE fact SET qty = qty + 1, amount = amount + 1.25,
       grp = CASE WHEN id % 7 = 0 THEN (grp + 1) % ${GROUPS} ELSE grp END,
       dim_id = CASE WHEN id % 11 = 0 THEN (dim_id + 1) % ${DIM_ROWS} ELSE dim_id END
     WHERE id IN (${ids}) AND id % 10 NOT IN (3, 4);
     DELETE FROM fact WHERE id IN (${ids}) AND id % 10 = 3;
     INSERT INTO fact SELECT ${FACT_ROWS} + id, id % ${DIM_ROWS}, id % ${GROUPS}, 1, 1.00
       FROM (${ids}) s WHERE id % 10 = 4;`,
  );
}
