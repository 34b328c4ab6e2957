/**
 * The differential plan: what planning decides and a refresh reads (the `differential` field of a QueryPlan). It is
 * JSON, stored in the catalog; SQL is assembled from its pieces at refresh time.
 */
/** A piece of FROM text: literal SQL, or the index of a table reference to fill in. */
export type Segment = string | number;

export interface RefData {
  /** Index into DiffPlan.sources. */
  source: number;
  /** The name exposed to the rest of the query (alias or relation name), quoted. */
  exposed: string;
  /** SQL appended after a substituted subquery when the reference had no alias (`AS "name"`), else "". */
  aliasSuffix: string;
  /** The reference's primary-key columns, qualified by the exposed name. */
  key: string[];
}

export interface BlockData {
  strategy: "rows" | "algebraic" | "recompute" | "partition";
  refs: RefData[];
  from: Segment[];
  where: string | null;
  /** Output expressions, `*` expanded, aliases removed. */
  targets: string[];
  /** Grouping expressions with ordinals and output aliases resolved (DISTINCT: the targets); [] when none. */
  groupKeys: string[];
  /** GROUP BY list, ordinals and aliases resolved (null: no GROUP BY). */
  groupBy: string | null;
  having: string | null;
  distinct: boolean;
  /** UNION ALL branch number (1-based), or 0 outside a UNION ALL. */
  branch: number;
  /** Algebraic strategy only. */
  algebraic: AlgebraicData | null;
  /** Partition strategy only (strategies/partition.ts). */
  partition?: PartitionData;
}

/**
 * A partition recompute: every output row belongs to one value of the partition expressions `keys` (none: the whole
 * block is one partition), and a partition's rows depend only on source rows that join into it. A refresh finds the
 * partitions its delta touches and recomputes only those.
 */
export interface PartitionData {
  /** Partition expressions over the block's FROM; [] when the whole block is one partition. */
  keys: string[];
  /**
   * True when the keys are primary-key columns (never NULL): a recompute then selects its partitions by their key
   * values, which an index on the key serves, rather than by their hash.
   */
  byValue: boolean;
  /** How a row is identified: by every reference's key, by the group keys, or by the DISTINCT ON keys. */
  rowId: "refs" | "group" | "distinct_on";
  /** DISTINCT ON expressions (resolved), or null. */
  distinctOn: string[] | null;
  /** ORDER BY ... LIMIT/OFFSET/FETCH text kept for top-k and DISTINCT ON, or null. */
  tail: string | null;
  /** References on the nullable side of an outer join: a delta term's changed row must participate. */
  nullable: number[];
  /** WHERE conjuncts that discovery may evaluate (no subquery, no nullable side), ANDed; null: none. */
  discoveryWhere: string | null;
  /** Subqueries in expressions whose own FROM the planner read: their changes touch the outer rows they correlate with. */
  sublinks: SublinkData[];
  /** Sources (index into DiffPlan.sources) whose any change touches every partition. */
  touchAll: number[];
  /** What the plan costs where it degrades (a whole-table window, top-k, ...): shown in DiffPlan.notes. */
  notes: string[];
  /**
   * The block's WHERE with room to narrow `x IN (SELECT y ...)` conjuncts whose x is partition key `key`: recomputing
   * partitions by value, the subquery need only produce the touched values of that key (`y IN (...)` added to its
   * WHERE), instead of its whole result (TPC-H Q18: an aggregate over every lineitem). Absent: nothing to narrow.
   */
  narrowWhere?: WherePiece[];
  /**
   * An algebraic block over rows (block.strategy "algebraic"): `keys` are its rows' keys (the references never
   * NULL-extended), and this is its WHERE with every table its subqueries read as a slot (an index into `refs`), so
   * that a refresh can evaluate the touched rows as they were at the frontier and subtract them.
   */
  oldWhere?: { refs: RefData[]; where: WherePiece[] };
  /** Top-k whose refresh first tests whether a change reaches the stored rows (absent: recompute on any change). */
  topk?: TopkData;
}

/** An ungrouped top-k's boundary test (topk_planning.ts): LIMIT, OFFSET and ORDER BY over output columns. */
export interface TopkData {
  count: number;
  offset: number;
  withTies: boolean;
  /** ORDER BY items: output column index, direction, where NULLs sort (explicit), quoted collation or null. */
  order: { column: number; desc: boolean; nullsFirst: boolean; collate: string | null }[];
}

