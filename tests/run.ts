/**
 * The test command: starts the embedded PostgreSQL (unless TEST_DATABASE_URL names a server), runs `deno test` on
 * the unit and integration tests (or the e2e tests with --e2e), stops the server, and prints a one-line summary.
 */
import { startThrowawayServer } from "./support/embedded_server.ts";

const e2e = Deno.args.includes("--e2e");
if (e2e && ![...Deno.readDirSync("tests/e2e")].some((f) => f.name.endsWith("_test.ts"))) {
  console.log("tests/e2e/ has no test files yet: nothing to run");
  Deno.exit(0);
}
const passThrough = Deno.args.filter((a) => a !== "--e2e");
const { url, stop } = await startThrowawayServer({ url: Deno.env.get("TEST_DATABASE_URL") });

// Ctrl-C: stop the test server too, so no PostgreSQL is left behind.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, async () => {
    await stop();
    Deno.exit(130);
  });
}

const targets = passThrough.length > 0 ? passThrough : [e2e ? "tests/e2e/" : "tests/"];
const args = ["test", "-A", "--parallel", ...(e2e ? [] : ["--ignore=tests/e2e/"]), ...targets];
const child = new Deno.Command(Deno.execPath(), {
  args,
  env: { TEST_DATABASE_URL: url, NO_COLOR: "1" },
  stdout: "piped",
  stderr: "inherit",
}).spawn();

let tail = "";
const decoder = new TextDecoder();
for await (const chunk of child.stdout) {
  await Deno.stdout.write(chunk);
  tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4000);
}
const status = await child.status;
await stop();
const m = /(\d+) passed(?: \((\d+) steps?\))? \| (\d+) failed/.exec(tail);
if (m !== null) console.log(`\ntests: ${m[1]} passed, ${m[3]} failed`);
Deno.exit(status.code);
