/**
 * The contract between query analysis, the FULL refresh and the differential engine.
 *
 * `describeQuery` (engine/query.ts) asks PostgreSQL what a defining query reads and returns; the differential
 * planner (engine/refresh/differential/) turns that into a `QueryPlan`. A plan is JSON and is stored in the catalog
 * (`pgt_stream_tables.plan`), so a refresh never re-parses the query. These types sit at the engine's top level so
 * every layer (catalog, change capture, refresh) uses them without importing from the refresh engine.
 */

/** A column as PostgreSQL reports it: name and type as `format_type` prints it. */
export interface Column {
  name: string;
  type: string;
}

/** A table that a defining query reads. */
export interface SourceRef {
  relid: number;
  schema: string;
  name: string;
  /** Primary-key columns, in key order; empty when the table has none. */
  primaryKey: string[];
  columns: Column[];
  /** The change buffer, always in schema `pgtrickle_changes`: `changes_<relid>`. */
  bufferTable: string;
  /** The pgt_id when the source is itself a stream table. */
  streamTableId: number | null;
}

/** What PostgreSQL says about a defining query (engine/query.ts). */
export interface QueryDescription {
  columns: Column[];
  sources: SourceRef[];
  /** The query's parse tree (libpg-query's SelectStmt): planning reads it rather than parse the query again. */
  tree: Record<string, unknown>;
}

/** How a stream table is stored and refreshed. */
export interface QueryPlan {
  /** Null when the query is maintained differentially; else which construct prevents it. */
  unsupportedReason: string | null;
  /** User-visible output columns, in query order. */
  columns: Column[];
  /** Columns the engine keeps beside them (`__pgt_row_id`, counts, partial sums). */
  hiddenColumns: Column[];
  /** Index definitions (column lists) to create on the storage table, e.g. `["__pgt_row_id"]` as unique. */
  uniqueKey: string[] | null;
  /** Further (non-unique) indexes on the storage table, as column lists, e.g. `[["__pgt_part"]]`; absent: none. */
  indexes?: string[][];
  /** A SELECT yielding the full content: visible columns then hidden ones, in the order above. */
  fullSelect: string;
  /** Engine data for the differential refresh; null for FULL-only plans. */
  differential: unknown;
}
