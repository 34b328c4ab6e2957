/** A real engine and HTTP app over fresh test databases, for integration tests. */
import type { OpenAPIHono } from "@hono/zod-openapi";
import { Engine, type PlanningOptions } from "../../engine/engine.ts";
import type { Clock } from "../../engine/clock.ts";
import { systemClock } from "../../engine/clock.ts";
import { createLogger, silentLogger } from "../../log.ts";
import type { EngineSettings } from "../../engine/context.ts";
import type { SchedulerSettings } from "../../engine/scheduler/scheduler.ts";
import { createApp } from "../../routes/app.ts";
import type { AppEnv } from "../../routes/env.ts";
import { dropDatabase, freshDatabase, type TestDatabase } from "./db.ts";

export const DEFAULT_SETTINGS: EngineSettings & SchedulerSettings = {
  maxConsecutiveErrors: 3,
  differentialMaxChangeRatio: 0.15,
  historyRetentionDays: 7,
  snapshotRetentionMaxAgeSeconds: 86_400 * 7,
  snapshotRetentionMaxRows: 10_000_000,
  maxWorkers: 4,
  perDatabaseQuota: 0,
  schedulerIntervalMs: 100,
};

export interface TestService {
  engine: Engine;
  app: OpenAPIHono<AppEnv>;
  /** The first (default) database. */
  db: TestDatabase;
  /** Extra managed databases, by name. */
  databases: string[];
  request(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Response>;
  close(): Promise<void>;
}

export interface TestServiceOptions {
  settings?: Partial<EngineSettings & SchedulerSettings>;
  adminToken?: string | null;
  readToken?: string | null;
  bodyLimitBytes?: number;
  requestTimeoutMs?: number;
  /** Further databases to manage beside the default one (created by the engine). */
  extraDatabases?: number;
  clock?: Clock;
  /** The planner's rules and settings and the alert sinks (default: built-in rules, no sinks). */
  planning?: PlanningOptions;
}

/** Opens an engine over a fresh database (the scheduler is not started: tests drive it). */
export async function startTestService(options: TestServiceOptions = {}): Promise<TestService> {
  const db = await freshDatabase();
  const extra = Array.from(
    { length: options.extraDatabases ?? 0 },
    () => `${db.name}_x${crypto.randomUUID().slice(0, 6)}`,
  );
  const log = Deno.env.get("TEST_LOG") ? createLogger("debug") : silentLogger;
  const engine = await Engine.open({
    url: db.serverUrl,
    databases: [db.name, ...extra],
    // Each test file coordinates its workers in its own database: parallel test files are separate "clusters".
    settings: { ...DEFAULT_SETTINGS, coordinationDatabase: db.name, ...options.settings },
    log,
    clock: options.clock ?? systemClock,
    poolSize: 5,
    ...(options.planning === undefined ? {} : { planning: options.planning }),
  });
  const app = createApp({
    engine,
    log,
    adminToken: options.adminToken ?? null,
    readToken: options.readToken ?? null,
    bodyLimitBytes: options.bodyLimitBytes ?? 1 << 20,
    requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
    metricsSelfCheck: true, // every test scrape is checked by the validator before it is served
  });
  return {
    engine,
    app,
    db,
    databases: extra,
    request: (method, path, body, headers = {}) =>
      Promise.resolve(app.request(path, {
        method,
        headers: body === undefined ? headers : { "content-type": "application/json", ...headers },
        ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
      })),
    close: async () => {
      await engine.close(2000);
      await db.drop();
      for (const name of extra) await dropDatabase(name);
    },
  };
}

/** Test options for files whose tests hold pools open across steps. */
export const dbTest = { sanitizeOps: false, sanitizeResources: false };
