/**
 * Snapshots and restore on a 1,000,000-row stream table (a join projection of 1M facts and 10k dimension rows), each
 * figure against a baseline measured in the same run:
 *
 * 1. snapshot, restore with verification, restore without: against the bare `INSERT INTO copy SELECT * FROM st`
 *    into an indexed table of the same shape (goal: at most 1.5x);
 * 2. time back to fresh (restore, then the first refresh after 1,000 changed source rows): against reloading the
 *    table's rows as `pg_restore` does (COPY in, indexes built after) plus the FULL refresh it then needs (no
 *    frontier), and against dropping and re-creating the stream table (goal: at least 2x faster than both);
 * 3. the first refresh after a restore at 1,000 changed rows: against a DIFFERENTIAL refresh of 1,000 changed rows.
 *
 * `pg_dump`/`pg_restore` themselves run only where their version matches the server's; otherwise what pg_restore
 * does is done by hand (COPY FROM a file written by COPY TO, then the indexes), said in the baseline's text.
 *
 *   deno task bench --only snapshots
 */
import { quoteQualified } from "../db/identifiers.ts";
import type { Sql } from "../db/pool.ts";
import type { DatabaseContext } from "../engine/context.ts";
import { refreshStreamTable } from "../engine/refresh/refresh.ts";
import { dropSnapshot, parseSnapshotName, restoreSnapshot, takeSnapshot } from "../engine/snapshots.ts";
import { createStreamTable, dropStreamTable } from "../engine/stream_tables.ts";
import { findStreamTable } from "../engine/catalog.ts";
import { startTestService } from "../tests/support/service.ts";
import { type BenchOptions, checkpoint, exec, type Figure, median, timeMs } from "./support.ts";

const FACT_ROWS = 1_000_000;
const DIM_ROWS = 10_000;
const CHANGED = 1_000;
const RUNS = 3;
const QUERY = "SELECT f.id, f.qty, f.amount, d.name FROM fact f JOIN dim d ON d.id = f.dim_id";
const ST = { schema: "public", name: "st" };

