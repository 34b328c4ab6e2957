/**
 * Set operations (UNION, INTERSECT, EXCEPT, their ALL forms, and any tree of them with UNION ALL), maintained by
 * value: whether and how often a row value r appears in the result depends only on how often r appears in each
 * branch. A refresh finds the values the delta touches (each branch's changed rows projected to the output, old and
 * new; for an aggregated branch the old and new output rows of the groups the delta touches), recomputes the set
 * operation with every branch restricted to those values (`hash(row) IN (touched)`: exact, since equal rows hash
 * equally and a colliding untouched value is recomputed to what it already is), deletes the stored rows of touched
 * values that are no longer in the result and writes the rest.
 *
 * Storage: when the top operation removes duplicates (UNION, INTERSECT, EXCEPT) each value appears once and its row
 * id is `hash(row)`. Otherwise (UNION ALL, INTERSECT ALL, EXCEPT ALL at the top) a value may appear n times: the
 * i-th copy's row id is `hash(row, i)`, and the hidden, indexed `__pgt_part` column holds `hash(row)`, which the
 * refresh deletes by.
 */
import { quoteIdent } from "../../../db/identifiers.ts";
import type { Sql, Tx } from "../../../db/pool.ts";
import { inRolledBackTransaction } from "../../rolled_back.ts";
import type { Column } from "../../plan.ts";
import { cast, COUNTS, type Deltas, deltaTerms, fromWhere, groupRowId, oldFrom, plainFrom } from "./delta_sql.ts";
import { type BlockData, type DiffPlan, PART, ROW_ID, type SetLeaf, type SetNode, unsupported } from "./diff_plan.ts";
import { child, list, names, type Node } from "./query_reading.ts";

const OPS: Record<string, "union" | "intersect" | "except"> = {
  SETOP_UNION: "union",
  SETOP_INTERSECT: "intersect",
  SETOP_EXCEPT: "except",
};

/**
 * The simple SELECTs of a set-operation tree, in text order, and the tree over them; the tree is null when every
 * operation is UNION ALL (each branch is then maintained as its own block). `checkSide` refuses what a branch may
 * not carry (LIMIT, FOR UPDATE, WITH).
 */
export function readSetOperations(
  stmt: Node,
  checkSide: (side: Node) => void,
): { leaves: Node[]; tree: SetNode | null } {
  const leaves: Node[] = [];
  let onlyUnionAll = true;
  const read = (node: Node): SetNode => {
    const op = node["op"];
    if (op === undefined || op === "SETOP_NONE") {
      leaves.push(node);
      return { leaf: leaves.length - 1, key: null };
    }
    const kind = OPS[String(op)];
    if (kind === undefined) unsupported(`query shape not recognised (set operation ${String(op)})`);
    const all = node["all"] === true;
    if (kind !== "union" || !all) onlyUnionAll = false;
    const larg = child(node, "larg")!;
    const rarg = child(node, "rarg")!;
    for (const side of [larg, rarg]) checkSide(side);
    return { op: kind, all, left: read(larg), right: read(rarg) };
  };
  const tree = read(stmt);
  return { leaves, tree: onlyUnionAll ? null : tree };
}

/**
 * Chooses each branch's key: the first output whose expression there already has the output's type (so comparing it
 * with a touched value's column needs no cast) and, in an aggregated branch, is a group key (so it can restrict the
 * rows before grouping without splitting a group).
 */
export async function chooseBranchKeys(sql: Sql | Tx, input: { plan: DiffPlan; leafNodes: Node[] }): Promise<void> {
  const { plan, leafNodes } = input;
  const leaves = leavesOf(plan.setOperation!);
  try {
    // Rolled back and isolated like the plan-time probe: a failing statement must not end the caller's transaction.
    await inRolledBackTransaction(sql, async (tx) => {
      for (const leaf of leaves) {
        const block = plan.blocks[leaf.leaf]!;
        leaf.key = await branchKey(tx, plan, { block, node: leafNodes[leaf.leaf]! });
        if (leaf.key !== null && aggregated(block)) {
          const home = await keyHome(tx, plan, { block, key: leaf.key });
          if (home !== null) leaf.keyRef = home;
        }
      }
    });
  } catch (e) {
    unsupported(`query shape not recognised (${e instanceof Error ? e.message : String(e)})`);
  }
}

