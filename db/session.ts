/**
 * Running a defining query (SQL by design) on a pooled connection without letting it change that connection.
 *
 * A function in the query can change its session: `set_config(..., false)` and `set_config('role', ...)` outlive a
 * transaction that commits (a refresh commits), LISTEN takes effect at commit, temporary tables stay, and session
 * advisory locks and prepared statements outlive even a rollback. DISCARD ALL would undo all of it, but it cannot
 * run inside a transaction block and it would also deallocate postgres.js's own prepared statements. So the user's
 * SQL runs in a savepoint (its errors leave the transaction usable), and right after it, in the same transaction,
 * one round trip puts the session back as a new connection has it:
 *
 * - `RESET ALL`, `RESET SESSION AUTHORIZATION`, `RESET ROLE`: transactional, so they commit with the refresh and,
 *   coming before the engine's own statements, those run with the session's defaults (search_path included);
 *   the settings a client gives at connection start are the defaults RESET returns to;
 * - `UNLISTEN *` (transactional like LISTEN), `DISCARD SEQUENCES` (allowed in a transaction), and `DISCARD TEMP`
 *   when the session has temporary objects other than the engine's own delta tables (`pgt_delta_*`, kept per session
 *   so that a DIFFERENTIAL refresh runs no DDL: engine/refresh/differential/temp_tables.ts). A FULL query may create
 *   any (a table, view, sequence, type, function in pg_temp): all are looked for (about a millisecond: pg_proc is
 *   read whole). A DIFFERENTIAL query calls no volatile function (the planner refuses them) and PostgreSQL refuses any
 *   CREATE in a non-volatile one, so there pg_class alone is looked at (a few hundredths of a millisecond), as
 *   defence in depth for a function made volatile after the plan;
 * - `pg_advisory_unlock_all()`: session-level locks only (the pool's connections hold none of the engine's; the
 *   scheduler's leader lock lives on a connection of its own that never runs user SQL);
 * - statements the query PREPAREd (`from_sql`) are deallocated by name; postgres.js's protocol-level ones stay.
 *
 * Cost: one savepoint and one round trip per refresh that runs the query (about 0.3 ms locally); a refresh with
 * nothing to do runs no user SQL and pays nothing.
 */
import type { Tx } from "./pool.ts";

// Every name is schema-qualified: the query may have left search_path pointing anywhere when this runs.
const RESET = "RESET ALL; RESET SESSION AUTHORIZATION; RESET ROLE; UNLISTEN *; DISCARD SEQUENCES;";
const CLEAN_UP = `SELECT pg_catalog.pg_advisory_unlock_all(),
    ARRAY(SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql) AS prepared`;
/**
 * DISCARD TEMP when the session has temporary objects other than the engine's delta tables; `functions`: pg_proc and
 * pg_type are looked at too.
 */
function discardTempUnlessOnlyDeltaTables(functions: boolean): string {
  const others = functions
    ? `
      OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema())
      OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace = pg_catalog.pg_my_temp_schema()
        AND typtype <> 'c' AND typcategory <> 'A')`
    : "";
  return `DO $restore$ BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()
        AND relkind NOT IN ('i', 't') AND relname NOT LIKE 'pgt\\_delta\\_%')${others} THEN
      DISCARD TEMP;
    END IF;
  END $restore$;`;
}
const RESTORE = `${RESET} ${discardTempUnlessOnlyDeltaTables(true)} ${CLEAN_UP}`;
const RESTORE_NON_VOLATILE = `${RESET} ${discardTempUnlessOnlyDeltaTables(false)} ${CLEAN_UP}`;

export interface UserSqlOptions {
  /** The user's SQL calls no volatile function (a DIFFERENTIAL plan's), so it cannot have created objects. */
  nonVolatile?: boolean;
}

/** Puts the session of `tx` back as a new connection has it (see above); resets SET LOCAL values too. */
export async function restoreSession(tx: Tx, options: UserSqlOptions = {}): Promise<void> {
  // Constant text, several statements: the simple protocol (no parameters) runs them in one round trip.
  const text = options.nonVolatile === true ? RESTORE_NON_VOLATILE : RESTORE;
  const results = await tx.unsafe(text) as unknown as { prepared: string[] }[][];
  const prepared = results.at(-1)?.[0]?.prepared ?? [];
  for (const name of prepared) {
    // The name comes from the server's own list, quoted as an identifier.
    await tx.unsafe(`DEALLOCATE "${name.replaceAll('"', '""')}"`);
  }
}

/**
 * Runs `fn`, which runs the user's SQL, in a savepoint of `tx`, then restores the session whether `fn` succeeded or
 * failed; `fn`'s error, if any, is rethrown. Later statements of the transaction (the engine's) run on a clean
 * session.
 */
export async function withUserSql<T>(tx: Tx, fn: (sp: Tx) => Promise<T>, options: UserSqlOptions = {}): Promise<T> {
  let result: { value: T };
  try {
    // Boxed: postgres.js awaits an array a savepoint returns as a list of queries, which would drop a result's count.
    result = await tx.savepoint(async (sp) => ({ value: await fn(sp) })) as { value: T };
  } catch (e) {
    await restoreSession(tx, options).catch(() => {
      // The transaction is unusable (connection lost): it rolls back, and the original error says why.
    });
    throw e;
  }
  await restoreSession(tx, options);
  return result.value;
}
