/**
 * The OpenMetrics 1.0 validator against the 211 official parser conformance cases, its line-numbered violations, and
 * the `metrics:check` command run as a user runs it. No database: the validator is pure.
 */
import assert from "node:assert/strict";
import { validateOpenMetrics } from "../engine/metrics/conformance.ts";

const FIXTURES = new URL("./fixtures/openmetrics/parsers/", import.meta.url);
const CLI = new URL("../tools/metrics_check.ts", import.meta.url).pathname;

function officialCases(): { name: string; text: string; shouldParse: boolean }[] {
  return [...Deno.readDirSync(FIXTURES)]
    .filter((e) => e.isDirectory)
    .map((e) => e.name)
    .sort()
    .map((name) => {
      const spec = JSON.parse(Deno.readTextFileSync(new URL(`${name}/test.json`, FIXTURES))) as {
        shouldParse: boolean;
      };
      return { name, text: Deno.readTextFileSync(new URL(`${name}/metrics`, FIXTURES)), shouldParse: spec.shouldParse };
    });
}

Deno.test("every official OpenMetrics parser case is classified as the spec's test suite says", () => {
  const cases = officialCases();
  // The whole suite must be there: a missing fixture would otherwise pass by having nothing to check.
  assert.equal(cases.length, 211);
  assert.equal(cases.filter((c) => c.shouldParse).length, 44);
  const wrong = cases
    .map((c) => ({ ...c, result: validateOpenMetrics(c.text) }))
    .filter((c) => c.result.ok !== c.shouldParse)
    .map((c) =>
      c.shouldParse
        ? `${c.name}: valid, but reported ${JSON.stringify(c.result.violations)}`
        : `${c.name}: invalid, but passed`
    );
  assert.deepEqual(wrong, [], `${wrong.length} case(s) misclassified:\n${wrong.join("\n")}`);
  // An invalid case is rejected with a reason, not an empty list.
  for (const c of cases.filter((c) => !c.shouldParse)) assert.ok(validateOpenMetrics(c.text).violations.length > 0);
});

Deno.test("every violation is listed with its 1-based line, not only the first", () => {
  const text = [
    "# TYPE jobs counter", // 1
    "jobs_total -1", // 2: negative counter
    "", // 3: blank line
    "# TYPE queue gauge", // 4
    'queue{a="1",a="2"} 3', // 5: duplicate label
    "queue 1 z", // 6: bad timestamp
  ].join("\n") + "\n"; // no # EOF: reported after the last line
  const { ok, violations } = validateOpenMetrics(text);
  assert.equal(ok, false);
  assert.deepEqual(violations.map((v) => v.line), [2, 3, 5, 6, 7]);
  assert.match(violations[0]!.message, /cannot be negative/);
  assert.match(violations[1]!.message, /Blank line/);
  assert.match(violations[2]!.message, /Duplicate label "a"/);
  assert.match(violations[3]!.message, /Invalid timestamp "z"/);
  assert.match(violations[4]!.message, /Missing "# EOF"/);
});

Deno.test("a family that comes back after another one is reported where it comes back", () => {
  const text = "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n# EOF\n";
  assert.deepEqual(validateOpenMetrics(text).violations.map((v) => v.line), [5]);
  assert.match(validateOpenMetrics(text).violations[0]!.message, /Family "a" \(line 1\) appears again/);
});

Deno.test("histogram rules point at the offending sample line", () => {
  const text = [
    "# TYPE h histogram", // 1
    'h_bucket{le="1"} 2', // 2
    'h_bucket{le="0.5"} 3', // 3: bound not increasing
    'h_bucket{le="+Inf"} 1', // 4: count below the previous bucket
    "h_count 4", // 5: differs from +Inf bucket
    "h_sum 2", // 6
    "# EOF",
  ].join("\n");
  assert.deepEqual(validateOpenMetrics(text).violations.map((v) => v.line), [3, 4, 5]);
});