async function branchKey(tx: Tx, plan: DiffPlan, args: { block: BlockData; node: Node }): Promise<number | null> {
  const { block, node } = args;
  const candidates = block.targets.flatMap((t, i) =>
    !aggregated(block) || (block.groupBy !== null && block.groupKeys.includes(t)) ? [i] : []
  );
  if (candidates.length === 0) return null;
  // pg_typeof of a NULL still names its type: the outer join yields one row even though the branch reads none.
  // Generated from the plan: the defining query's own clauses (SQL by design); the types are parameters.
  const [row] = await tx.unsafe<{ same: boolean[] }[]>(
    `SELECT ARRAY[${
      candidates.map((i, n) => `pg_catalog.pg_typeof(s."c${i}") = pg_catalog.to_regtype($${n + 1})`).join(", ")
    }] AS same FROM (SELECT 1) one LEFT JOIN (SELECT ${
      candidates.map((i) => `${block.targets[i]} AS "c${i}"`).join(", ")
    } ${fromWhere(plainFrom(block, plan), "false")}) s ON true`,
    candidates.map((i) => plan.types[i]!),
  );
  const typed = candidates.filter((_, n) => row!.same[n]);
  for (const i of typed) if (await indexedColumn(tx, plan, { block, node, output: i })) return i;
  return typed[0] ?? null;
}

/**
 * True when output `output` of a branch is a plain column (by the parse tree) of one of its references whose table
 * has an index leading with that column: the key PostgreSQL can look touched values up by.
 */
async function indexedColumn(
  tx: Tx,
  plan: DiffPlan,
  args: { block: BlockData; node: Node; output: number },
): Promise<boolean> {
  const { block, node, output } = args;
  const targetList = list(node, "targetList");
  // An expanded * shifts positions: its outputs are not matched to the parse tree.
  if (targetList.length !== block.targets.length) return false;
  const columnRef = child(child(child(targetList[output], "ResTarget"), "val"), "ColumnRef");
  const parts = names(list(columnRef, "fields"));
  if (parts.length === 0 || parts.length > 2 || parts.includes("")) return false;
  const column = parts.at(-1)!;
  const relation = parts.length === 2 ? quoteIdent(parts[0]!) : null;
  for (const r of block.refs) {
    if (relation !== null && r.exposed !== relation) continue;
    const src = plan.sources[r.source]!;
    // The column must be this reference's own, under its table's name for it (no column aliases in between).
    // Generated from the plan: quoted names only; failing is an answer.
    const resolves = await tx.savepoint((sp) =>
      sp.unsafe(`SELECT ${quoteIdent(column)} FROM ${src.table} AS ${r.exposed} WHERE false`)
    ).then(() => true, () => false);
    if (!resolves) continue;
    const [hit] = await tx<{ indexed: boolean }[]>`
      SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = ${src.relid}::oid AND a.attname = ${column}) AS indexed`;
    return hit!.indexed;
  }
  return false;
}

/**
 * The table reference an aggregated branch's key reads alone, if any: its expression compiles over that reference's
 * table under the reference's name. The key's restriction can then go inside that reference's state at the frontier,
 * where an index on it can serve (a semi-join above the state's UNION ALL would read it whole).
 */
async function keyHome(tx: Tx, plan: DiffPlan, args: { block: BlockData; key: number }): Promise<number | null> {
  const { block, key } = args;
  for (const [i, r] of block.refs.entries()) {
    const src = plan.sources[r.source]!;
    // Generated from the plan: the defining query's own expression and quoted catalog names; failing is an answer.
    const compiles = await tx.savepoint((sp) =>
      sp.unsafe(`SELECT (${block.targets[key]}) FROM ${src.table} AS ${r.exposed} WHERE false`)
    ).then(() => true, () => false);
    if (compiles) return i;
  }
  return null;
}

/** The tree's leaves, left to right. */
function leavesOf(node: SetNode): SetLeaf[] {
  return "leaf" in node ? [node] : [...leavesOf(node.left), ...leavesOf(node.right)];
}

/** True when the result may hold a value more than once (the top operation is an ALL form). */
function multiset(tree: SetNode): boolean {
  return "op" in tree && tree.all;
}

/** The hidden columns of a set operation's storage: the row id, and for a multiset the value's hash. */
export function setOperationHiddenColumns(tree: SetNode): Column[] {
  const hidden: Column[] = [{ name: ROW_ID, type: "bigint" }];
  if (multiset(tree)) hidden.push({ name: PART, type: "bigint" });
  return hidden;
}

/** Further indexes: the value's hash, which a refresh deletes by (a set's row id is that hash already). */
export function setOperationIndexes(tree: SetNode): string[][] {
  return multiset(tree) ? [[PART]] : [];
}

