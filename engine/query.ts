/**
 * What a defining query reads and returns, asked of PostgreSQL itself: the query is parsed by PostgreSQL's parser
 * (libpg-query) to be sure it is one SELECT, then defined as a temporary view inside a rolled-back transaction, so
 * the server resolves every name, reports errors with their position, and records the tables it depends on.
 */
import { parse } from "libpg-query";
import type { Sql, Tx } from "../db/pool.ts";
import { isConnectionError, isPgError } from "../db/errors.ts";
import { invalidQuery } from "./errors.ts";
import type { Column, QueryDescription, SourceRef } from "./plan.ts";
import { inRolledBackTransaction } from "./rolled_back.ts";

const PROBE_PREFIX = "CREATE TEMPORARY VIEW pgt_probe AS ";

/** Checks that `query` is exactly one SELECT (no INTO); returns its parse tree. */
export async function parseSelect(query: string): Promise<Record<string, unknown>> {
  let tree;
  try {
    tree = await parse(query);
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    const position = (e as { sqlDetails?: { cursorPosition?: number } }).sqlDetails?.cursorPosition;
    throw invalidQuery(`The defining query is not valid SQL: ${message}`, {
      ...(position === undefined ? {} : { position: position + 1 }),
    });
  }
  const stmts = tree.stmts ?? [];
  if (stmts.length !== 1) {
    throw invalidQuery(`The defining query must be exactly one SELECT statement; found ${stmts.length} statements`);
  }
  const stmt = stmts[0]!.stmt as Record<string, unknown> | undefined;
  const select = stmt?.["SelectStmt"] as Record<string, unknown> | undefined;
  if (select === undefined) {
    throw invalidQuery(`The defining query must be a SELECT; found ${Object.keys(stmt ?? {})[0] ?? "nothing"}`);
  }
  if (select["intoClause"] !== undefined) throw invalidQuery("The defining query must not use SELECT ... INTO");
  if (select["lockingClause"] !== undefined) {
    throw invalidQuery(
      "The defining query must not lock rows (FOR UPDATE / FOR SHARE): every refresh would block writers",
    );
  }
  return select;
}

/**
 * Asks PostgreSQL for the query's output columns and source tables, and returns them with the query's parse tree;
 * throws InvalidQuery with the server's words.
 */
export async function describeQuery(sql: Sql | Tx, query: string): Promise<QueryDescription> {
  const tree = await parseSelect(query);
  // The view is created in a transaction rolled back once it is described (engine/rolled_back.ts).
  return await inRolledBackTransaction(sql, async (tx) => {
    try {
      // The query is SQL by design (creating a stream table needs the admin token); it was checked above to be a
      // single SELECT, and the extended protocol (simple: false) refuses a second statement in any case.
      await tx.unsafe(PROBE_PREFIX + query, [], { simple: false } as never);
    } catch (e) {
      if (isPgError(e) && !isConnectionError(e)) {
        const position = e.position === undefined ? undefined : Number(e.position) - PROBE_PREFIX.length;
        throw invalidQuery(`The defining query is not valid: ${e.message}`, {
          sqlstate: e.code,
          ...(position !== undefined && position > 0 ? { position } : {}),
        });
      }
      throw e;
    }
    // Catalogs are named with their schema: a temporary table would shadow an unqualified pg_class.
    const columns = await tx<Column[]>`
      SELECT attname AS name, pg_catalog.format_type(atttypid, atttypmod) AS type
      FROM pg_catalog.pg_attribute WHERE attrelid = 'pg_temp.pgt_probe'::pg_catalog.regclass AND attnum > 0
      ORDER BY attnum`;
    for (const c of columns) {
      if (c.name === "?column?") {
        throw invalidQuery("Every output column of the defining query needs a name: add an alias (expr AS name)");
      }
      if (c.name.startsWith("__pgt_")) {
        throw invalidQuery(`Output column "${c.name}": names starting with "__pgt_" are reserved for trickle`);
      }
    }
    await refuseSystemCatalogs(tx, tree);
    const rels = await tx<{ relid: number; schema: string; name: string; relkind: string }[]>`
      SELECT DISTINCT c.oid::int8 AS relid, n.nspname AS schema, c.relname AS name, c.relkind::text AS relkind
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
      JOIN pg_catalog.pg_class c ON c.oid = d.refobjid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE r.ev_class = 'pg_temp.pgt_probe'::pg_catalog.regclass
        AND c.oid <> 'pg_temp.pgt_probe'::pg_catalog.regclass
      ORDER BY 2, 3`;
    const sources: SourceRef[] = [];
    for (const rel of rels) {
      const qualified = `${rel.schema}.${rel.name}`;
      if (rel.relkind !== "r" && rel.relkind !== "p") {
        const kind = { v: "a view", m: "a materialized view", f: "a foreign table", S: "a sequence" }[rel.relkind] ??
          `a relation of kind "${rel.relkind}"`;
        throw invalidQuery(`The defining query reads "${qualified}", which is ${kind}; stream tables read tables`);
      }
      if (["pg_catalog", "information_schema", "pgtrickle", "pgtrickle_changes"].includes(rel.schema)) {
        throw invalidQuery(`The defining query reads "${qualified}": system and trickle tables cannot be sources`);
      }
      if (rel.schema.startsWith("pg_temp")) {
        throw invalidQuery(`The defining query reads the temporary table "${rel.name}"`);
      }
      sources.push(await describeSource(tx, rel));
    }
    if (sources.length === 0) throw invalidQuery("The defining query reads no table; a stream table needs a source");
    return { columns: [...columns], sources, tree };
  });
}

