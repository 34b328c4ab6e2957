/**
 * Change capture (DESIGN.md section 6). Each source table gets statement-level AFTER triggers with transition
 * tables that append to one buffer per source, `pgtrickle_changes.changes_<relid>`, shared by every stream table
 * reading it: `xid` (the writing transaction, xid8), `action` ('I', 'D', 'T' for TRUNCATE) and the source's columns.
 * An UPDATE is a 'D' of the old row and an 'I' of the new one.
 *
 * `change_id` orders changes: one number per capturing statement (a sequence value taken once per trigger call, not
 * per row: that is most of capture's cost), and within a statement an UPDATE's 'D' sorts before its 'I'. Changes to
 * one key are ordered by (change_id, action): writers of the same row are serialised by its row lock, and a later
 * statement draws a later number.
 *
 * The delta of a refresh with snapshot S since frontier F is the buffer rows visible in S whose xid is not visible
 * in F (`deltaFilter`). Buffers are pruned below the oldest frontier xmin of every consumer, so they hold about the
 * changes since the slowest reader's last refresh. They have no index: reading one is a sequential scan of that
 * much, while an index would cost every captured row (a btree on xid made a 100k-row UPDATE 2.3 times slower than
 * untracked, a BRIN 2.1 times; without index it is 1.6 times; see `deno task bench`).
 */
import type { Tx } from "../db/pool.ts";
import { quoteIdent, quoteLiteral } from "../db/identifiers.ts";
import type { Column, SourceRef } from "./refresh/plan.ts";

/** Advisory lock class for capture installation on one source (arbitrary, fixed). */
const CAPTURE_LOCK = 7_417_002;

/**
 * The SQL condition selecting a buffer's rows not visible in the frontier bound to `param` (a pg_snapshot): the
 * delta, as seen by the reading transaction's snapshot.
 */
export function deltaFilter(param = "$1"): string {
  return `xid >= pg_snapshot_xmin(${param}::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, ${param}::pg_snapshot)`;
}

/** A table's name as the server renders regclass: schema-qualified where needed, quoted where needed. */
export async function tableName(tx: Tx, relid: number): Promise<string> {
  const [row] = await tx<{ q: string }[]>`SELECT ${relid}::oid::regclass::text AS q`;
  return row!.q;
}

/** Fully qualified, quoted name of a source's change buffer. */
export function bufferName(relid: number): string {
  return `pgtrickle_changes.${quoteIdent(`changes_${relid}`)}`;
}

/**
 * Installs change capture on `source` unless it is there already (then only columns added to the source since are
 * added to the buffer). Must run in its own committed transaction before the first refresh reads the source:
 * CREATE TRIGGER waits for writers in flight, so every change committed after that refresh's snapshot is in the
 * buffer. A guard view over the captured columns makes PostgreSQL refuse to drop the source, or drop or retype a
 * captured column, while capture is installed (DROP ... CASCADE drops the guard; the stream tables then fail loudly).
 */
export async function installCapture(tx: Tx, source: SourceRef): Promise<boolean> {
  await tx`SELECT pg_advisory_xact_lock(${CAPTURE_LOCK}, ${source.relid}::int4)`;
  const [existing] = await tx<{ columns: Column[] }[]>`
    SELECT columns FROM pgtrickle.pgt_change_buffers WHERE source_relid = ${source.relid}`;
  const buffer = bufferName(source.relid);
  const table = `${quoteIdent(source.schema)}.${quoteIdent(source.name)}`;
  let columns = source.columns;
  // Everything below is built from catalog names and types, each quoted; nothing comes from a request.
  if (existing !== undefined) {
    const known = new Set(existing.columns.map((c) => c.name));
    const added = source.columns.filter((c) => !known.has(c.name));
    if (added.length === 0) return false;
    columns = [...existing.columns, ...added];
    await tx.unsafe(added.map((c) => `ALTER TABLE ${buffer} ADD COLUMN ${quoteIdent(c.name)} ${c.type};`).join("\n"));
    await tx`UPDATE pgtrickle.pgt_change_buffers SET columns = ${tx.json(columns as never)}
      WHERE source_relid = ${source.relid}`;
  } else {
    const colDefs = columns.map((c) => `,\n      ${quoteIdent(c.name)} ${c.type}`).join("");
    await tx.unsafe(`
      CREATE TABLE ${buffer} (
        change_id bigint NOT NULL,
        xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        action char(1) NOT NULL${colDefs}
      ) WITH (autovacuum_vacuum_scale_factor = 0.01);
      CREATE SEQUENCE ${sequenceName(source.relid)} OWNED BY ${buffer}.change_id;`);
    await tx`INSERT INTO pgtrickle.pgt_change_buffers (source_relid, source_schema, source_name, columns)
      VALUES (${source.relid}, ${source.schema}, ${source.name}, ${tx.json(columns as never)})`;
  }
  const fn = captureFunction(source.relid);
  const list = columns.map((c) => quoteIdent(c.name)).join(", ");
  const into = `INSERT INTO ${buffer} (change_id, action${list === "" ? "" : ", " + list})`;
  const from = (action: string, rows: string) =>
    `SELECT stmt, ${quoteLiteral(action)}${list === "" ? "" : ", " + list} FROM ${rows}`;
  await tx.unsafe(`
    CREATE OR REPLACE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $body$
    DECLARE
      stmt bigint := nextval(${quoteLiteral(sequenceName(source.relid))});
    BEGIN
      IF TG_OP = 'INSERT' THEN
        ${into} ${from("I", "pgt_new")};
      ELSIF TG_OP = 'UPDATE' THEN
        ${into} ${from("D", "pgt_old")} UNION ALL ${from("I", "pgt_new")};
      ELSIF TG_OP = 'DELETE' THEN
        ${into} ${from("D", "pgt_old")};
      ELSE
        INSERT INTO ${buffer} (change_id, action) VALUES (stmt, 'T');
      END IF;
      RETURN NULL;
    END
    $body$;
    CREATE OR REPLACE VIEW ${guardView(source.relid)} AS SELECT ${list === "" ? "1 AS none" : list} FROM ${table};`);
  if (existing === undefined) {
    await tx.unsafe(`
      CREATE TRIGGER pgt_capture_ins AFTER INSERT ON ${table}
        REFERENCING NEW TABLE AS pgt_new FOR EACH STATEMENT EXECUTE FUNCTION ${fn}();
      CREATE TRIGGER pgt_capture_upd AFTER UPDATE ON ${table}
        REFERENCING OLD TABLE AS pgt_old NEW TABLE AS pgt_new FOR EACH STATEMENT EXECUTE FUNCTION ${fn}();
      CREATE TRIGGER pgt_capture_del AFTER DELETE ON ${table}
        REFERENCING OLD TABLE AS pgt_old FOR EACH STATEMENT EXECUTE FUNCTION ${fn}();
      CREATE TRIGGER pgt_capture_trunc AFTER TRUNCATE ON ${table}
        FOR EACH STATEMENT EXECUTE FUNCTION ${fn}();`);
  }
  return true;
}