/** The SELECT computing the whole content: visible columns, row id, then `__pgt_part` for a multiset. */
export function setOperationFullSelect(plan: DiffPlan): string {
  return withIdentity(plan, setOperationSql(plan, plan.setOperation!, null));
}

/** The SELECTs the write statement runs (the plan-time probe EXPLAINs them). */
export function setOperationChangeQueries(plan: DiffPlan, deltas: Deltas): string[] {
  const k = touchedValues(plan, deltas);
  return [k, withIdentity(plan, setOperationSql(plan, plan.setOperation!, `(${k})`))];
}

/** One statement: find the touched values, recompute them, delete the stored rows gone, write the ones that came. */
export function setOperationWriteStatement(plan: DiffPlan, input: { target: string; deltas: Deltas }): string {
  const { target, deltas } = input;
  const cols = plan.columns.map((_, i) => `"c${i}"`);
  const mine = plan.columns.map((c) => `st.${c}`);
  const theirs = plan.columns.map((c) => `EXCLUDED.${c}`);
  const many = multiset(plan.setOperation!);
  const part = many ? quoteIdent(PART) : ROW_ID;
  const written = [...plan.columns, ROW_ID, ...(many ? [quoteIdent(PART)] : [])];
  return `WITH k AS MATERIALIZED (${touchedValues(plan, deltas)}),
    n AS MATERIALIZED (${withIdentity(plan, setOperationSql(plan, plan.setOperation!, "k"))}),
    del AS (
      DELETE FROM ${target} st WHERE st.${part} IN (SELECT h FROM k)
        AND NOT EXISTS (SELECT 1 FROM n WHERE n.rid = st.${ROW_ID})
      RETURNING 1),
    up AS (
      INSERT INTO ${target} AS st (${written.join(", ")})
      SELECT ${[...cols, "rid", ...(many ? ["part"] : [])].join(", ")} FROM n
      ON CONFLICT (${ROW_ID}) DO UPDATE SET ${plan.columns.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}
      WHERE ROW(${mine.join(", ")})::text IS DISTINCT FROM ROW(${theirs.join(", ")})::text
      RETURNING (xmax = 0) AS fresh)
    ${COUNTS}`;
}

/** The hash of an output row given its columns' expressions (already cast to the output types). */
function valueHash(exprs: string[]): string {
  return `pg_catalog.hash_record_extended(ROW(${exprs.join(", ")}), 0)`;
}

/** Adds the row id (and for a multiset the value hash and occurrence number) to a result over "c0".."cn". */
function withIdentity(plan: DiffPlan, body: string): string {
  const cols = plan.columns.map((_, i) => `"c${i}"`);
  if (!multiset(plan.setOperation!)) return `SELECT ${cols.join(", ")}, ${valueHash(cols)} AS rid FROM (${body}) s`;
  // The i-th copy of a value: its row id hashes the value with i, so copies and values never share one.
  const occurrence = `pg_catalog.row_number() OVER (PARTITION BY ${cols.join(", ")})`;
  return `SELECT ${cols.join(", ")}, ${valueHash([...cols, "o"])} AS rid, ${valueHash(cols)} AS part ` +
    `FROM (SELECT ${cols.join(", ")}, ${occurrence} AS o FROM (${body}) s0) s`;
}

/** The set operation over "c0".."cn", each branch restricted to the values `touched` lists (null: all of them). */
function setOperationSql(plan: DiffPlan, node: SetNode, touched: string | null): string {
  if ("leaf" in node) return branchSql(plan, node, touched);
  const op = `${node.op.toUpperCase()}${node.all ? " ALL" : ""}`;
  return `(${setOperationSql(plan, node.left, touched)})\n${op}\n(${setOperationSql(plan, node.right, touched)})`;
}

/** True when a branch aggregates (GROUP BY, HAVING, aggregates): its output rows are not its source rows. */
function aggregated(block: BlockData): boolean {
  return block.strategy !== "rows" && !block.distinct;
}

function outputs(plan: DiffPlan, block: BlockData): string[] {
  return block.targets.map((t, i) => cast(plan, i, t));
}

function grouping(block: BlockData): string {
  return (block.groupBy !== null ? ` GROUP BY ${block.groupBy}` : "") +
    (block.having !== null ? ` HAVING ${block.having}` : "");
}

