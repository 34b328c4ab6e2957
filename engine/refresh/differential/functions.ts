/**
 * What the functions and operators of a defining query allow (docs/differential.md).
 *
 * A differential refresh evaluates expressions only for the changed rows; rows left alone keep what an earlier
 * refresh computed. So the stream table equals its query only if every expression gives the same value whenever
 * and wherever it is evaluated. The rule, judged from PostgreSQL's catalog (pg_proc.provolatile):
 *
 * - immutable functions and operators are maintained differentially;
 * - volatile ones never are (random(), clock_timestamp(), nextval(), set_config()...);
 * - stable ones are maintained only when they are in STABLE_BY_SETTINGS below: pg_catalog functions that are stable
 *   only because they read settings (TimeZone, DateStyle, lc_time, default_text_search_config...) or type output
 *   functions. Those settings do not change between refreshes: every refresh runs with the sessions' defaults
 *   (db/session.ts). Every other stable function makes the query FULL-only: now(), statement_timestamp(),
 *   current_setting(), current_schema(), pg_backend_pid(), txid_current(), age(x), to_regclass(), and every stable
 *   function outside pg_catalog (a user's STABLE function may read now() or another table);
 * - SQL-value functions (CURRENT_DATE, CURRENT_TIMESTAMP, LOCALTIME, CURRENT_USER, SESSION_USER, USER,
 *   CURRENT_ROLE, CURRENT_SCHEMA...; not function calls in the parse tree) are treated like now(), except
 *   CURRENT_CATALOG (the database's name); so are casts of the literals 'now', 'today', 'tomorrow', 'yesterday' to a
 *   date or time type, which PostgreSQL evaluates when the query is planned.
 *
 * A name is judged by every overload it could resolve to (conservative). A function declared IMMUTABLE that is not
 * is outside the rule, as it is for PostgreSQL's own indexes. Casts between types are not checked (their functions
 * are settings-dependent at most, apart from text to regclass and the like).
 */
import type { Sql, Tx } from "../../../db/pool.ts";
import { child, funcName, list, names, type Node, walk } from "./query_reading.ts";

/** What the functions a query calls allow; names are shown as `name()` or as the SQL keyword. */
export interface FunctionFacts {
  /** Keys (`schema.name`, schema empty when unqualified) of the names that are aggregates. */
  aggregates: Set<string>;
  volatile: Set<string>;
  /** Stable functions whose value may change between refreshes (time, transaction, session, catalog). */
  unstable: Set<string>;
  setReturning: Set<string>;
}

/** pg_catalog functions (and operators' functions) that are stable only through settings or output functions. */
const STABLE_BY_SETTINGS = [
  // Date and time arithmetic, conversion and formatting (TimeZone, DateStyle, IntervalStyle, lc_time).
  "date",
  "date_add",
  "date_subtract",
  "date_part",
  "extract",
  "date_trunc",
  "make_timestamptz",
  "time",
  "timetz",
  "timestamp",
  "timestamptz",
  "timezone",
  "to_char",
  "to_date",
  "to_number",
  "to_timestamp",
  "overlaps",
  "generate_series",
  "timestamptz_pl_interval",
  "timestamptz_mi_interval",
  "interval_pl_timestamptz",
  ...["eq", "ne", "lt", "le", "gt", "ge", "cmp"].flatMap((op) => [
    `date_${op}_timestamptz`,
    `timestamp_${op}_timestamptz`,
    `timestamptz_${op}_date`,
    `timestamptz_${op}_timestamp`,
  ]),
  "jsonb_path_exists_tz",
  "jsonb_path_match_tz",
  "jsonb_path_query_array_tz",
  "jsonb_path_query_first_tz",
  // Text and JSON built from values of any type (their output functions).
  "concat",
  "concat_ws",
  "format",
  "textanycat",
  "anytextcat",
  "array_to_string",
  "quote_literal",
  "quote_nullable",
  "to_json",
  "to_jsonb",
  "row_to_json",
  "array_to_json",
  "json_build_array",
  "json_build_object",
  "jsonb_build_array",
  "jsonb_build_object",
  "json_agg",
  "json_agg_strict",
  "jsonb_agg",
  "jsonb_agg_strict",
  "json_object_agg",
  "json_object_agg_strict",
  "json_object_agg_unique",
  "json_object_agg_unique_strict",
  // Text search with the default configuration (default_text_search_config).
  "to_tsvector",
  "to_tsquery",
  "plainto_tsquery",
  "phraseto_tsquery",
  "websearch_to_tsquery",
  "json_to_tsvector",
  "jsonb_to_tsvector",
  "ts_match_tt",
  "ts_match_tq",
  // Encodings (client_encoding), money (lc_monetary), and the connection's database, which never changes.
  "convert",
  "convert_from",
  "convert_to",
  "length",
  "money",
  "numeric",
  "current_database",
];

