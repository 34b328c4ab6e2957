/**
 * Concurrent requests on the same stream tables (create, PATCH, DELETE, refresh, GET, history, a reader of a stream
 * table) through the HTTP app over a real engine: no answer is a 500, every failure is a problem with a request id,
 * and afterwards the catalog, the storage tables and the change capture agree, with nothing orphaned.
 */
import assert from "node:assert/strict";
import type { Sql } from "../db/pool.ts";
import { quoteIdent } from "../db/identifiers.ts";
import { dbTest, startTestService } from "./support/service.ts";

/** A small deterministic generator (mulberry32), so a failing run can be repeated with its seed. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NAMES = ["race_a", "race_b", "analytics.race_c"];
const READER = "race_reader";

/** One request of the mix, on a name the others also use. */
function pick(rnd: () => number): [string, string, unknown?] {
  const name = NAMES[Math.floor(rnd() * NAMES.length)]!;
  const path = `/stream-tables/${name}`;
  switch (Math.floor(rnd() * 9)) {
    case 0:
    case 1:
      return ["POST", "/stream-tables", { name, query: `SELECT id, v FROM src WHERE v > ${Math.floor(rnd() * 5)}` }];
    case 2:
      return ["PATCH", path, rnd() < 0.5 ? { schedule: `${1 + Math.floor(rnd() * 9)}m` } : { status: "SUSPENDED" }];
    case 3:
      return ["PATCH", path, { status: "ACTIVE", refresh_mode: rnd() < 0.5 ? "FULL" : "AUTO" }];
    case 4:
      return ["DELETE", path];
    case 5:
      return ["POST", `${path}/refresh`];
    case 6:
      return ["GET", rnd() < 0.5 ? path : `${path}/history`];
    case 7:
      return rnd() < 0.5
        ? ["POST", "/stream-tables", { name: READER, query: "SELECT id FROM race_a WHERE v > 1" }]
        : ["DELETE", `/stream-tables/${READER}`];
    default:
      return ["GET", "/stream-tables"];
  }
}

/** What the catalog, the storage and the capture say, where they disagree (empty when consistent). */
async function inconsistencies(sql: Sql): Promise<string[]> {
  const found: string[] = [];
  const rows = await sql<{ schema: string; name: string; status: string; relid: number; reg: string | null }[]>`
    SELECT pgt_schema AS schema, pgt_name AS name, status, pgt_relid::int8 AS relid,
      to_regclass(quote_ident(pgt_schema) || '.' || quote_ident(pgt_name))::oid::int8::text AS reg
    FROM pgtrickle.pgt_stream_tables`;
  for (const r of rows) {
    if (r.status === "INITIALIZING") found.push(`${r.schema}.${r.name} is still INITIALIZING`);
    if (r.reg !== String(r.relid)) found.push(`${r.schema}.${r.name}: its storage table is missing or another one`);
  }
  const tables = await sql<{ t: string }[]>`
    SELECT n.nspname || '.' || c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname IN ('public', 'analytics') ORDER BY 1`;
  const expected = new Set(["public.src", ...rows.map((r) => `${r.schema}.${r.name}`)]);
  for (const { t } of tables) if (!expected.has(t)) found.push(`orphan storage table ${t}`);
  const captured = await sql<{ relid: number; used: boolean; buffer: string | null; triggers: number }[]>`
    SELECT b.source_relid::int8 AS relid,
      EXISTS (SELECT 1 FROM pgtrickle.pgt_dependencies d WHERE d.source_relid = b.source_relid) AS used,
      to_regclass('pgtrickle_changes.changes_' || b.source_relid)::text AS buffer,
      (SELECT count(*)::int FROM pg_trigger t WHERE t.tgrelid = b.source_relid AND t.tgname LIKE 'pgt_capture_%')
        AS triggers
    FROM pgtrickle.pgt_change_buffers b`;
  for (const c of captured) {
    if (!c.used) found.push(`capture on ${c.relid} that no stream table reads`);
    if (c.buffer === null) found.push(`capture on ${c.relid} without its change buffer`);
    if (c.triggers !== 4) found.push(`capture on ${c.relid} with ${c.triggers} triggers`);
  }
  const uncaptured = await sql<{ s: string }[]>`
    SELECT DISTINCT source_schema || '.' || source_name AS s FROM pgtrickle.pgt_dependencies d
    WHERE NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_change_buffers b WHERE b.source_relid = d.source_relid)`;
  for (const u of uncaptured) found.push(`source ${u.s} is read without capture`);
  const buffers = await sql<{ t: string }[]>`
    SELECT c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'pgtrickle_changes' AND c.relkind = 'r'
      AND NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_change_buffers b WHERE 'changes_' || b.source_relid = c.relname)`;
  for (const b of buffers) found.push(`orphan change buffer ${b.t}`);
  return found;
}