/** The snapshot benchmark's figures (bench/support.ts); creates and drops its own database. */
export async function runSnapshotsBench(opts: BenchOptions): Promise<Figure[]> {
  const svc = await startTestService();
  const ctx = svc.engine.db();
  const sql = svc.db.sql;
  const figures: Figure[] = [];
  const dir = await Deno.makeTempDir({ prefix: "trickle_bench_snap_" });
  // The server writes and reads the dump file itself (server-side COPY), possibly as another user.
  await Deno.chmod(dir, 0o777);
  try {
    opts.progress(`snapshots: loading ${FACT_ROWS} fact rows, ${DIM_ROWS} dimension rows`);
    await exec(
      sql,
      `CREATE TABLE dim (id int PRIMARY KEY, name text NOT NULL);
       INSERT INTO dim SELECT i, 'dim ' || i FROM generate_series(0, ${DIM_ROWS - 1}) i;
       CREATE TABLE fact (id bigint PRIMARY KEY, dim_id int NOT NULL, qty int NOT NULL, amount numeric(12,2) NOT NULL);
       INSERT INTO fact SELECT i, (i * 7) % ${DIM_ROWS}, (i % 50) + 1, ((i * 37) % 100000) / 100.0
         FROM generate_series(1, ${FACT_ROWS}) i;
       ANALYZE dim; ANALYZE fact;`,
    );
    const create = () =>
      createStreamTable(ctx, {
        name: ST,
        query: QUERY,
        schedule: "1h",
        refreshMode: "AUTO",
        freshnessDeadlineMs: null,
      });
    const st = await create();
    opts.progress(`snapshots: stream table of ${st.row_count} rows (${st.effective_refresh_mode})`);
    // An indexed table of the stream table's shape (its hidden row id and unique index too): the copy baseline.
    await exec(sql, `CREATE TABLE copy (LIKE st INCLUDING INDEXES)`);
    // The machine is shared and its load moves: each figure's runs alternate with its baseline's runs.
    const copy = async () => {
      await exec(sql, "TRUNCATE copy");
      await checkpoint(sql);
      return await timeMs(() => exec(sql, "INSERT INTO copy SELECT * FROM st"));
    };
    const copyBaseline = `bare INSERT INTO copy SELECT * FROM st, an indexed table of the same shape (median of ` +
      `${RUNS}, alternating with the measured runs)`;

    const [snapMs, copyForSnap] = await paired(sql, async () => {
      let name = "";
      const ms = await timeMs(
        async () => (name = (await takeSnapshot(ctx, { streamTable: ST, target: null })).snapshot),
      );
      await dropSnapshot(ctx, parseSnapshotName(name));
      return ms;
    }, copy);
    figures.push(figure(`snapshot, ${FACT_ROWS / 1e6}M-row join projection`, snapMs, copyForSnap, copyBaseline, 1.5));

    // The snapshot every restore below comes back to; then 1,000 source rows change.
    const base = await takeSnapshot(ctx, { streamTable: ST, target: null });
    const source = parseSnapshotName(base.snapshot);
    await exec(sql, `UPDATE fact SET qty = qty + 1 WHERE id <= ${CHANGED}`);
    await refresh(ctx);
    // A first read of the snapshot's rows writes their hint bits; one restore pays it, as a first restore would.
    await restoreSnapshot(ctx, { streamTable: ST, source, verify: true });

    for (const verify of [true, false]) {
      const [ms, copyMs] = await paired(
        sql,
        () => timeMs(() => restoreSnapshot(ctx, { streamTable: ST, source, verify })),
        copy,
      );
      figures.push(figure(`restore ${verify ? "with" : "without"} verification`, ms, copyMs, copyBaseline, 1.5));
    }

    // Time back to fresh: the restore and its first refresh (which applies the 1,000 changes since the snapshot).
    const firstRefresh: number[] = [];
    const backToFresh = async () => {
      const t0 = performance.now();
      await restoreSnapshot(ctx, { streamTable: ST, source, verify: true });
      const t1 = performance.now();
      const r = await refresh(ctx);
      if (r.action !== "DIFFERENTIAL") throw new Error(`the refresh after a restore was ${r.action}: ${r.reason}`);
      firstRefresh.push(performance.now() - t1);
      return performance.now() - t0;
    };
    const reload = await reloadBaseline(ctx, { dir, opts });
    const [freshMs, reloadMs] = await paired(sql, backToFresh, reload.run);
    figures.push(
      figure("time back to fresh: restore + first refresh, 1k changed rows", freshMs, reloadMs, reload.what, 0.5),
    );
    const [freshMs2, recreateMs] = await paired(sql, backToFresh, async () => {
      await dropStreamTable(ctx, ST);
      await checkpoint(sql);
      return await timeMs(create);
    });
    figures.push(
      figure(
        "time back to fresh, against drop + re-create",
        freshMs2,
        recreateMs,
        `DELETE the stream table, then POST it again (capture kept, initial FULL refresh; median of ${RUNS}, ` +
          `alternating)`,
        0.5,
      ),
    );
    let round = 0;
    const diffMs = await runs(sql, async () => {
      const from = (++round + 10) * 10 * CHANGED;
      await exec(sql, `UPDATE fact SET qty = qty + 1 WHERE id > ${from} AND id <= ${from + CHANGED}`);
      let action = "";
      const ms = await timeMs(async () => (action = (await refresh(ctx)).action));
      if (action !== "DIFFERENTIAL") throw new Error(`the baseline refresh was ${action}`);
      return ms;
    });
    figures.push(
      figure(
        "first refresh after a restore, 1k changed rows",
        median(firstRefresh),
        diffMs,
        `a DIFFERENTIAL refresh after ${CHANGED} changed fact rows (median of ${RUNS})`,
        1.25,
      ),
    );
    return figures;
  } finally {
    await svc.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function figure(name: string, measuredMs: number, baselineMs: number, baseline: string, max: number): Figure {
  return { name, measuredMs, baselineMs, baseline, goal: { kind: "ratio", max }, runs: RUNS };
}

/** Refreshes the stream table now (by name: drop + re-create gives it a new id). */
async function refresh(ctx: DatabaseContext) {
  const st = await findStreamTable(ctx.sql, ST);
  return await refreshStreamTable(ctx, st!.pgt_id, { initiatedBy: "MANUAL" });
}

/** Medians of RUNS runs of `measured` and of `baseline`, alternating, so both see the same load on the machine. */
async function paired(
  sql: Sql,
  measured: () => Promise<number>,
  baseline: () => Promise<number>,
): Promise<[number, number]> {
  const m: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    await checkpoint(sql);
    m.push(await measured());
    await checkpoint(sql);
    b.push(await baseline());
  }
  return [median(m), median(b)];
}

/** The median of RUNS runs of `fn` (given the run's index). */
async function runs(sql: Sql, fn: (i: number) => Promise<number>): Promise<number> {
  const out: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    await checkpoint(sql);
    out.push(await fn(i));
  }
  return median(out);
}