/**
 * A piece of a WHERE a refresh rewrites: literal SQL; a table a subquery reads (index into oldWhere.refs); where to
 * add `y IN (touched values of key)` to a subquery's WHERE: "open" (a parenthesis before its own condition), "and"
 * (after it: `) AND ...`), "where" (it has none: ` WHERE ...`); or around a top-level conjunct holding a subquery,
 * "guard" and "end_guard" (`(...) IS TRUE` where the rows are read at the frontier, below).
 */
export type WherePiece =
  | string
  | number
  | { slot: "open" }
  | { slot: "guard" }
  | { slot: "end_guard" }
  | { slot: "and" | "where"; key: number; column: string };

/** A subquery in an expression, as discovery reads it: its FROM with slots, its WHERE without nested subqueries. */
export interface SublinkData {
  refs: RefData[];
  from: Segment[];
  where: string | null;
}

export interface AggData {
  kind: "count_star" | "count" | "sum" | "avg";
  arg: string | null;
  /**
   * Hidden columns: non-null count (sum, avg, and count inside an expression) and running sum (avg, and sum inside
   * an expression).
   */
  nn: string | null;
  sum: string | null;
  /** Inside an expression: the aggregate's own type, which its value from the hidden state is cast to. */
  type?: string;
}

export interface AlgebraicData {
  global: boolean;
  /**
   * For each output column: the group key it shows, the aggregate it is, or an expression over aggregates and
   * constants (`100.00 * sum(a) / sum(b)`): its text with each aggregate call a slot.
   */
  outputs: ({ group: number } | { agg: number } | { expr: (string | { agg: number })[] })[];
  aggs: AggData[];
}

export interface SourceData {
  relid: number;
  /** Quoted qualified table name. */
  table: string;
  /** Quoted qualified change buffer. */
  buffer: string;
  /** Quoted column names, in table order. */
  columns: string[];
  /** Quoted primary-key (or unique key) columns. */
  key: string[];
}

/**
 * A tree of set operations over the blocks (set_operations.ts): a leaf is a block's index. Absent or null when the
 * query is one block or a UNION ALL of blocks, each maintained on its own.
 */
export interface SetLeaf {
  leaf: number;
  /**
   * An output position whose expression in this branch already has the output's type: a refresh restricts the
   * branch by it with a plain `IN` (an index on the expression can serve), or null.
   */
  key: number | null;
  /** Aggregated branch: the table reference (index into the block's refs) the key reads alone, if any. */
  keyRef?: number;
}

export type SetNode = SetLeaf | {
  op: "union" | "intersect" | "except";
  all: boolean;
  left: SetNode;
  right: SetNode;
};

/** The `differential` field of a QueryPlan the planner produces. */
export interface DiffPlan {
  version: 1;
  sources: SourceData[];
  blocks: BlockData[];
  /** Quoted visible columns, then their types (for casts in generated SQL). */
  columns: string[];
  types: string[];
  /** Visible columns whose type has no equality operator: consolidated by their text form. */
  textCompared: boolean[];
  /** What a reader of the plan should know about its cost (e.g. "whole-table window: ..."); absent: none. */
  notes?: string[];
  /** Set operations other than UNION ALL: the whole tree is maintained by value (set_operations.ts). */
  setOperation?: SetNode | null;
}

/** The engine's row identity column on every differentially maintained stream table. */
export const ROW_ID = "__pgt_row_id";
/**
 * A hidden column holding the hash of a row's partition (the unit a partition recompute deletes and rewrites) where it
 * is not the row id itself; the plan lists it in `indexes`.
 */
export const PART = "__pgt_part";
/** The hidden per-group row count of an algebraic stream table. */
export const COUNT = "__pgt_count";

/** What a plan says about its cost where it degrades (a whole-table window, top-k, ...); [] when nothing. */
export function planNotes(plan: { differential: unknown }): string[] {
  return (plan.differential as DiffPlan | null)?.notes ?? [];
}

/** Every source (index into DiffPlan.sources) a block reads: its references, its subqueries', and touch-all ones. */
export function blockSources(block: BlockData): number[] {
  const p = block.partition;
  const all = [...block.refs, ...(p?.sublinks.flatMap((s) => s.refs) ?? []), ...(p?.oldWhere?.refs ?? [])]
    .map((r) => r.source);
  return [...new Set([...all, ...(p?.touchAll ?? [])])];
}

/** A construct the planner does not maintain differentially; the message names it. */
export class Unsupported extends Error {}

/** Refuses the query for differential maintenance, naming the construct. */
export function unsupported(reason: string): never {
  throw new Unsupported(reason);
}
