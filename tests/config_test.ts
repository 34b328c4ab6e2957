/** Unit tests of config.ts (no database): defaults, validation naming every bad setting, the --config file. */
import assert from "node:assert/strict";
import { ConfigError, defaultDatabase, isOpen, loadConfig } from "../config.ts";

async function configError(options: { env?: Record<string, string>; args?: string[] }): Promise<ConfigError> {
  try {
    await loadConfig({ env: options.env ?? {}, args: options.args ?? [] });
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
    assert.equal(e.code, "InvalidConfig");
    return e;
  }
  assert.fail("loadConfig accepted an invalid configuration");
}

async function withConfigFile(content: string, fn: (path: string) => Promise<void>): Promise<void> {
  const path = await Deno.makeTempFile({ prefix: "trickle_config_", suffix: ".json" });
  try {
    await Deno.writeTextFile(path, content);
    await fn(path);
  } finally {
    await Deno.remove(path);
  }
}

Deno.test("loadConfig: the defaults are the documented ones", async () => {
  const c = await loadConfig({ env: {}, args: [] });
  assert.equal(c.databaseUrl, null, "no DATABASE_URL: embedded PostgreSQL");
  assert.deepEqual(c.databases, ["postgres"]);
  assert.equal(c.dataDir, "./.trickle");
  assert.equal(c.host, "127.0.0.1");
  assert.equal(c.port, 8080);
  assert.equal(c.adminToken, null);
  assert.equal(c.readToken, null);
  assert.equal(c.maxWorkers, 4);
  assert.equal(c.perDatabaseQuota, 0);
  assert.equal(c.coordinationDatabase, "postgres", "the server's maintenance database");
  assert.equal(c.schedulerIntervalMs, 1000);
  assert.equal(c.maxConsecutiveErrors, 3);
  assert.equal(c.differentialMaxChangeRatio, 0.15);
  assert.equal(c.scheduleRecommendationMinSamples, 20);
  assert.equal(c.scheduleAlertCooldownSeconds, 300);
  assert.equal(c.metricsPort, null, "no separate metrics listener by default");
  assert.equal(c.metricsRequestTimeoutMs, 5000);
  assert.equal(isOpen(c), true, "no token: open, loopback only");
});

Deno.test("loadConfig: every variable is read and converted", async () => {
  const c = await loadConfig({
    env: {
      DATABASE_URL: "postgres://app:secret@db.example:5433/main",
      TRICKLE_DATABASES: "main, reporting ,staging",
      TRICKLE_DATA_DIR: "/var/lib/trickle",
      TRICKLE_HOST: "0.0.0.0",
      TRICKLE_PORT: "9000",
      TRICKLE_ADMIN_TOKEN: "a".repeat(32),
      TRICKLE_READ_TOKEN: "r".repeat(32),
      TRICKLE_MAX_WORKERS: "8",
      TRICKLE_PER_DATABASE_QUOTA: "2",
      TRICKLE_SCHEDULER_INTERVAL_MS: "250",
      TRICKLE_MAX_CONSECUTIVE_ERRORS: "5",
      TRICKLE_DIFFERENTIAL_MAX_CHANGE_RATIO: "0.3",
      TRICKLE_SCHEDULE_RECOMMENDATION_MIN_SAMPLES: "50",
      TRICKLE_SCHEDULE_ALERT_COOLDOWN_SECONDS: "60",
      TRICKLE_METRICS_PORT: "9187",
      TRICKLE_METRICS_REQUEST_TIMEOUT_MS: "1500",
      TRICKLE_COORDINATION_DATABASE: "trickle_coord",
    },
    args: [],
  });
  assert.equal(c.databaseUrl, "postgres://app:secret@db.example:5433/main");
  assert.deepEqual(c.databases, ["main", "reporting", "staging"]);
  assert.equal(c.dataDir, "/var/lib/trickle");
  assert.equal(c.host, "0.0.0.0");
  assert.equal(c.port, 9000);
  assert.equal(c.adminToken, "a".repeat(32));
  assert.equal(c.readToken, "r".repeat(32));
  assert.equal(c.maxWorkers, 8);
  assert.equal(c.perDatabaseQuota, 2);
  assert.equal(c.coordinationDatabase, "trickle_coord");
  assert.equal(c.schedulerIntervalMs, 250);
  assert.equal(c.maxConsecutiveErrors, 5);
  assert.equal(c.differentialMaxChangeRatio, 0.3);
  assert.equal(c.scheduleRecommendationMinSamples, 50);
  assert.equal(c.scheduleAlertCooldownSeconds, 60);
  assert.equal(c.metricsPort, 9187);
  assert.equal(c.metricsRequestTimeoutMs, 1500);
  assert.equal(isOpen(c), false);
});

