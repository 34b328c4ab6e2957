/**
 * Wiring only: config -> ports checked -> databases -> migrations -> engine -> HTTP listeners (the API, and the
 * metrics listener when `metricsPort` is set); graceful shutdown on SIGINT/SIGTERM.
 */
import { ConfigError, loadConfig } from "./config.ts";
import { startEmbedded } from "./db/embedded.ts";
import { isDriverConnectionLoss, isDriverWriteOnClosedSocket } from "./db/pool.ts";
import { systemClock } from "./engine/clock.ts";
import { DEFAULT_PLANNING, Engine } from "./engine/engine.ts";
import { loadRules } from "./engine/planner/rules.ts";
import { createLogger, type Logger } from "./log.ts";
import { createApp } from "./routes/app.ts";
import { listen, type Listener, PortInUse } from "./routes/listener.ts";
import { createMetricsApp } from "./routes/metrics_app.ts";
import { VERSION } from "./version.ts";

/**
 * Fails with PortInUse when a listen port is taken, before any other start-up work: a taken port must not cost an
 * embedded server's start and migrations first. The port is bound and released at once; losing it to another
 * process before the listener opens is still caught there.
 */
function checkPortsFree(host: string, ports: { port: number; setting: string }[]): void {
  for (const p of ports) {
    if (p.port === 0) continue; // any free port
    try {
      Deno.listen({ hostname: host, port: p.port }).close();
    } catch (e) {
      if (e instanceof Deno.errors.AddrInUse) throw new PortInUse(host, p);
      throw e;
    }
  }
}

/** A failure's reason for the log, never empty (a bare rejection or an error without a message says what it was). */
function reason(e: unknown): string {
  if (e instanceof Error && e.message.trim() !== "") return e.message;
  const text = e instanceof Error ? e.name : typeof e === "string" ? e : JSON.stringify(e) ?? String(e);
  return text !== undefined && text.trim() !== "" ? text : "an unknown error (nothing was reported)";
}

function logStartFailure(log: Logger, msg: string, e: unknown): void {
  const code = (e as { code?: unknown } | null)?.code;
  log.error(msg, { error: { message: reason(e), ...(typeof code === "string" ? { code } : {}) } });
}

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1"]);

