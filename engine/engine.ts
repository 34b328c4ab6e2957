/** The engine: the managed databases (pools, migrations) and the scheduler over them. */
import { connect, type Sql, urlForDatabase } from "../db/pool.ts";
import { checkServerVersion, latestVersion, migrate, newestMigration } from "../db/migrate.ts";
import { quoteIdent } from "../db/identifiers.ts";
import type { Clock } from "./clock.ts";
import type { DatabaseContext, EngineSettings } from "./context.ts";
import { databaseNotFound } from "./errors.ts";
import { EngineEvents } from "./events.ts";
import { MetricsRegistry } from "./metrics/registry.ts";
import type { Logger } from "../log.ts";
import { Scheduler, type SchedulerSettings } from "./scheduler/scheduler.ts";
import { Planner, type PlannerOptions } from "./planner/planner.ts";
import { prunesSettled } from "./refresh/prune.ts";
import { loadRules } from "./planner/rules.ts";
import { AlertDelivery, type DeliverySettings } from "./alerts/delivery.ts";

/** The planner's rules and settings and the alert delivery's; defaults: built-in rules, no sinks. */
export interface PlanningOptions extends PlannerOptions {
  delivery: Omit<DeliverySettings, "sinks">;
}

/** Planning defaults (docs/CONFIGURATION.md): what a test or tool gets without saying more. */
export const DEFAULT_PLANNING: Omit<PlanningOptions, "rules"> = {
  settings: {
    minSamples: 20,
    cooldownSeconds: 300,
    intervalSeconds: 60,
    sinks: { webhooks: [], alertmanagerUrl: null },
  },
  delivery: { maxAttempts: 8, retryBaseMs: 1000, retryMaxMs: 300_000, timeoutMs: 5000, pollMs: 500 },
};

export interface EngineOptions {
  url: string;
  databases: string[];
  settings: EngineSettings & SchedulerSettings;
  log: Logger;
  clock: Clock;
  /** Connections per database pool. */
  poolSize?: number;
  /** The planner and alerts; default DEFAULT_PLANNING with the built-in rules. */
  planning?: PlanningOptions;
}

/** The managed databases and their scheduler. */
export class Engine {
  readonly scheduler: Scheduler;
  /** In-memory metrics, fed by the events from the first one on. */
  readonly metrics: MetricsRegistry;
  /** The schedule planner: passes after ticks, recommendations, alert decisions. */
  readonly planner: Planner;
  /** Sends the alert outbox to webhooks and Alertmanager (started by main.ts). */
  readonly alerts: AlertDelivery;
  readonly #contexts: Map<string, DatabaseContext>;
  readonly #defaultName: string;

  private constructor(
    contexts: DatabaseContext[],
    parts: { scheduler: Scheduler; metrics: MetricsRegistry; planner: Planner; alerts: AlertDelivery },
  ) {
    this.metrics = parts.metrics;
    this.#contexts = new Map(contexts.map((c) => [c.name, c]));
    this.#defaultName = contexts[0]!.name;
    this.scheduler = parts.scheduler;
    this.planner = parts.planner;
    this.alerts = parts.alerts;
  }