Deno.test("loadConfig: the managed database defaults to the URL's database", async () => {
  const c = await loadConfig({ env: { DATABASE_URL: "postgresql://u@localhost/orders" }, args: [] });
  assert.deepEqual(c.databases, ["orders"]);
  assert.equal(defaultDatabase("postgres://u@localhost"), "postgres");
  assert.equal(defaultDatabase(null), "postgres");
});

Deno.test("loadConfig: empty token and metrics-port variables mean unset", async () => {
  const c = await loadConfig({
    env: { TRICKLE_ADMIN_TOKEN: "", TRICKLE_READ_TOKEN: "", TRICKLE_METRICS_PORT: "" },
    args: [],
  });
  assert.equal(c.adminToken, null);
  assert.equal(c.readToken, null);
  assert.equal(c.metricsPort, null);
});

Deno.test("loadConfig: every bad variable is named in one ConfigError", async () => {
  const bad: Record<string, string> = {
    DATABASE_URL: "mysql://localhost/app",
    TRICKLE_DATABASES: "ok,not a name",
    TRICKLE_PORT: "eighty",
    TRICKLE_MAX_WORKERS: "0",
    TRICKLE_PER_DATABASE_QUOTA: "-1",
    TRICKLE_SCHEDULER_INTERVAL_MS: "1.5",
    TRICKLE_MAX_CONSECUTIVE_ERRORS: "many",
    TRICKLE_DIFFERENTIAL_MAX_CHANGE_RATIO: "-0.1",
    TRICKLE_SCHEDULE_RECOMMENDATION_MIN_SAMPLES: "0",
    TRICKLE_SCHEDULE_ALERT_COOLDOWN_SECONDS: "x",
    TRICKLE_METRICS_PORT: "70000",
    TRICKLE_METRICS_REQUEST_TIMEOUT_MS: "0",
    TRICKLE_ADMIN_TOKEN: "short",
  };
  const e = await configError({ env: bad });
  assert.equal(e.problems.length, Object.keys(bad).length, e.message);
  for (const variable of Object.keys(bad)) {
    assert.ok(
      e.problems.some((p) => p.startsWith(`${variable}:`)),
      `${variable} is not named in:\n${e.message}`,
    );
  }
  // One message, one line per problem, saying what was expected where it can.
  assert.match(e.message, /^Invalid configuration:\n {2}- /);
  assert.match(e.problems.find((p) => p.startsWith("DATABASE_URL:"))!, /postgres:\/\/ URL/);
  assert.match(e.problems.find((p) => p.startsWith("TRICKLE_ADMIN_TOKEN:"))!, /16 characters or more/);
});

Deno.test("loadConfig: a good variable next to bad ones is not reported", async () => {
  const e = await configError({ env: { TRICKLE_PORT: "8081", TRICKLE_MAX_WORKERS: "zero" } });
  assert.deepEqual(e.problems.map((p) => p.split(":")[0]), ["TRICKLE_MAX_WORKERS"]);
});

Deno.test("loadConfig: a read token without an admin token is refused (writes would be open)", async () => {
  const e = await configError({ env: { TRICKLE_READ_TOKEN: "r".repeat(20) } });
  assert.match(e.message, /TRICKLE_READ_TOKEN is set without TRICKLE_ADMIN_TOKEN/);
});

