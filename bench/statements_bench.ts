/**
 * What one refresh asks of PostgreSQL, counted on the wire between a service process and the server
 * (bench/wire_counter.ts): statements and round trips of a no-op refresh and of a DIFFERENTIAL refresh after 1,000
 * changed rows, and the DDL among them that changed the catalog (a `CREATE TEMP TABLE IF NOT EXISTS` of a table the
 * session already has changes nothing, and the server says so). The baseline is what a
 * user of a materialized view sends for the same: one `REFRESH MATERIALIZED VIEW CONCURRENTLY`, counted through the
 * same relay. Part of `deno task bench --only service`.
 */
import { connect } from "../db/pool.ts";
import { freshDatabase } from "../tests/support/db.ts";
import { spawnService, stopAll } from "../tests/support/process.ts";
import { type BenchOptions, exec, type Figure, post } from "./support.ts";
import { startWireCounter } from "./wire_counter.ts";

const RUNS = 10;
const CHANGED = 1_000;

/** The statement, round-trip and catalog-write figures of a refresh through the service. */
export async function statementFigures(opts: BenchOptions): Promise<Figure[]> {
  const db = await freshDatabase("bench_stmt");
  const url = new URL(db.url);
  const relay = startWireCounter({ hostname: url.hostname, port: Number(url.port) });
  const proxied = new URL(db.url);
  proxied.hostname = "127.0.0.1";
  proxied.port = String(relay.port);
  // The scheduler and the planner idle for the whole measurement: every statement counted is a refresh's.
  const svc = await spawnService({
    databaseUrl: proxied.toString(),
    env: {
      TRICKLE_LOG_LEVEL: "warn",
      TRICKLE_SCHEDULER_INTERVAL_MS: "3600000",
      TRICKLE_PLANNER_INTERVAL_SECONDS: "86400",
    },
  });
  const user = connect(proxied.toString(), { max: 1 });
  try {
    await exec(
      db.sql,
      `CREATE TABLE f (id int PRIMARY KEY, g int NOT NULL, d_id int NOT NULL, v int NOT NULL);
      CREATE TABLE d (id int PRIMARY KEY, name text NOT NULL);
      INSERT INTO d SELECT i, 'd' || i FROM generate_series(1, 1000) i;
      INSERT INTO f SELECT i, i % 10000, 1 + i % 1000, i % 97 FROM generate_series(1, 200000) i;
      ANALYZE f; ANALYZE d;`,
    );
    const tables = {
      st_join: "SELECT f.id, f.v, d.name FROM f JOIN d ON d.id = f.d_id",
      st_group: "SELECT g, count(*) AS n, sum(v) AS total FROM f GROUP BY g",
    };
    for (const [name, query] of Object.entries(tables)) {
      await post(svc, "/stream-tables", { name, query, schedule: "1d", refresh_mode: "DIFFERENTIAL" }, 201);
    }
    await exec(db.sql, `CREATE MATERIALIZED VIEW mv_join AS ${tables.st_join}; CREATE UNIQUE INDEX ON mv_join (id)`);
    // Warm: each service session has run a refresh of each kind once (its first creates its delta tables).
    let done = 0;
    const change = async () => {
      await exec(
        db.sql,
        `UPDATE f SET v = v + 1 WHERE id IN (SELECT ${done} + i FROM generate_series(1, ${CHANGED}) i)`,
      );
      done += CHANGED;
    };
    for (let i = 0; i < 3; i++) {
      await change();
      for (const name of Object.keys(tables)) await post(svc, `/stream-tables/${name}/refresh`, undefined, 200);
    }

    // Each refresh is counted from a quiet moment until the service is quiet again, so the buffer prune that follows
    // it (off its critical path, moments later) is counted with it.
    const quiet = async () => {
      for (let last = relay.counts().statements;;) {
        await new Promise((r) => setTimeout(r, 300));
        const now = relay.counts().statements;
        if (now === last) return;
        last = now;
      }
    };
    const perRun = async (runs: number, fn: () => Promise<void>, between?: () => Promise<void>) => {
      let statements = 0, ddl = 0;
      for (let i = 0; i < runs; i++) {
        await between?.();
        await quiet();
        const before = relay.counts();
        await fn();
        await quiet();
        const after = relay.counts();
        statements += after.statements - before.statements;
        ddl += (after.ddl - after.ddlSkipped) - (before.ddl - before.ddlSkipped);
      }
      return { statements: statements / runs, ddl: ddl / runs };
    };
    const noop = await perRun(RUNS, () => post(svc, "/stream-tables/st_join/refresh", undefined, 200, "NO_DATA"));
    const diffJoin = await perRun(
      RUNS,
      () => post(svc, "/stream-tables/st_join/refresh", undefined, 200, "DIFFERENTIAL"),
      change,
    );
    const diffGroup = await perRun(
      RUNS,
      () => post(svc, "/stream-tables/st_group/refresh", undefined, 200, "DIFFERENTIAL"),
      change,
    );
    await user`SELECT 1`; // connected before counting

    const mv = await perRun(3, async () => {
      await user.unsafe("REFRESH MATERIALIZED VIEW CONCURRENTLY mv_join");
    }, change);
    opts.progress(
      `service: statements per refresh: no-op ${noop.statements}; DIFFERENTIAL join ${diffJoin.statements} ` +
        `(${diffJoin.ddl} DDL), GROUP BY ${diffGroup.statements} (${diffGroup.ddl} DDL); materialized view ` +
        `${mv.statements} (${mv.ddl} DDL)`,
    );
    const figure = (name: string, measured: number, baseline: number, unit: string, max: number | null): Figure => ({
      name,
      measuredMs: measured,
      baselineMs: baseline,
      baseline: "one REFRESH MATERIALIZED VIEW CONCURRENTLY of the join, counted through the same relay",
      goal: max === null ? { kind: "none" } : { kind: "at most", max },
      runs: RUNS,
      unit,
    });
    return [
      figure(
        "no-op refresh through HTTP: statements sent to PostgreSQL",
        noop.statements,
        mv.statements,
        "statements",
        12,
      ),
      figure(
        `(join) DIFFERENTIAL refresh, ${CHANGED} changed rows: statements, buffer prune included`,
        diffJoin.statements,
        mv.statements,
        "statements",
        null,
      ),
      figure(
        `(join) DIFFERENTIAL refresh, ${CHANGED} changed rows: DDL that changed the catalog`,
        diffJoin.ddl,
        mv.ddl,
        "statements",
        0,
      ),
      figure(
        `(GROUP BY) DIFFERENTIAL refresh, ${CHANGED} changed rows: DDL that changed the catalog ` +
          `(${diffGroup.statements} statements)`,
        diffGroup.ddl,
        mv.ddl,
        "statements",
        0,
      ),
    ];
  } finally {
    await user.end({ timeout: 1 });
    await stopAll([svc]);
    relay.close();
    await db.drop();
  }
}