Deno.test({
  name: "concurrent requests on the same names: never a 500, the catalog consistent afterwards",
  ...dbTest,
  async fn() {
    const s = await startTestService();
    const sql = s.db.sql;
    const seed = Number(Deno.env.get("RACE_SEED") ?? Date.now() % 100_000);
    const rnd = random(seed);
    try {
      await sql.unsafe(`
        CREATE SCHEMA analytics;
        CREATE TABLE src (id int PRIMARY KEY, v int NOT NULL);
        INSERT INTO src SELECT i, i % 7 FROM generate_series(1, 200) i;`);
      const failures: string[] = [];
      for (let wave = 0; wave < 8; wave++) {
        const requests = Array.from({ length: 50 }, () => pick(rnd));
        const answers = await Promise.all([
          ...requests.map(async ([method, path, body]) => {
            const res = await s.request(method, path, body);
            return { what: `${method} ${path} ${body === undefined ? "" : JSON.stringify(body)}`, res };
          }),
          // The sources keep changing meanwhile, so refreshes have work to do.
          sql`UPDATE src SET v = (v + 1) % 7 WHERE id % 5 = ${wave % 5}`.then(() => null),
        ]);
        for (const a of answers) {
          if (a === null) continue;
          const text = await a.res.text();
          if (a.res.status < 400) continue;
          const line = `${a.what} -> ${a.res.status} ${text}`;
          if (a.res.status >= 500) failures.push(line);
          else if (a.res.headers.get("content-type") !== "application/problem+json") {
            failures.push(`not a problem: ${line}`);
          } else {
            const p = JSON.parse(text) as { code?: unknown; request_id?: unknown };
            if (typeof p.code !== "string" || typeof p.request_id !== "string") failures.push(`incomplete: ${line}`);
          }
        }
      }
      assert.deepEqual(failures, [], `seed ${seed}: answers that were not a success or a 4xx problem`);
      assert.deepEqual(await inconsistencies(sql), [], `seed ${seed}`);
      // Each stream table left holds its query's rows after a refresh.
      const left = await sql<{ schema: string; name: string; q: string; columns: string[] }[]>`
        SELECT pgt_schema AS schema, pgt_name AS name, defining_query AS q,
          ARRAY(SELECT c->>'name' FROM jsonb_array_elements(plan->'columns') c) AS columns
        FROM pgtrickle.pgt_stream_tables ORDER BY pgt_id`;
      for (const st of left) {
        const res = await s.request("POST", `/stream-tables/${st.schema}.${st.name}/refresh`);
        assert.equal(res.status, 200, await res.text());
        const stored = `SELECT ${st.columns.map(quoteIdent).join(", ")} FROM ${quoteIdent(st.schema)}.${
          quoteIdent(st.name)
        }`;
        // Test-only SQL: names from the catalog, quoted; queries are this file's.
        const [diff] = await sql.unsafe<{ n: number }[]>(`
          SELECT count(*)::int AS n FROM (((${stored}) EXCEPT ALL (${st.q})) UNION ALL ((${st.q}) EXCEPT ALL (${stored}))) d`);
        assert.equal(diff!.n, 0, `${st.schema}.${st.name} differs from its query`);
      }
    } finally {
      await s.close();
    }
  },
});