Deno.test("loadConfig: token values and URL passwords never appear in the error", async () => {
  const shortAdmin = "Sh0rtAdm1n";
  const shortRead = "Sh0rtR3ad";
  const password = "hunter2-pw";
  const e = await configError({
    env: {
      TRICKLE_ADMIN_TOKEN: shortAdmin,
      TRICKLE_READ_TOKEN: shortRead,
      DATABASE_URL: `mysql://admin:${password}@db.example/app`,
      TRICKLE_PORT: "bad",
    },
  });
  assert.ok(e.problems.some((p) => p.startsWith("TRICKLE_ADMIN_TOKEN:")), e.message);
  assert.ok(e.problems.some((p) => p.startsWith("TRICKLE_READ_TOKEN:")), e.message);
  assert.ok(e.problems.some((p) => p.startsWith("DATABASE_URL:")), e.message);
  for (const secret of [shortAdmin, shortRead, password]) {
    assert.ok(!e.message.includes(secret), `the error shows ${secret}:\n${e.message}`);
    assert.ok(!e.problems.some((p) => p.includes(secret)));
  }
  // A valid token next to another bad setting is not echoed either.
  const good = "G00dT0ken-0123456789abcdef";
  const e2 = await configError({ env: { TRICKLE_ADMIN_TOKEN: good, TRICKLE_MAX_WORKERS: "none" } });
  assert.ok(!e2.message.includes(good), e2.message);
});

Deno.test("loadConfig: --config reads a JSON file; environment variables win over it", async () => {
  await withConfigFile(
    JSON.stringify({ port: 9090, maxWorkers: 6, databases: ["a", "b"], differentialMaxChangeRatio: 0.5 }),
    async (path) => {
      const c = await loadConfig({ env: {}, args: ["--config", path] });
      assert.equal(c.port, 9090);
      assert.equal(c.maxWorkers, 6);
      assert.deepEqual(c.databases, ["a", "b"]);
      assert.equal(c.differentialMaxChangeRatio, 0.5);
      assert.equal(c.host, "127.0.0.1", "settings absent from the file keep their default");

      const overridden = await loadConfig({ env: { TRICKLE_PORT: "7070" }, args: [`--config=${path}`] });
      assert.equal(overridden.port, 7070);
      assert.equal(overridden.maxWorkers, 6);
    },
  );
});

Deno.test("loadConfig: --config refuses unknown keys, naming each", async () => {
  await withConfigFile(JSON.stringify({ port: 9090, prot: 1, max_workers: 2 }), async (path) => {
    const e = await configError({ args: ["--config", path] });
    assert.equal(e.problems.length, 2, e.message);
    assert.ok(e.problems.some((p) => p.includes(path) && p.includes('unknown setting "prot"')), e.message);
    assert.ok(e.problems.some((p) => p.includes('unknown setting "max_workers"')), e.message);
  });
});

Deno.test("loadConfig: --config names a bad value by its key and file", async () => {
  await withConfigFile(JSON.stringify({ port: "high", maxWorkers: 0, adminToken: "tiny-secret" }), async (path) => {
    const e = await configError({ args: ["--config", path] });
    assert.ok(e.problems.some((p) => p.startsWith(`"port" in ${path}:`)), e.message);
    assert.ok(e.problems.some((p) => p.startsWith(`"maxWorkers" in ${path}:`)), e.message);
    assert.ok(e.problems.some((p) => p.startsWith(`"adminToken" in ${path}:`)), e.message);
    assert.ok(!e.message.includes("tiny-secret"), e.message);
  });
});

Deno.test("loadConfig: --config that is not a JSON object, not JSON, or missing is an error", async () => {
  await withConfigFile("[1, 2]", async (path) => {
    const e = await configError({ args: ["--config", path] });
    assert.match(e.message, /expected a JSON object/);
  });
  await withConfigFile("{ port: 1", async (path) => {
    const e = await configError({ args: ["--config", path] });
    assert.ok(e.problems.some((p) => p.startsWith(`--config ${path}:`)), e.message);
  });
  const missing = `/nonexistent/trickle-${crypto.randomUUID()}.json`;
  const e = await configError({ args: ["--config", missing] });
  assert.ok(e.problems.some((p) => p.startsWith(`--config ${missing}:`)), e.message);
});

Deno.test("loadConfig: metricsSelfCheck is off by default, true/false/1/0 in a variable, anything else refused", async () => {
  assert.equal((await loadConfig({ env: {}, args: [] })).metricsSelfCheck, false);
  for (const [text, want] of [["true", true], ["1", true], ["false", false], ["0", false]] as const) {
    const c = await loadConfig({ env: { TRICKLE_METRICS_SELF_CHECK: text }, args: [] });
    assert.equal(c.metricsSelfCheck, want, text);
  }
  const e = await configError({ env: { TRICKLE_METRICS_SELF_CHECK: "yes" } });
  assert.match(e.message, /TRICKLE_METRICS_SELF_CHECK: true or false/);
});