  /** Connects to each managed database (creating it when missing and allowed), migrates it, builds the scheduler. */
  static async open(options: EngineOptions): Promise<Engine> {
    const contexts: DatabaseContext[] = [];
    const events = new EngineEvents(options.log);
    const metrics = new MetricsRegistry(events);
    try {
      for (const name of options.databases) {
        await ensureDatabase(options.url, name, options.log);
        const url = urlForDatabase(options.url, name);
        const sql = connect(url, { max: options.poolSize ?? 10 });
        try {
          await checkServerVersion(sql);
          const applied = await migrate(sql);
          if (applied.length > 0) options.log.info("migrated", { database: name, versions: applied });
          const [row] = await sql<
            { oid: number }[]
          >`SELECT oid::int8 AS oid FROM pg_database WHERE datname = current_database()`;
          contexts.push({
            name,
            oid: row!.oid,
            sql,
            url,
            settings: options.settings,
            log: options.log.child({ database: name }),
            clock: options.clock,
            events,
          });
        } catch (e) {
          await sql.end({ timeout: 1 });
          throw e;
        }
      }
    } catch (e) {
      await Promise.all(contexts.map((c) => c.sql.end({ timeout: 1 })));
      throw e;
    }
    const scheduler = new Scheduler(contexts, options.settings, {
      log: options.log,
      clock: options.clock,
      url: options.url,
    });
    const planning = options.planning ?? { ...DEFAULT_PLANNING, rules: await loadRules(null) };
    const planner = new Planner(contexts, planning);
    planner.attach(events);
    const alerts = new AlertDelivery(contexts, { ...planning.delivery, sinks: planning.settings.sinks }, {
      log: options.log,
      clock: options.clock,
    });
    planner.onAlerts = () => alerts.kick();
    return new Engine(contexts, { scheduler, metrics, planner, alerts });
  }

  /** Names of the managed databases, the default first. */
  get databaseNames(): string[] {
    return [...this.#contexts.keys()];
  }

  /** The context of a managed database (the default when `name` is omitted); 404 otherwise. */
  db(name?: string | null): DatabaseContext {
    const ctx = this.#contexts.get(name ?? this.#defaultName);
    if (ctx === undefined) throw databaseNotFound(name ?? "", this.databaseNames);
    return ctx;
  }

  /** All database contexts. */
  all(): DatabaseContext[] {
    return [...this.#contexts.values()];
  }

  /** Readiness: every database answers and has the schema this build expects. */
  async readiness(): Promise<{ ready: boolean; databases: { name: string; ok: boolean; detail: string }[] }> {
    const latest = await latestVersion();
    const databases = await Promise.all(
      this.all().map(async (c) => {
        try {
          const { version: v, release } = await withTimeout(newestMigration(c.sql), 2000);
          const at = `schema version ${v}${release === null ? "" : ` (trickle ${release})`}`;
          return v === latest
            ? { name: c.name, ok: true, detail: at }
            : { name: c.name, ok: false, detail: `${at}, expected ${latest}` };
        } catch (e) {
          return { name: c.name, ok: false, detail: `unreachable: ${e instanceof Error ? e.message : String(e)}` };
        }
      }),
    );
    return { ready: databases.every((d) => d.ok), databases };
  }

  /** Stops the scheduler (finishing or rolling back running refreshes) and closes every pool. */
  async close(graceMs = 10_000): Promise<void> {
    await this.scheduler.stop(graceMs);
    await this.planner.stop();
    await this.alerts.stop();
    await Promise.all(this.all().map(prunesSettled));
    // Closing a pool ends its connections; a refresh still running is rolled back by the server. A connection that
    // failed to connect (server gone) never ends by itself in postgres.js: the timeout bounds it, briefly, since
    // nothing else runs on the pools by now.
    await Promise.all(this.all().map((c) => c.sql.end({ timeout: 1 })));
  }
}

async function ensureDatabase(url: string, name: string, log: Logger): Promise<void> {
  const admin: Sql = connect(url, { max: 1 });
  try {
    const [exists] = await admin`SELECT 1 FROM pg_database WHERE datname = ${name}`;
    if (exists !== undefined) return;
    const [can] = await admin<{ ok: boolean }[]>`
      SELECT rolcreatedb OR rolsuper AS ok FROM pg_roles WHERE rolname = current_user`;
    if (can?.ok !== true) {
      throw new Error(
        `Database "${name}" does not exist and this role may not create it; create it or fix TRICKLE_DATABASES`,
      );
    }
    // CREATE DATABASE takes no parameters; the name was validated as an identifier by config.ts and is quoted.
    await admin.unsafe(`CREATE DATABASE ${quoteIdent(name)}`).catch((e) => {
      if ((e as { code?: string }).code !== "42P04") throw e; // created meanwhile by another instance
    });
    log.info("created database", { database: name });
  } finally {
    await admin.end({ timeout: 1 });
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms))),
  ]);
}
