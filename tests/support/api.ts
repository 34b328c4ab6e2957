/**
 * Shared by the stream-table API tests: answer checks (a success, a problem), what the database holds (to show a
 * refused request left it unchanged), and the source tables the tests read. Each test starts its own service over
 * its own database (withService), so no test depends on another's leftovers.
 */
import assert from "node:assert/strict";
import type { z } from "@hono/zod-openapi";
import type { Sql } from "../../db/pool.ts";
import { quoteIdent } from "../../db/identifiers.ts";
import type { Problem } from "../../routes/problem.ts";
import type { HistoryEntrySchema, RefreshResultSchema, StreamTableSchema } from "../../routes/schemas.ts";
import { startTestService, type TestService, type TestServiceOptions } from "./service.ts";

export type StreamTable = z.infer<typeof StreamTableSchema>;
export type HistoryEntry = z.infer<typeof HistoryEntrySchema>;
export type RefreshResult = z.infer<typeof RefreshResultSchema>;

/** An MVCC snapshot as the API shows it (xmin:xmax:xip-list). */
export const FRONTIER = /^\d+:\d+:[\d,]*$/;

/** The capture triggers installed on a source. */
export const CAPTURE = ["pgt_capture_del", "pgt_capture_ins", "pgt_capture_trunc", "pgt_capture_upd"];

/** Runs `fn` against a service over a fresh database, closing both afterwards whatever happens. */
export async function withService(
  options: TestServiceOptions,
  fn: (s: TestService) => Promise<void>,
): Promise<void> {
  const s = await startTestService(options);
  try {
    await fn(s);
  } finally {
    await s.close();
  }
}

/** The JSON body of a successful answer, after checking its status and content type. */
export async function ok<T>(res: Response, status = 200): Promise<T> {
  const text = await res.text();
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${text}`);
  assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
  return JSON.parse(text) as T;
}

/** Checks a problem answer: status, content type, stable code, type and title, and a detail matching `detail`. */
export async function problem(res: Response, status: number, code: string, detail?: RegExp): Promise<Problem> {
  const text = await res.text();
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status}: ${text}`);
  assert.equal(res.headers.get("content-type"), "application/problem+json");
  const p = JSON.parse(text) as Problem;
  assert.equal(p.status, status, text);
  assert.equal(p.code, code, text);
  assert.equal(p.type, `urn:trickle:problem:${code}`);
  assert.ok(typeof p.title === "string" && p.title.length > 0, text);
  assert.ok(typeof p.detail === "string" && p.detail.length > 0, text);
  if (detail !== undefined) assert.match(p.detail, detail);
  // Every problem names its request, as the x-request-id header does, so a report can be matched to the log.
  assert.ok(typeof p.request_id === "string" && p.request_id.length > 0, `no request_id: ${text}`);
  assert.equal(p.request_id, res.headers.get("x-request-id"), text);
  return p;
}

/** POST /stream-tables, expecting 201; the created stream table. */
export async function created(s: TestService, body: Record<string, unknown>, path = "/stream-tables") {
  return await ok<StreamTable>(await s.request("POST", path, body), 201);
}

/**
 * Everything a stream-table request could leave behind: relations outside the system schemas (storage tables,
 * indexes, change buffers), user triggers, capture functions, catalog rows, and the contents of table `y`.
 */
export async function dbState(sql: Sql): Promise<Record<string, string[]>> {
  const texts = async (q: Promise<{ x: string }[]>) => (await q).map((r) => r.x);
  return {
    relations: await texts(sql`
      SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text AS x FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg\\_%temp%'
      ORDER BY 1`),
    triggers: await texts(sql`
      SELECT tgrelid::regclass::text || ':' || tgname AS x FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1`),
    functions: await texts(sql`
      SELECT p.proname AS x FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname = 'pgtrickle_changes' ORDER BY 1`),
    stream_tables: await texts(sql`
      SELECT pgt_schema || '.' || pgt_name || ':' || status AS x FROM pgtrickle.pgt_stream_tables ORDER BY 1`),
    dependencies: await texts(sql`
      SELECT pgt_id || '->' || source_schema || '.' || source_name AS x FROM pgtrickle.pgt_dependencies ORDER BY 1`),
    change_buffers: await texts(sql`
      SELECT source_schema || '.' || source_name AS x FROM pgtrickle.pgt_change_buffers ORDER BY 1`),
    history: await texts(sql`SELECT count(*)::text AS x FROM pgtrickle.pgt_refresh_history`),
    y: await texts(sql`SELECT id || '=' || coalesce(v::text, 'null') AS x FROM y ORDER BY id`),
  };
}

/** The rows of `columns` in `table`, and of `query`, as sorted JSON lines: equal means equal as multisets. */
export async function assertSameRows(sql: Sql, options: { table: string; query: string; columns: string[] }) {
  const lines = (rows: readonly Record<string, unknown>[]) =>
    rows.map((r) => JSON.stringify(options.columns.map((c) => r[c]))).sort();
  // Test-only SQL: the table, columns and query are constants of the calling test.
  const stored = await sql.unsafe(`SELECT ${options.columns.map(quoteIdent).join(", ")} FROM ${options.table}`);
  const expected = await sql.unsafe(options.query);
  assert.deepEqual(lines(stored), lines(expected), `${options.table} differs from its query`);
}

/** The relation `name` resolves to, or null. */
export async function regclass(sql: Sql, name: string): Promise<string | null> {
  const [row] = await sql<{ r: string | null }[]>`SELECT to_regclass(${name})::text AS r`;
  return row!.r;
}

/** The capture triggers on a table, by name. */
export async function captureTriggers(sql: Sql, table: string): Promise<string[]> {
  const rows = await sql<{ tgname: string }[]>`
    SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(${table}) AND NOT tgisinternal ORDER BY tgname`;
  return rows.map((r) => r.tgname);
}

/** The change buffer of a source table (by its oid), whether or not it exists. */
export async function bufferOf(sql: Sql, table: string): Promise<string> {
  const [row] = await sql<{ oid: number }[]>`SELECT ${table}::regclass::oid::int8 AS oid`;
  return `pgtrickle_changes.changes_${row!.oid}`;
}

/** Orders 1..200 (customer i % 10, amount i % 100): 98 of them have amount > 50. */
export const BIG_ORDERS_QUERY = "SELECT id, customer, amount FROM orders WHERE amount > 50";
/** Ten customers' totals over orders. */
export const TOTALS_QUERY = "SELECT customer, sum(amount) AS total, count(*) AS n FROM orders GROUP BY customer";

/** The source tables the API tests read: orders, "Sales"."Deals", y (and view yv), and schema analytics. */
export async function createSources(sql: Sql): Promise<void> {
  // Test-only SQL: constant text.
  await sql.unsafe(`
    CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount int NOT NULL);
    INSERT INTO orders SELECT i, i % 10, i % 100 FROM generate_series(1, 200) i;
    CREATE SCHEMA analytics;
    CREATE SCHEMA "Sales";
    CREATE TABLE "Sales"."Deals" (id int PRIMARY KEY, amount numeric(10, 2) NOT NULL);
    INSERT INTO "Sales"."Deals" VALUES (1, 10.50), (2, 20.25);
    CREATE TABLE y (id int PRIMARY KEY, v int);
    INSERT INTO y VALUES (1, 10), (2, 20), (3, 30);
    CREATE VIEW yv AS SELECT * FROM y;
  `);
}