/**
 * Refuses a query that reads a system catalog (pg_class, information_schema...): catalog changes are not captured.
 * pg_depend does not record dependencies on pinned catalog objects, so the names in the parse tree are resolved
 * instead (PostgreSQL's rules: an unqualified name is a WITH query's when one of that name is in the query).
 */
async function refuseSystemCatalogs(tx: Tx, tree: Record<string, unknown>): Promise<void> {
  const refs: { schema: string; name: string }[] = [];
  const ctes = new Set<string>();
  const visit = (node: unknown): void => {
    if (Array.isArray(node)) return node.forEach(visit);
    if (node === null || typeof node !== "object") return;
    for (const [k, v] of Object.entries(node as Record<string, unknown>)) {
      const n = v as Record<string, unknown>;
      if (k === "RangeVar") refs.push({ schema: String(n["schemaname"] ?? ""), name: String(n["relname"]) });
      if (k === "CommonTableExpr") ctes.add(String(n["ctename"]));
      visit(v);
    }
  };
  visit(tree);
  const names = refs.filter((r) => r.schema !== "" || !ctes.has(r.name));
  if (names.length === 0) return;
  const [hit] = await tx<{ name: string }[]>`
    SELECT n.nspname || '.' || c.relname AS name
    FROM unnest(${names.map((r) => r.schema)}::text[], ${names.map((r) => r.name)}::text[]) AS q(schema, name)
    JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(CASE WHEN q.schema = '' THEN
      pg_catalog.quote_ident(q.name) ELSE pg_catalog.quote_ident(q.schema) || '.' || pg_catalog.quote_ident(q.name) END)
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname IN ('pg_catalog', 'information_schema', 'pg_toast')
    LIMIT 1`;
  if (hit !== undefined) {
    throw invalidQuery(
      `The defining query reads the system catalog "${hit.name}"; system catalogs cannot be sources ` +
        `(their changes are not captured)`,
    );
  }
}

/** Columns, primary key and (when it is one) stream table id of a source table. */
export async function describeSource(
  sql: Sql | Tx,
  rel: { relid: number; schema: string; name: string },
): Promise<SourceRef> {
  const columns = await sql<Column[]>`
    SELECT attname AS name, pg_catalog.format_type(atttypid, atttypmod) AS type FROM pg_catalog.pg_attribute
    WHERE attrelid = ${rel.relid} AND attnum > 0 AND NOT attisdropped ORDER BY attnum`;
  const pk = await sql<{ name: string }[]>`
    SELECT a.attname AS name FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = ${rel.relid} AND i.indisprimary ORDER BY k.ord`;
  const [st] = await sql<{ pgt_id: number; unique_key: string[] | null }[]>`
    SELECT pgt_id, (SELECT array_agg(k) FROM jsonb_array_elements_text(
      -- A FULL-only stream table has no unique key (JSON null): it is then a source without a key.
      CASE WHEN jsonb_typeof(plan->'uniqueKey') = 'array' THEN plan->'uniqueKey' END) k) AS unique_key
    FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = ${rel.relid}`;
  return {
    relid: rel.relid,
    schema: rel.schema,
    name: rel.name,
    // A stream table has no primary key; its engine-maintained unique key plays that part.
    primaryKey: st !== undefined ? (st.unique_key ?? []) : pk.map((r) => r.name),
    columns: [...columns],
    bufferTable: `changes_${rel.relid}`,
    streamTableId: st?.pgt_id ?? null,
  };
}