function captureFunction(relid: number): string {
  return `pgtrickle_changes.${quoteIdent(`capture_${relid}`)}`;
}

function sequenceName(relid: number): string {
  return `pgtrickle_changes.${quoteIdent(`changes_${relid}_seq`)}`;
}

function guardView(relid: number): string {
  return `pgtrickle_changes.${quoteIdent(`guard_${relid}`)}`;
}

/** Removes capture from a source that no stream table reads any more (the source itself may be gone). */
export async function removeCaptureIfUnused(tx: Tx, relid: number): Promise<boolean> {
  await tx`SELECT pg_advisory_xact_lock(${CAPTURE_LOCK}, ${relid}::int4)`;
  const [used] = await tx`SELECT 1 FROM pgtrickle.pgt_dependencies WHERE source_relid = ${relid} LIMIT 1`;
  if (used !== undefined) return false;
  const [buf] = await tx<{ schema: string; name: string }[]>`
    SELECT source_schema AS schema, source_name AS name FROM pgtrickle.pgt_change_buffers WHERE source_relid = ${relid}`;
  if (buf === undefined) return false;
  const [rel] = await tx`SELECT 1 FROM pg_class WHERE oid = ${relid}`;
  const fn = captureFunction(relid);
  if (rel !== undefined) {
    const table = await tableName(tx, relid);
    await tx.unsafe(`
      DROP TRIGGER IF EXISTS pgt_capture_ins ON ${table};
      DROP TRIGGER IF EXISTS pgt_capture_upd ON ${table};
      DROP TRIGGER IF EXISTS pgt_capture_del ON ${table};
      DROP TRIGGER IF EXISTS pgt_capture_trunc ON ${table};`);
  }
  await tx.unsafe(`DROP VIEW IF EXISTS ${guardView(relid)};
    DROP FUNCTION IF EXISTS ${fn}() CASCADE;
    DROP TABLE IF EXISTS ${bufferName(relid)};`);
  await tx`DELETE FROM pgtrickle.pgt_change_buffers WHERE source_relid = ${relid}`;
  return true;
}

export interface DeltaStats {
  rows: number;
  truncated: boolean;
}

/** Counts the delta of one source since `frontier`, as seen by the transaction's snapshot. */
export async function deltaStats(tx: Tx, relid: number, frontier: string): Promise<DeltaStats> {
  // bufferName is built from an integer oid and quoted.
  const [row] = await tx.unsafe<{ rows: number; truncated: boolean }[]>(
    `SELECT count(*)::int8 AS rows, coalesce(bool_or(action = 'T'), false) AS truncated FROM ${bufferName(relid)}
     WHERE ${deltaFilter("$1")}`,
    [frontier],
  );
  return { rows: Number(row!.rows), truncated: row!.truncated };
}

/**
 * Deletes buffer rows no consumer needs: those whose transaction is visible in the frontier of every stream table
 * reading the source (a later frontier sees all an earlier one does, so no delta will ever contain them again).
 * A consumer without a frontier yet pins everything. Returns the rows deleted.
 */
export async function pruneBuffer(tx: Tx, relid: number): Promise<number> {
  const [row] = await tx<{ frontiers: string[] | null; pinned: boolean }[]>`
    SELECT array_agg(s.frontier::text) AS frontiers, bool_or(s.frontier IS NULL) AS pinned
    FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables s USING (pgt_id)
    WHERE d.source_relid = ${relid}`;
  if (row === undefined || row.frontiers === null || row.pinned) return 0;
  // Below the smallest xmin, visibility is certain; between it and the smallest xmax, each frontier is asked.
  const result = await tx.unsafe(
    `DELETE FROM ${bufferName(relid)}
     WHERE xid < (SELECT min(pg_snapshot_xmax(f::pg_snapshot)) FROM unnest($1::text[]) f)
       AND (xid < (SELECT min(pg_snapshot_xmin(f::pg_snapshot)) FROM unnest($1::text[]) f)
         OR (SELECT bool_and(pg_visible_in_snapshot(xid, f::pg_snapshot)) FROM unnest($1::text[]) f))`,
    [row.frontiers],
  );
  return result.count;
}
