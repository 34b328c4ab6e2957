/** The throwaway server behind `deno task test` and `deno task bench` (tests/support/embedded_server.ts). */
import assert from "node:assert/strict";
import { connect } from "../db/pool.ts";
import { startThrowawayServer } from "./support/embedded_server.ts";

async function serverVersion(url: string): Promise<number> {
  const sql = connect(url, { max: 1 });
  try {
    const [row] = await sql<{ v: number }[]>`SELECT current_setting('server_version_num')::int AS v`;
    return row!.v;
  } finally {
    await sql.end();
  }
}

/** The trickle-test-* directory of the temporary directory whose server has this URL (its database_url file). */
function dataDirOf(url: string): string | null {
  const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
  for (const e of Deno.readDirSync(tmp)) {
    if (!e.name.startsWith("trickle-test-")) continue;
    try {
      if (Deno.readTextFileSync(`${tmp}/${e.name}/database_url`).trim() === url) return `${tmp}/${e.name}`;
    } catch {
      // another run's directory, or one being set up
    }
  }
  return null;
}

Deno.test("a throwaway server is PostgreSQL 18 in the temporary directory, gone with its data after stop", async () => {
  let started = 0;
  const server = await startThrowawayServer({ onStart: () => started++ });
  let dataDir: string | null = null;
  try {
    assert.equal(started, 1);
    assert.ok((await serverVersion(server.url)) >= 180000, "the embedded PostgreSQL 18");
    dataDir = dataDirOf(server.url);
    assert.ok(dataDir !== null, "its data is in a trickle-test-* directory of the temporary directory");
  } finally {
    await server.stop();
  }
  await assert.rejects(serverVersion(server.url), "the server no longer answers");
  assert.equal(dataDirOf(server.url), null, `${dataDir} is removed`);
  await server.stop(); // a second stop (Ctrl-C after the end, say) is harmless
});

Deno.test("given a server URL, nothing is started and stop leaves that server running", async () => {
  const url = Deno.env.get("TEST_DATABASE_URL");
  assert.ok(url !== undefined && url !== "", "deno task test sets TEST_DATABASE_URL");
  let started = 0;
  const server = await startThrowawayServer({ url, onStart: () => started++ });
  assert.equal(server.url, url);
  await server.stop();
  assert.equal(started, 0);
  assert.ok((await serverVersion(url)) >= 150000, "the given server still answers");
});
