/**
 * The three ways a block's change reaches its stream table (see differential.ts). A strategy writes SQL only: the
 * SELECTs computing a block's change and the one statement writing it, from whatever relations `Deltas` names, so
 * a caller other than a refresh (the plan-time probe, later IMMEDIATE triggers) can use them without the apply step.
 */
import type { BlockData, DiffPlan } from "../diff_plan.ts";
import type { Deltas } from "../delta_sql.ts";
import { algebraic } from "./algebraic.ts";
import { partition } from "./partition.ts";
import { recompute } from "./recompute.ts";
import { rows } from "./rows.ts";

export interface Strategy {
  /** The SELECT computing the block's full content: visible columns, row id, then hidden columns. */
  fullSelect(block: BlockData, plan: DiffPlan): string;
  /** The SELECTs the write statement runs, standalone (the plan-time probe EXPLAINs them). */
  changeQueries(block: BlockData, plan: DiffPlan, deltas: Deltas): string[];
  /** One statement writing the block's change into `target`; it returns one row: deleted, inserted, updated. */
  writeStatement(block: BlockData, plan: DiffPlan, input: { target: string; deltas: Deltas }): string;
}

/** The strategy a block was planned for. */
export function strategyOf(block: BlockData): Strategy {
  return { rows, algebraic, recompute, partition }[block.strategy];
}
