/**
 * Asking PostgreSQL a question that needs objects created first (a temporary view to describe, temporary tables to
 * EXPLAIN against): the work runs in a transaction that is always rolled back, so nothing it creates survives.
 */
import type { Sql, Tx } from "../db/pool.ts";
import { withUserSql } from "../db/session.ts";

/** Rolls the transaction back once `fn` has its answer. */
class Rollback extends Error {}

/**
 * Runs `fn` in a transaction (a savepoint when `sql` already is one) that is rolled back afterwards, and returns
 * what `fn` returned. Defining or EXPLAINing a query runs none of it, but planning may evaluate its functions, so
 * `fn` runs isolated (db/session.ts).
 */
export async function inRolledBackTransaction<T>(sql: Sql | Tx, fn: (tx: Tx) => Promise<T>): Promise<T> {
  let result: { value: T } | undefined;
  const run = (tx: Tx) =>
    withUserSql(tx, async (sp) => {
      result = { value: await fn(sp) };
      throw new Rollback();
    });
  try {
    await (typeof (sql as Tx).savepoint === "function" ? run(sql as Tx) : (sql as Sql).begin(run));
  } catch (e) {
    if (!(e instanceof Rollback)) throw e;
  }
  return result!.value;
}
