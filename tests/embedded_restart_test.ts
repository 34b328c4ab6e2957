/**
 * The embedded PostgreSQL across restarts, with real processes: a service killed with SIGKILL leaves its server
 * running; the next start on the same data directory reclaims it and comes back on the same port with the data.
 */
import assert from "node:assert/strict";
import { connect } from "../db/pool.ts";
import { launchService, logLines, type ServiceProcess, spawnService } from "./support/process.ts";
import { dbTest } from "./support/service.ts";
import { one } from "./support/rows.ts";

/** A data directory the embedded server's OS user can reach (as root it runs as `postgres`). */
async function dataDirectory(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "trickle-restart-" });
  await Deno.chmod(dir, 0o755);
  return dir;
}

async function databaseUrl(dataDir: string): Promise<string> {
  return (await Deno.readTextFile(`${dataDir}/database_url`)).trim();
}

function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

async function stop(proc: ServiceProcess, signal: Deno.Signal = "SIGKILL"): Promise<void> {
  try {
    proc.kill(signal);
  } catch {
    // already gone
  }
  await proc.status;
}

Deno.test({
  name: "after SIGKILL, a restart reclaims the orphaned embedded server and serves on the same port, data intact",
  ...dbTest,
  fn: async () => {
    const dataDir = await dataDirectory();
    const procs: ServiceProcess[] = [];
    try {
      const first = await spawnService({ env: { TRICKLE_DATA_DIR: dataDir } });
      procs.push(first);
      const url = await databaseUrl(dataDir);
      const sql = connect(url, { max: 1, applicationName: "test" });
      await sql`CREATE TABLE src (id int PRIMARY KEY, v int)`;
      await sql`INSERT INTO src SELECT i, i FROM generate_series(1, 100) i`;
      await sql.end();
      const created = await fetch(first.url + "/stream-tables", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "totals", query: "SELECT sum(v) AS s FROM src", schedule: "1s" }),
      });
      assert.equal(created.status, 201, await created.text());

      await stop(first, "SIGKILL");
      const postmaster = Number((await Deno.readTextFile(`${dataDir}/pgdata/postmaster.pid`)).split("\n")[0]);
      assert.ok(alive(postmaster), "the killed service left its PostgreSQL running");

      const second = await spawnService({ env: { TRICKLE_DATA_DIR: dataDir } });
      procs.push(second);
      assert.equal(
        logLines(second, "stopping the embedded PostgreSQL left running by an earlier run that was killed")
          .length,
        1,
        second.log(),
      );
      assert.ok(!alive(postmaster), "the orphan was stopped");
      assert.equal(await databaseUrl(dataDir), url, "same URL, same port");
      // A client holding the old URL reconnects, and the data is there.
      const again = connect(url, { max: 1, applicationName: "test" });
      try {
        assert.equal(one(await again<{ s: number }[]>`SELECT s::int AS s FROM totals`).s, 5050);
        await again`INSERT INTO src VALUES (101, 1000)`;
      } finally {
        await again.end();
      }
      const got = await fetch(second.url + "/stream-tables/totals");
      assert.equal(got.status, 200, await got.text());

      // A second service on the same data directory while this one runs: refused, with what to do.
      const intruder = await launchService({ env: { TRICKLE_DATA_DIR: dataDir } });
      procs.push(intruder);
      assert.equal((await intruder.status).code, 1, intruder.log());
      const [refusal] = logLines(intruder, "could not start the embedded PostgreSQL");
      const message = (refusal?.error as { message?: string } | undefined)?.message ?? "";
      assert.match(message, new RegExp(`service process ${second.pid}: stop that service`), intruder.log());
      const check = connect(url, { max: 1, applicationName: "test" });
      try {
        assert.equal(one(await check<{ n: number }[]>`SELECT count(*)::int AS n FROM src`).n, 101, "still served");
      } finally {
        await check.end();
      }
    } finally {
      for (const p of procs) await stop(p);
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "the embedded server moves to a new port, logged, when its port was taken meanwhile",
  ...dbTest,
  fn: async () => {
    const dataDir = await dataDirectory();
    const procs: ServiceProcess[] = [];
    let squatter: Deno.Listener | null = null;
    try {
      const first = await spawnService({ env: { TRICKLE_DATA_DIR: dataDir } });
      procs.push(first);
      const oldPort = Number(new URL(await databaseUrl(dataDir)).port);
      await stop(first, "SIGTERM");
      squatter = Deno.listen({ hostname: "127.0.0.1", port: oldPort });

      const second = await spawnService({ env: { TRICKLE_DATA_DIR: dataDir } });
      procs.push(second);
      const newPort = Number(new URL(await databaseUrl(dataDir)).port);
      assert.notEqual(newPort, oldPort);
      const [moved] = logLines(
        second,
        "the embedded PostgreSQL's port is taken by another process; it moves to a new port",
      );
      assert.deepEqual([moved?.previous_port, moved?.port], [oldPort, newPort], second.log());
    } finally {
      squatter?.close();
      for (const p of procs) await stop(p);
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  },
});
