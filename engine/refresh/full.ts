/** FULL refresh: recompute the defining query and replace the stream table's content, in the caller's transaction. */
import type { Tx } from "../../db/pool.ts";
import { type QualifiedName, quoteIdent, quoteQualified } from "../../db/identifiers.ts";
import { withUserSql } from "../../db/session.ts";
import type { QueryDescription, QueryPlan } from "../plan.ts";

/** A plan that can only be refreshed FULL: the storage holds exactly the query's columns. */
export function fullOnlyPlan(query: string, description: QueryDescription, reason: string): QueryPlan {
  return {
    unsupportedReason: reason,
    columns: description.columns,
    hiddenColumns: [],
    uniqueKey: null,
    fullSelect: query,
    differential: null,
  };
}

/** Replaces the content of `target` with the plan's full result; returns the rows deleted and inserted. */
export async function applyFull(
  tx: Tx,
  options: { plan: QueryPlan; target: QualifiedName },
): Promise<{ inserted: number; deleted: number }> {
  const table = quoteQualified(options.target);
  const columns = [...options.plan.columns, ...options.plan.hiddenColumns].map((c) => quoteIdent(c.name)).join(", ");
  // DELETE, not TRUNCATE: readers keep seeing the previous content until this transaction commits (MVCC-safe).
  const deleted = await tx.unsafe(`DELETE FROM ${table}`);
  // fullSelect is the defining query (or the engine's rewrite of it): SQL by design, checked at creation. It runs
  // isolated, so nothing it does to the session outlives it (db/session.ts).
  const inserted = await withUserSql(
    tx,
    (sp) => sp.unsafe(`INSERT INTO ${table} (${columns}) ${options.plan.fullSelect}`, [], { simple: false } as never),
  );
  return { inserted: inserted.count, deleted: deleted.count };
}
