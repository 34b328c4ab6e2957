/**
 * A managed database that stops accepting connections, for real (ALLOW_CONNECTIONS false and its sessions ended):
 * requests on it answer 503 DatabaseUnavailable naming it, with Retry-After; the other database keeps working;
 * /ready says which one and why; once it accepts connections again, the same service serves it without a restart.
 */
import assert from "node:assert/strict";
import { connect, urlForDatabase } from "../db/pool.ts";
import { quoteIdent } from "../db/identifiers.ts";
import { dbTest, startTestService } from "./support/service.ts";

interface Ready {
  ready: boolean;
  databases: { name: string; ok: boolean; detail: string }[];
}

Deno.test({
  name: "an unreachable database answers 503 DatabaseUnavailable; the other keeps working; it comes back",
  ...dbTest,
  async fn(t) {
    const s = await startTestService({ extraDatabases: 1 });
    const db2 = s.databases[0]!;
    const admin = connect(s.db.serverUrl, { max: 1 });
    const q2 = `?database=${db2}`;
    const cut = async () => {
      // Names are this test's own databases, quoted; ALTER DATABASE takes no parameters.
      await admin.unsafe(`ALTER DATABASE ${quoteIdent(db2)} ALLOW_CONNECTIONS false`);
      await admin`SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
        WHERE datname = ${db2} AND pid <> pg_backend_pid()`;
      // The service's pool learns of its ended sessions when their sockets close, a moment after the server ends
      // them; a query sent in that moment may wait on a dead socket (postgres.js), which is not what is tested here.
      await new Promise((resolve) => setTimeout(resolve, 500));
    };
    const restore = () => admin.unsafe(`ALTER DATABASE ${quoteIdent(db2)} ALLOW_CONNECTIONS true`);
    try {
      const sql2 = connect(urlForDatabase(s.db.serverUrl, db2), { max: 1 });
      await sql2`CREATE TABLE y (id int PRIMARY KEY, v int)`;
      await sql2`INSERT INTO y VALUES (1, 1)`;
      await sql2.end();
      await s.db.sql`CREATE TABLE y (id int PRIMARY KEY, v int)`;
      for (const path of ["/stream-tables", `/stream-tables${q2}`]) {
        const res = await s.request("POST", path, { name: "st", query: "SELECT id, v FROM y" });
        assert.equal(res.status, 201, await res.text());
      }
      await cut();

      await t.step(
        "every request on the unreachable database is 503 DatabaseUnavailable with Retry-After",
        async () => {
          for (
            const [method, path, body] of [
              ["GET", `/stream-tables${q2}`],
              ["GET", `/stream-tables/st${q2}`],
              ["POST", `/stream-tables${q2}`, { name: "st_new", query: "SELECT id FROM y" }],
              ["POST", "/stream-tables", { name: "st_new", query: "SELECT id FROM y", database: db2 }],
              ["PATCH", `/stream-tables/st${q2}`, { schedule: "5m" }],
              ["DELETE", `/stream-tables/st${q2}`],
              ["POST", `/stream-tables/st/refresh${q2}`],
              ["GET", `/stream-tables/st/history${q2}`],
            ] as [string, string, unknown?][]
          ) {
            const res = await s.request(method, path, body);
            const text = await res.text();
            assert.equal(res.status, 503, `${method} ${path}: ${text}`);
            assert.equal(res.headers.get("content-type"), "application/problem+json");
            assert.match(res.headers.get("retry-after") ?? "", /^\d+$/);
            const p = JSON.parse(text);
            assert.equal(p.code, "DatabaseUnavailable", text);
            assert.match(p.detail, new RegExp(`Database "${db2}" is unavailable`), text);
            assert.equal(p.request_id, res.headers.get("x-request-id"));
          }
        },
      );

      await t.step("the other database keeps working", async () => {
        assert.equal((await s.request("GET", "/stream-tables/st")).status, 200);
        await s.db.sql`INSERT INTO y VALUES (5, 5)`;
        const r = await s.request("POST", "/stream-tables/st/refresh");
        assert.equal(r.status, 200, await r.text());
      });

      await t.step("/ready is 503 and names the unavailable database and why", async () => {
        const res = await s.request("GET", "/ready");
        assert.equal(res.status, 503);
        const ready = (await res.json()) as Ready;
        assert.equal(ready.ready, false);
        const byName = Object.fromEntries(ready.databases.map((d) => [d.name, d]));
        assert.equal(byName[s.db.name]?.ok, true);
        assert.equal(byName[db2]?.ok, false);
        assert.match(byName[db2]!.detail, /unreachable: .*not currently accepting connections/);
      });

      await t.step("once it accepts connections again, the same service serves it, unchanged", async () => {
        await restore();
        const res = await s.request("GET", `/stream-tables${q2}`);
        const list = JSON.parse(await res.text()) as { name: string; schedule: string }[];
        assert.equal(res.status, 200);
        assert.deepEqual(
          list.map((x) => [x.name, x.schedule]),
          [["public.st", "1m"]],
          "nothing done while it was down",
        );
        const r = await s.request("POST", `/stream-tables/st/refresh${q2}`);
        assert.equal(r.status, 200, await r.text());
        const ready = await s.request("GET", "/ready");
        assert.equal(ready.status, 200, await ready.text());
      });
    } finally {
      await restore().catch(() => {});
      await admin.end();
      await s.close();
    }
  },
});
