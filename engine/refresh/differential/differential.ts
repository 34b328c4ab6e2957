/**
 * DIFFERENTIAL refresh (docs/differential.md): a stream table's change is computed from its sources' deltas and
 * applied in the refresh transaction.
 *
 * Planning parses the defining query with PostgreSQL's own parser (libpg-query) and cuts its text into clauses at
 * token boundaries (the scanner's tokens, never regular expressions). Table references in FROM become slots that a
 * refresh fills with the table itself (its state at the refresh snapshot, "new"), its delta since the frontier, or its
 * state at the frontier ("old" = new minus the delta, as signed weights). The delta of an inner join of n references
 * telescopes: sum over k of old_1 .. old_{k-1} x delta_k x new_{k+1} .. new_n, each row weighted by the product of
 * its weights. Four strategies apply a delta:
 *
 * - rows: projections, filters and joins. Row identity `__pgt_row_id` is a 64-bit hash of the sources' primary keys;
 *   the weighted delta rows are consolidated per row id and content, then deleted or upserted.
 * - algebraic: GROUP BY (or a global aggregate, or DISTINCT) whose outputs are group keys, count, and sum/avg over
 *   integer or numeric: per-group counts and sums of the delta are added to hidden state columns.
 * - recompute: any other grouped query (min, max, any aggregate, HAVING, float sums, and grouped UNION ALL
 *   branches): the groups the delta touches are recomputed from the sources and written where they differ.
 * - partition: outer joins, subqueries in expressions, window functions, DISTINCT ON and top-k: the partitions the
 *   delta touches (outer-join core keys, group keys, PARTITION BY keys, DISTINCT ON keys, or the whole result) are
 *   recomputed and written where they differ.
 *
 * A tree of set operations other than UNION ALL (UNION, INTERSECT, EXCEPT, their ALL forms) is maintained as one
 * unit by value (set_operations.ts): the values the delta touches are recomputed through the whole tree.
 *
 * Everything in the plan is JSON (stored in the catalog); SQL is assembled at refresh time from the plan's pieces.
 *
 * This is the folder's one public module. Inside: query_reading.ts (parse tree and tokens), flatten.ts and
 * flatten_merge.ts (WITH queries and simple subqueries in FROM rewritten away before planning), planning.ts,
 * block_planning.ts, partition_planning.ts, sublink_planning.ts, row_planning.ts and topk_planning.ts (what is
 * supported, and how), functions.ts (what the query's functions allow), diff_plan.ts (the stored plan), delta_sql.ts, strategies/ and set_operations.ts (the
 * SQL, free of any apply step), apply.ts (running it).
 */
export { applyDifferential, type ApplyOptions, type ApplyResult } from "./apply.ts";
export type { DiffPlan } from "./diff_plan.ts";
export { planNotes } from "./diff_plan.ts";
export { flattenQuery } from "./flatten.ts";
export { type PlanInput, planQuery } from "./planning.ts";