/**
 * One branch's rows as "c0".."cn", restricted to the touched values unless `touched` is null. With a key column,
 * the branch is read in two parts, its key among the touched values' (`IN`: an index on the key's expression can
 * serve) and its key NULL (read only when a touched value has a NULL there); the parts are disjoint in that column,
 * so DISTINCT and groups stay whole.
 */
function branchSql(plan: DiffPlan, leaf: SetLeaf, touched: string | null): string {
  const block = plan.blocks[leaf.leaf]!;
  const outs = outputs(plan, block);
  const select = `SELECT ${block.distinct ? "DISTINCT " : ""}${outs.map((o, i) => `${o} AS "c${i}"`).join(", ")}`;
  const from = plainFrom(block, plan);
  if (touched === null) return `${select} ${fromWhere(from, block.where)}${grouping(block)}`;
  const hashed = (exprs: string[]) => `${valueHash(exprs)} IN (SELECT h FROM ${touched} t)`;
  const parts = leaf.key === null ? [null] : [
    `(${block.targets[leaf.key]}) IN (SELECT t."c${leaf.key}" FROM ${touched} t)`,
    `(${block.targets[leaf.key]}) IS NULL AND EXISTS (SELECT FROM ${touched} t WHERE t."c${leaf.key}" IS NULL)`,
  ];
  const cols = plan.columns.map((_, i) => `g."c${i}"`);
  return parts.map((part) => {
    if (!aggregated(block)) {
      return `${select} ${fromWhere(from, block.where, [part, hashed(outs)].filter((c) => c !== null).join(" AND "))}`;
    }
    // An aggregate's value exists only after grouping: the groups are filtered by their output.
    return `SELECT ${cols.join(", ")} FROM (${select} ${fromWhere(from, block.where, part)}${grouping(block)}) g ` +
      `WHERE ${hashed(cols)}`;
  }).map((q) => `(${q})`).join("\nUNION ALL\n");
}

/** The values the delta touches, over every branch: their hash `h` and columns "c0".."cn", each value once. */
function touchedValues(plan: DiffPlan, deltas: Deltas): string {
  const cols = plan.columns.map((_, i) => `"c${i}"`);
  const leaves = new Map(leavesOf(plan.setOperation!).map((l) => [l.leaf, l]));
  const terms = plan.blocks.flatMap((block, b) => {
    const select = outputs(plan, block).map((o, i) => `${o} AS "c${i}"`).join(", ");
    if (!aggregated(block)) return deltaTerms(block, plan, deltas, () => select);
    if (!block.refs.some((r) => deltas.tables.has(r.source))) return [];
    // The groups the delta touches and their output rows before (at the frontier) and now. With a key (a group key),
    // the groups are those whose key the delta has, found through IN (an index can serve; groups sharing a key value
    // come along, recomputed to what they are); else by their row id, which scans the sources.
    const leaf = leaves.get(b)!;
    const group = (from: string, restrict: string | null) =>
      `SELECT ${select} ${fromWhere(from, block.where, restrict)}${grouping(block)}`;
    if (leaf.key === null) {
      const rid = groupRowId(block, block.groupKeys);
      const groups = deltaTerms(block, plan, deltas, () => `${rid} AS rid`).join("\nUNION ALL\n");
      const restrict = block.groupKeys.length === 0 ? null : `${rid} IN (SELECT rid FROM (${groups}) k)`;
      return [group(plainFrom(block, plan), restrict), group(oldFrom(block, plan, deltas), restrict)];
    }
    const e = `(${block.targets[leaf.key]})`;
    const values = `(${deltaTerms(block, plan, deltas, () => `${e} AS v`).join("\nUNION ALL\n")}) k`;
    return [`${e} IN (SELECT v FROM ${values})`, `${e} IS NULL AND EXISTS (SELECT FROM ${values} WHERE v IS NULL)`]
      .flatMap((restrict) => {
        const inner = (i: number) => (i === leaf.keyRef ? restrict : "");
        return [group(plainFrom(block, plan), restrict), group(oldFrom(block, plan, deltas, inner), restrict)];
      });
  });
  if (terms.length === 0) {
    return `SELECT NULL::int8 AS h, ${
      plan.types.map((t, i) => `CAST(NULL AS ${t}) AS "c${i}"`).join(", ")
    } WHERE false`;
  }
  return `SELECT ${valueHash(cols)} AS h, ${cols.join(", ")} FROM (SELECT DISTINCT ${cols.join(", ")} FROM (` +
    `${terms.join("\nUNION ALL\n")}) d) d`;
}
