/**
 * The rows strategy: projections, filters and inner joins. Row identity `__pgt_row_id` is a 64-bit hash of the
 * sources' primary keys; the weighted delta rows are consolidated per row id and content, then deleted or upserted.
 */
import type { BlockData, DiffPlan } from "../diff_plan.ts";
import { ROW_ID } from "../diff_plan.ts";
import { cast, COUNTS, type Deltas, deltaTerms, fromWhere, keyRowId, plainFrom } from "../delta_sql.ts";
import type { Strategy } from "./strategy.ts";

export const rows: Strategy = {
  fullSelect: (block, plan) =>
    `SELECT ${block.targets.join(", ")}, ${keyRowId(block)} ${fromWhere(plainFrom(block, plan), block.where)}`,
  changeQueries: (block, plan, deltas) => [rowsChanges(block, plan, deltas)],
  writeStatement: (block, plan, { target, deltas }) => applyRows(plan, block, target, deltas),
};

/** Consolidated weighted row changes of a rows block: row id, visible columns, net weight. */
function rowsChanges(block: BlockData, plan: DiffPlan, deltas: Deltas): string {
  const terms = deltaTerms(block, plan, deltas, (w) => {
    const cols = block.targets.map((t, i) => `${cast(plan, i, t)} AS "c${i}"`);
    return `${keyRowId(block)} AS rid, ${cols.join(", ")}, ${w} AS w`;
  });
  const group: string[] = ["rid"];
  const out: string[] = ["rid"];
  plan.columns.forEach((_, i) => {
    if (plan.textCompared[i]) {
      group.push(`"c${i}"::text`);
      out.push(`(pg_catalog.array_agg("c${i}"))[1] AS "c${i}"`);
    } else {
      group.push(`"c${i}"`);
      out.push(`"c${i}"`);
    }
  });
  return `SELECT ${out.join(", ")}, pg_catalog.sum(w) AS w FROM (${terms.join("\nUNION ALL\n")}) d ` +
    `GROUP BY ${group.join(", ")} HAVING pg_catalog.sum(w) <> 0`;
}

/** One statement: consolidate the row changes, delete the rows that went, upsert the rows that came or changed. */
function applyRows(plan: DiffPlan, block: BlockData, target: string, deltas: Deltas): string {
  const cols = plan.columns.map((_, i) => `"c${i}"`);
  return `WITH chg AS MATERIALIZED (${rowsChanges(block, plan, deltas)}),
    del AS (
      DELETE FROM ${target} WHERE ${ROW_ID} IN (
        SELECT rid FROM chg WHERE w < 0 EXCEPT SELECT rid FROM chg WHERE w > 0)
      RETURNING 1),
    up AS (
      INSERT INTO ${target} AS st (${[...plan.columns, ROW_ID].join(", ")})
      SELECT ${[...cols, "rid"].join(", ")} FROM chg WHERE w > 0
      ON CONFLICT (${ROW_ID}) DO UPDATE SET ${plan.columns.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}
      RETURNING (xmax = 0) AS fresh)
    ${COUNTS}`;
}