Deno.test("exemplar labels may hold 128 UTF-8 characters, not 129", () => {
  const line = (value: string) => `# TYPE c counter\nc_total 1 # {t="${value}"} 1\n# EOF\n`;
  // "t" plus 127 characters, one of them a 3-byte snowman: 128 characters, 130 bytes.
  assert.deepEqual(validateOpenMetrics(line("☃" + "x".repeat(126))).violations, []);
  const over = validateOpenMetrics(line("☃" + "x".repeat(127)));
  assert.deepEqual(over.violations.map((v) => v.line), [2]);
  assert.match(over.violations[0]!.message, /129 characters/);
});

Deno.test("a well-formed exposition of every type has no violations", () => {
  const text = [
    "# HELP rows_copied Rows copied.",
    "# TYPE rows_copied counter",
    'rows_copied_total{table="a"} 10 # {trace_id="x\\"y"} 1 1700000000',
    'rows_copied_created{table="a"} 1700000000',
    "# TYPE lag_seconds gauge",
    "# UNIT lag_seconds seconds",
    "lag_seconds NaN",
    "# TYPE refresh_seconds histogram",
    'refresh_seconds_bucket{le="0.1"} 1',
    'refresh_seconds_bucket{le="+Inf"} 2',
    "refresh_seconds_count 2",
    "refresh_seconds_sum 0.3",
    "# TYPE wait summary",
    'wait{quantile="0.5"} 0.2',
    "wait_count 3",
    "wait_sum 1",
    "# TYPE build info",
    'build_info{version="1.0"} 1',
    "# TYPE mode stateset",
    'mode{mode="full"} 0',
    'mode{mode="differential"} 1',
    "# TYPE other unknown",
    "other -Inf",
    "# EOF",
  ].join("\n") + "\n";
  assert.deepEqual(validateOpenMetrics(text), { ok: true, violations: [] });
});

async function runCli(args: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  // --check type-checks the tool too, which `deno check main.ts tests/ bench/` would not reach.
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--check", "--allow-read", "--allow-net", CLI, ...args],
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const out = await child.output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

Deno.test("metrics:check exits 0 with one OK line on a valid file", async () => {
  const file = new URL("simple_histogram/metrics", FIXTURES).pathname;
  const { code, stdout } = await runCli([file]);
  assert.equal(code, 0);
  assert.match(stdout, /^OK: .*simple_histogram\/metrics is valid OpenMetrics 1\.0 \(7 lines\)\n$/);
});

Deno.test("metrics:check prints every violation as `line N: message` and exits 1", async () => {
  const file = new URL("bad_histograms_11/metrics", FIXTURES).pathname;
  const { code, stdout } = await runCli([file]);
  assert.equal(code, 1);
  assert.deepEqual(stdout.trimEnd().split("\n"), [
    "line 3: a_count 1 differs from the +Inf bucket's 0",
    "line 3: a_count without a_sum",
  ]);
});

Deno.test("metrics:check reads stdin with -", async () => {
  const { code, stdout } = await runCli(["-"], "a 1\n\n# EOF\n");
  assert.equal(code, 1);
  assert.equal(stdout, "line 2: Blank line: OpenMetrics allows none\n");
});

Deno.test("metrics:check fetches a URL asking for OpenMetrics", async () => {
  let accept: string | null = null;
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (req) => {
    accept = req.headers.get("accept");
    return new Response("# TYPE up gauge\nup 1\nup 1 1\n# EOF\n", {
      headers: { "content-type": "application/openmetrics-text; version=1.0.0; charset=utf-8" },
    });
  });
  try {
    const { code, stdout } = await runCli([`http://127.0.0.1:${server.addr.port}/metrics`]);
    assert.equal(code, 1);
    assert.equal(stdout, 'line 3: Samples of one metric in "up" mix lines with and without a timestamp\n');
    assert.equal(accept, "application/openmetrics-text; version=1.0.0");
  } finally {
    await server.shutdown();
  }
});

Deno.test("metrics:check exits 2 on a usage or I/O error", async () => {
  const missing = await runCli(["/nonexistent/metrics.txt"]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /Cannot read "\/nonexistent\/metrics\.txt"/);
  const usage = await runCli([]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /Usage: deno task metrics:check/);
});
