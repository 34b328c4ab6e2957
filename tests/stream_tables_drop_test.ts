/**
 * DELETE /stream-tables/{name}: the storage, the catalog rows and the history go; capture on a source stays while
 * another stream table reads it; a stream table read by another is refused 409.
 */
import assert from "node:assert/strict";
import { dbTest } from "./support/service.ts";
import {
  BIG_ORDERS_QUERY,
  bufferOf,
  CAPTURE,
  captureTriggers,
  created,
  createSources,
  problem,
  regclass,
  TOTALS_QUERY,
  withService,
} from "./support/api.ts";

Deno.test({
  name: "DELETE: storage and catalog go; capture stays while another stream table reads the source",
  ...dbTest,
  fn: () =>
    withService({}, async (s) => {
      const sql = s.db.sql;
      const req = s.request;
      await createSources(sql);
      await created(s, { name: "big_orders", query: BIG_ORDERS_QUERY });
      await created(s, { name: "analytics.customer_totals", query: TOTALS_QUERY, refresh_mode: "FULL" });
      await created(s, { name: "top_orders", query: "SELECT id, amount FROM orders ORDER BY amount DESC LIMIT 5" });
      const ordersBuffer = await bufferOf(sql, "orders");
      const [orders0] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM orders`;

      // A stream table over a stream table blocks dropping the one it reads.
      await created(s, { name: "big_count", query: "SELECT count(*) AS n FROM big_orders" });
      assert.deepEqual(await captureTriggers(sql, "big_orders"), CAPTURE);
      await problem(
        await req("DELETE", "/stream-tables/big_orders"),
        409,
        "StreamTableHasDependents",
        /"public\.big_count"/,
      );
      assert.notEqual(await regclass(sql, "big_orders"), null);

      const del = await req("DELETE", "/stream-tables/big_count");
      assert.equal(del.status, 204);
      assert.equal(await del.text(), "");
      assert.equal(await regclass(sql, "big_count"), null);
      assert.deepEqual(
        await captureTriggers(sql, "big_orders"),
        [],
        "capture on a stream table nobody reads is removed",
      );

      // orders is read by big_orders, top_orders and analytics.customer_totals: capture stays until the last goes.
      for (const name of ["analytics.customer_totals", "top_orders"]) {
        assert.equal((await req("DELETE", `/stream-tables/${name}`)).status, 204);
        assert.equal(await regclass(sql, name), null, `${name} storage is dropped`);
        assert.deepEqual(await captureTriggers(sql, "orders"), CAPTURE, `capture kept after dropping ${name}`);
        assert.notEqual(await regclass(sql, ordersBuffer), null, `buffer kept after dropping ${name}`);
      }
      const [before] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history`;
      assert.equal((await req("DELETE", "/stream-tables/public.big_orders")).status, 204);
      assert.equal(await regclass(sql, "big_orders"), null);
      assert.deepEqual(await captureTriggers(sql, "orders"), [], "no capture left on a source nothing reads");
      assert.equal(await regclass(sql, ordersBuffer), null, "the change buffer is dropped");
      const leftovers = await sql`
        SELECT 'catalog' AS what FROM pgtrickle.pgt_stream_tables
          WHERE pgt_name IN ('big_orders', 'big_count', 'top_orders', 'customer_totals')
        UNION ALL SELECT 'buffer' FROM pgtrickle.pgt_change_buffers WHERE source_name IN ('orders', 'big_orders')
        UNION ALL SELECT 'function' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = 'pgtrickle_changes' AND p.proname = ${"capture_" + ordersBuffer.split("_").at(-1)}`;
      assert.deepEqual(leftovers.map((r) => r.what), []);
      const [after] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM pgtrickle.pgt_refresh_history`;
      assert.ok(after!.n < before!.n, "the history of a dropped stream table goes with it");
      // The source itself is untouched.
      const [orders] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM orders`;
      assert.equal(orders!.n, 200);
      assert.equal(orders!.n, orders0!.n);
      await problem(await req("DELETE", "/stream-tables/big_orders"), 404, "StreamTableNotFound", /"big_orders"/);
      await problem(await req("GET", "/stream-tables/big_orders"), 404, "StreamTableNotFound");
    }),
});
