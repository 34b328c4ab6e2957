/**
 * The recompute strategy: any grouped query the algebraic strategy does not take (min, max, any aggregate, HAVING,
 * float sums, grouped UNION ALL branches). The groups the delta touches are recomputed from the sources and written
 * where they differ.
 */
import type { BlockData, DiffPlan } from "../diff_plan.ts";
import { ROW_ID } from "../diff_plan.ts";
import { cast, COUNTS, type Deltas, deltaTerms, fromWhere, groupRowId, plainFrom } from "../delta_sql.ts";
import type { Strategy } from "./strategy.ts";

export const recompute: Strategy = {
  fullSelect: (block, plan) =>
    `SELECT ${block.distinct ? "DISTINCT " : ""}${block.targets.join(", ")}, ${groupRowId(block, block.groupKeys)} ` +
    fromWhere(plainFrom(block, plan), block.where) +
    (block.groupBy !== null ? ` GROUP BY ${block.groupBy}` : "") +
    (block.having !== null ? ` HAVING ${block.having}` : ""),
  changeQueries: (block, plan, deltas) => {
    const k = affectedGroups(block, plan, deltas);
    return [k, recomputedGroups(block, plan, `(${k})`)];
  },
  writeStatement: (block, plan, { target, deltas }) => applyRecompute(plan, block, target, deltas),
};

/** Row ids of the groups a recompute block's delta touches. */
function affectedGroups(block: BlockData, plan: DiffPlan, deltas: Deltas): string {
  const terms = deltaTerms(block, plan, deltas, () => `${groupRowId(block, block.groupKeys)} AS rid`);
  return `SELECT DISTINCT rid FROM (${terms.join("\nUNION ALL\n")}) d`;
}

/** The current content of the groups whose row ids `affected` (a subquery text) lists. */
function recomputedGroups(block: BlockData, plan: DiffPlan, affected: string): string {
  const rid = groupRowId(block, block.groupKeys);
  const restrict = block.groupKeys.length === 0 ? null : `${rid} IN (SELECT rid FROM ${affected} k)`;
  const cols = block.targets.map((t, i) => `${cast(plan, i, t)} AS "c${i}"`);
  // Output columns first, so that GROUP BY ordinals keep their meaning.
  return `SELECT ${block.distinct ? "DISTINCT " : ""}${cols.join(", ")}, ${rid} AS rid ` +
    fromWhere(plainFrom(block, plan), block.where, restrict) +
    (block.groupBy !== null ? ` GROUP BY ${block.groupBy}` : "") +
    (block.having !== null ? ` HAVING ${block.having}` : "");
}

/** One statement: find the touched groups, recompute them, delete the ones gone, write the ones that differ. */
function applyRecompute(plan: DiffPlan, block: BlockData, target: string, deltas: Deltas): string {
  const cols = plan.columns.map((_, i) => `"c${i}"`);
  const mine = plan.columns.map((c) => `st.${c}`);
  const theirs = plan.columns.map((c) => `EXCLUDED.${c}`);
  return `WITH k AS MATERIALIZED (${affectedGroups(block, plan, deltas)}),
    n AS MATERIALIZED (${recomputedGroups(block, plan, "k")}),
    del AS (
      DELETE FROM ${target} st WHERE ${ROW_ID} IN (SELECT rid FROM k)
        AND NOT EXISTS (SELECT 1 FROM n WHERE n.rid = st.${ROW_ID})
      RETURNING 1),
    up AS (
      INSERT INTO ${target} AS st (${[...plan.columns, ROW_ID].join(", ")})
      SELECT ${[...cols, "rid"].join(", ")} FROM n
      ON CONFLICT (${ROW_ID}) DO UPDATE SET ${plan.columns.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}
      WHERE ROW(${mine.join(", ")})::text IS DISTINCT FROM ROW(${theirs.join(", ")})::text
      RETURNING (xmax = 0) AS fresh)
    ${COUNTS}`;
}