async function main(): Promise<number> {
  let config;
  try {
    config = await loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(e.message);
      return 2;
    }
    throw e;
  }
  const log = createLogger(config.logLevel, { service: "trickle" });
  log.info("starting", { version: VERSION });
  // A session the server ended mid-transaction must not end the service with it (db/pool.ts says why).
  globalThis.addEventListener("error", (event) => {
    if (!isDriverWriteOnClosedSocket(event.error)) return;
    event.preventDefault();
    log.warn("a database connection closed under a write; its queries failed and the pool reconnects", {
      error: event.error.message,
    });
  });
  globalThis.addEventListener("unhandledrejection", (event) => {
    if (!isDriverConnectionLoss(event.reason)) return;
    event.preventDefault();
    // The statement's text (the driver keeps it on the error) says which one nobody awaited; never its parameters.
    const query = String((event.reason as { query?: unknown }).query ?? "").replace(/\s+/g, " ").slice(0, 120);
    log.warn("a database query failed with its lost connection after its caller had failed; the pool reconnects", {
      error: (event.reason as Error).message,
      query,
    });
  });

  let host = config.host;
  if (config.adminToken === null) {
    if (!LOOPBACK.has(host)) log.warn("no TRICKLE_ADMIN_TOKEN: ignoring TRICKLE_HOST, listening on loopback", { host });
    host = "127.0.0.1";
    log.warn("no token configured: the API is open and listens on 127.0.0.1 only");
  }
  const ports = [{ port: config.port, setting: "TRICKLE_PORT" }];
  if (config.metricsPort !== null) ports.push({ port: config.metricsPort, setting: "TRICKLE_METRICS_PORT" });
  try {
    checkPortsFree(host, ports);
  } catch (e) {
    logStartFailure(log, "could not listen", e);
    return 1;
  }

  // Rules first: a bad rule file stops the service before any database work, naming the file and the problem.
  let rules;
  try {
    rules = await loadRules(config.plannerRulesDir);
  } catch (e) {
    logStartFailure(log, "could not load the planner rules", e);
    return 1;
  }

  let embedded = null;
  if (config.databaseUrl === null) {
    try {
      embedded = await startEmbedded({ dataDir: config.dataDir, log });
    } catch (e) {
      logStartFailure(log, "could not start the embedded PostgreSQL", e);
      return 1;
    }
  }
  const stopEmbedded = async () => {
    if (embedded !== null) {
      await embedded.stop().catch((e) => log.error("embedded PostgreSQL stop failed", { error: e }));
    }
  };
  let engine: Engine;
  try {
    engine = await Engine.open({
      url: config.databaseUrl ?? embedded!.url,
      databases: config.databases,
      settings: config,
      log,
      clock: systemClock,
      planning: {
        rules,
        settings: {
          minSamples: config.scheduleRecommendationMinSamples,
          cooldownSeconds: config.scheduleAlertCooldownSeconds,
          intervalSeconds: config.plannerIntervalSeconds,
          sinks: {
            // One secret per URL in order, or the one secret for all (config.ts checked the counts).
            webhooks: config.alertWebhookUrls.map((url, i) => ({
              url,
              secret: config.alertWebhookSecrets[i] ?? config.alertWebhookSecrets[0]!,
            })),
            alertmanagerUrl: config.alertmanagerUrl,
          },
        },
        delivery: {
          ...DEFAULT_PLANNING.delivery,
          maxAttempts: config.alertMaxAttempts,
          retryBaseMs: config.alertRetryBaseMs,
          retryMaxMs: config.alertRetryMaxMs,
          timeoutMs: config.alertDeliveryTimeoutMs,
        },
      },
    });
  } catch (e) {
    logStartFailure(log, "could not open the databases", e);
    await stopEmbedded();
    return 1;
  }

  let shuttingDown = false;
  const app = createApp({
    engine,
    log,
    adminToken: config.adminToken,
    readToken: config.readToken,
    bodyLimitBytes: config.bodyLimitBytes,
    requestTimeoutMs: config.requestTimeoutMs,
    metricsRequestTimeoutMs: config.metricsRequestTimeoutMs,
    metricsSelfCheck: config.metricsSelfCheck,
    shuttingDown: () => shuttingDown,
  });

  const listeners: Listener[] = [];
  try {
    const main = await listen(app, { hostname: host, port: config.port, setting: "TRICKLE_PORT", log, name: "main" });
    listeners.push(main);
    log.info("listening", { url: `http://${host}:${main.port}`, databases: engine.databaseNames });
    if (config.metricsPort !== null) {
      const metricsApp = createMetricsApp({
        engine,
        log,
        adminToken: config.adminToken,
        readToken: config.readToken,
        bodyLimitBytes: config.bodyLimitBytes,
        metricsRequestTimeoutMs: config.metricsRequestTimeoutMs,
        metricsSelfCheck: config.metricsSelfCheck,
        shuttingDown: () => shuttingDown,
      });
      const metrics = await listen(metricsApp, {
        hostname: host,
        port: config.metricsPort,
        setting: "TRICKLE_METRICS_PORT",
        log,
        name: "metrics",
      });
      listeners.push(metrics);
      log.info("metrics listening", { url: `http://${host}:${metrics.port}` });
    }
  } catch (e) {
    // A port taken between the check at start and now.
    logStartFailure(log, "could not listen", e);
    await Promise.all(listeners.map((l) => l.shutdown()));
    await engine.close();
    await stopEmbedded();
    return 1;
  }
  engine.scheduler.start();
  engine.alerts.start();

  const done = Promise.withResolvers<number>();
  const shutdown = async (signal: string) => {
    if (shuttingDown) return;
    shuttingDown = true;
    log.info("shutting down", { signal });
    await Promise.all(listeners.map((l) => l.shutdown())); // stop accepting; let requests in flight finish
    await engine.close(); // finish (or roll back) running refreshes, close pools
    await stopEmbedded();
    log.info("stopped");
    done.resolve(0);
  };
  Deno.addSignalListener("SIGINT", () => void shutdown("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => void shutdown("SIGTERM"));
  return await done.promise;
}

if (import.meta.main) {
  // Anything main() did not expect still exits 1 with its reason.
  Deno.exit(await main().catch((e) => (console.error(`trickle stopped: ${reason(e)}`), 1)));
}