/** Literals a date/time input function reads as the current time. */
const TIME_LITERALS = new Set(["now", "today", "tomorrow", "yesterday"]);
const TIME_TYPES = new Set(["date", "time", "timetz", "timestamp", "timestamptz"]);

/** Looks up every function and operator the query names: aggregates, volatile, unstable and set-returning ones. */
export async function functionFacts(sql: Sql | Tx, stmt: Node): Promise<FunctionFacts> {
  const calls = new Map<string, { schema: string | null; name: string }>();
  const operators = new Set<string>();
  const facts: FunctionFacts = {
    aggregates: new Set(),
    volatile: new Set(),
    unstable: new Set(),
    setReturning: new Set(),
  };
  walk(stmt, (kind, node) => {
    if (kind === "FuncCall") {
      const f = funcName(node);
      calls.set(`${f.schema ?? ""}.${f.name}`, f);
    } else if (kind === "A_Expr") {
      const parts = names(list(node, "name"));
      if (parts.length > 0) operators.add(parts.at(-1)!);
    } else if (kind === "SQLValueFunction") {
      const op = String(node["op"]).replace(/^SVFOP_/, "").replace(/_N$/, "");
      if (op !== "CURRENT_CATALOG") facts.unstable.add(op);
    } else if (kind === "TypeCast") {
      const literal = child(child(child(node, "arg"), "A_Const"), "sval")?.["sval"];
      const type = names(list(child(node, "typeName"), "names")).at(-1) ?? "";
      if (typeof literal === "string" && TIME_LITERALS.has(literal.trim().toLowerCase()) && TIME_TYPES.has(type)) {
        facts.unstable.add(`'${literal}'::${type}`);
      }
    }
  });
  const callList = [...calls.values()];
  if (callList.length > 0) {
    // A name is judged by every overload it could resolve to (conservative for volatility): the catalog, not a list.
    const rows = await sql<{ key: string; kind: string; volatile: string; allowed: boolean; retset: boolean }[]>`
      SELECT k.key, p.prokind::text AS kind, p.provolatile::text AS volatile, p.proretset AS retset,
        n.nspname = 'pg_catalog' AND p.proname = ANY(${STABLE_BY_SETTINGS}::text[]) AS allowed
      FROM unnest(${callList.map((c) => c.schema ?? "")}::text[], ${callList.map((c) => c.name)}::text[])
        AS c(schema, name)
      CROSS JOIN LATERAL (SELECT c.schema || '.' || c.name) k(key)
      JOIN pg_catalog.pg_proc p ON p.proname = c.name
      JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
      WHERE (c.schema = '' AND pg_catalog.pg_function_is_visible(p.oid)) OR n.nspname = c.schema`;
    for (const r of rows) {
      const display = `${calls.get(r.key)!.name}()`;
      if (r.kind === "a") facts.aggregates.add(r.key);
      if (r.volatile === "v") facts.volatile.add(display);
      if (r.volatile === "s" && !r.allowed) facts.unstable.add(display);
    }
    // Set-returning functions only matter in the select list; FROM functions are refused separately.
    const retset = new Set(rows.filter((r) => r.retset).map((r) => r.key));
    for (const t of list(stmt, "targetList")) {
      walk(t, (kind, node) => {
        if (kind !== "FuncCall") return;
        const f = funcName(node);
        const key = `${f.schema ?? ""}.${f.name}`;
        if (retset.has(key)) facts.setReturning.add(`${f.name}()`);
      });
    }
  }
  if (operators.size > 0) {
    const rows = await sql<{ name: string; volatile: boolean; unstable: boolean }[]>`
      SELECT o.oprname AS name, bool_or(p.provolatile = 'v') AS volatile,
        bool_or(p.provolatile = 's' AND NOT (n.nspname = 'pg_catalog' AND p.proname = ANY(${STABLE_BY_SETTINGS}::text[])))
          AS unstable
      FROM pg_catalog.pg_operator o
      JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
      JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
      WHERE o.oprname = ANY(${[...operators]}::text[]) AND pg_catalog.pg_operator_is_visible(o.oid)
      GROUP BY o.oprname`;
    for (const r of rows) {
      if (r.volatile) facts.volatile.add(`behind operator ${r.name}`);
      else if (r.unstable) facts.unstable.add(`behind operator ${r.name}`);
    }
  }
  return facts;
}