/**
 * What an operator without snapshots does: reload the stream table's rows from a dump (pg_restore: COPY in, indexes
 * built after), then refresh FULL, since a dumped table has no frontier. With pg_dump and pg_restore of the server's
 * version on this machine they are used; otherwise their work is done by hand with server-side COPY. Returns one timed
 * run and what it is.
 */
async function reloadBaseline(
  ctx: DatabaseContext,
  input: { dir: string; opts: BenchOptions },
): Promise<{ run: () => Promise<number>; what: string }> {
  const sql = ctx.sql;
  const full = async () => {
    // A reloaded table has no frontier: the next refresh is FULL.
    await sql`UPDATE pgtrickle.pgt_stream_tables SET frontier = NULL WHERE pgt_schema = 'public' AND pgt_name = 'st'`;
    const r = await refresh(ctx);
    if (r.action !== "FULL") throw new Error(`the refresh after a reload was ${r.action}`);
  };
  const tools = await dumpTools(sql);
  if (tools !== null) {
    const file = `${input.dir}/st.dump`;
    await run(tools.dump, ["-Fc", "-t", "public.st", "-f", file, "-d", tools.url]);
    return {
      run: () =>
        timeMs(async () => {
          // Not -t: that restores the table without its indexes; the dump holds nothing else.
          await run(tools.restore, ["--clean", "-d", tools.url, file]);
          await full();
        }),
      what: `pg_restore --clean of a pg_dump -Fc -t st, then the FULL refresh (median of ${RUNS}, alternating)`,
    };
  }
  const file = `${input.dir}/st.copy`;
  // The file name is the bench's own temporary directory; the table and index names are catalog names.
  await exec(sql, `COPY st TO '${file.replaceAll("'", "''")}'`);
  const indexes = await sql<{ name: string; def: string }[]>`
    SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def FROM pg_index
    WHERE indrelid = 'public.st'::regclass`;
  input.opts.progress("snapshots: pg_dump/pg_restore of the server's version not found; the reload is done by hand");
  return {
    run: () =>
      timeMs(async () => {
        await sql.begin(async (tx) => {
          await tx.unsafe(`TRUNCATE ${quoteQualified(ST)}`);
          for (const i of indexes) await tx.unsafe(`DROP INDEX ${i.name}`);
          await tx.unsafe(`COPY ${quoteQualified(ST)} FROM '${file.replaceAll("'", "''")}'`);
          for (const i of indexes) await tx.unsafe(i.def);
        });
        await full();
      }),
    what: `what pg_restore does (TRUNCATE, COPY FROM a dump file, indexes built after), then the FULL refresh ` +
      `(median of ${RUNS}, alternating; pg_restore of the server's version is not on this machine)`,
  };
}

/** pg_dump and pg_restore whose major version is the server's, with a URL for them; null when there are none. */
async function dumpTools(sql: Sql): Promise<{ dump: string; restore: string; url: string } | null> {
  const [v] = await sql<{ major: string; db: string }[]>`
    SELECT (current_setting('server_version_num')::int / 10000)::text AS major, current_database() AS db`;
  const url = sql.options as unknown as { host: string[]; port: number[]; user: string; pass: string | null };
  for (const bin of [`/usr/lib/postgresql/${v!.major}/bin`]) {
    try {
      await Deno.stat(`${bin}/pg_restore`);
    } catch {
      continue;
    }
    const u = new URL("postgres://localhost/");
    u.hostname = url.host[0]!;
    u.port = String(url.port[0]!);
    u.username = url.user;
    if (url.pass !== null) u.password = url.pass;
    u.pathname = `/${v!.db}`;
    return { dump: `${bin}/pg_dump`, restore: `${bin}/pg_restore`, url: u.toString() };
  }
  return null;
}

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd} failed: ${new TextDecoder().decode(out.stderr)}`);
}
