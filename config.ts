/**
 * Every setting, read and validated once. Sources, later ones winning: defaults, the optional JSON config file
 * (`--config path`, keys are the setting names below), environment variables `TRICKLE_<NAME>` (and DATABASE_URL).
 * Every bad setting is named in one message.
 */
import { z } from "zod";
import type { LogLevel } from "./log.ts";

export interface Config {
  databaseUrl: string | null;
  databases: string[];
  dataDir: string;
  host: string;
  port: number;
  adminToken: string | null;
  readToken: string | null;
  maxWorkers: number;
  perDatabaseQuota: number;
  coordinationDatabase: string;
  schedulerIntervalMs: number;
  maxConsecutiveErrors: number;
  differentialMaxChangeRatio: number;
  scheduleRecommendationMinSamples: number;
  scheduleAlertCooldownSeconds: number;
  metricsPort: number | null;
  metricsRequestTimeoutMs: number;
  metricsSelfCheck: boolean;
  requestTimeoutMs: number;
  bodyLimitBytes: number;
  historyRetentionDays: number;
  snapshotRetentionMaxAgeSeconds: number;
  snapshotRetentionMaxRows: number;
  logLevel: LogLevel;
  plannerRulesDir: string | null;
  plannerIntervalSeconds: number;
  alertWebhookUrls: string[];
  alertWebhookSecrets: string[];
  alertmanagerUrl: string | null;
  alertMaxAttempts: number;
  alertRetryBaseMs: number;
  alertRetryMaxMs: number;
  alertDeliveryTimeoutMs: number;
}

/** Thrown when settings are invalid; the message names each bad one. */
export class ConfigError extends Error {
  readonly code = "InvalidConfig";
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n  - ${problems.join("\n  - ")}`);
    this.name = "ConfigError";
  }
}

const int = (min: number, max = Number.MAX_SAFE_INTEGER) => z.coerce.number().int().min(min).max(max);
const identifierList = z.preprocess(
  (v) => typeof v === "string" ? v.split(",").map((s) => s.trim()).filter((s) => s !== "") : v,
  z.array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_$-]{0,62}$/, "a database name")).min(1),
);
const booleanFlag = z.preprocess(
  (
    v,
  ) => (typeof v === "string"
    ? ({ true: true, "1": true, false: false, "0": false } as Record<string, boolean>)[v]
    : v),
  z.boolean({ error: "true or false" }),
);
const optionalText = z.preprocess((v) => (v === "" ? null : v), z.string().min(1).nullable());
const commaList = (item: z.ZodType<string>) =>
  z.preprocess(
    (v) => typeof v === "string" ? v.split(",").map((s) => s.trim()).filter((s) => s !== "") : v,
    z.array(item),
  );
const httpUrl = z.string().refine(isHttpUrl, "an http:// or https:// URL");
// Standard Webhooks secrets: "whsec_" and base64 of at least 24 bytes.
const webhookSecret = z.string().regex(/^whsec_[A-Za-z0-9+/]{32,}={0,2}$/, "a whsec_ secret (base64 of 24+ bytes)");

/** Setting name -> [environment variable, schema, default]. */
const SETTINGS = {
  databaseUrl: ["DATABASE_URL", optionalText.refine(isPostgresUrl, "a postgres:// URL"), null],
  databases: ["TRICKLE_DATABASES", identifierList.nullable(), null],
  dataDir: ["TRICKLE_DATA_DIR", z.string().min(1), "./.trickle"],
  host: ["TRICKLE_HOST", z.string().min(1), "127.0.0.1"],
  port: ["TRICKLE_PORT", int(0, 65535), 8080],
  adminToken: [
    "TRICKLE_ADMIN_TOKEN",
    optionalText.refine((v) => v === null || v.length >= 16, "16 characters or more"),
    null,
  ],
  readToken: [
    "TRICKLE_READ_TOKEN",
    optionalText.refine((v) => v === null || v.length >= 16, "16 characters or more"),
    null,
  ],
  maxWorkers: ["TRICKLE_MAX_WORKERS", int(1, 1024), 4],
  perDatabaseQuota: ["TRICKLE_PER_DATABASE_QUOTA", int(0, 1024), 0],
  // Where every instance of the cluster keeps its worker markers (engine/scheduler/pool.ts): the same for all.
  coordinationDatabase: [
    "TRICKLE_COORDINATION_DATABASE",
    z.string().regex(/^[A-Za-z_][A-Za-z0-9_$-]{0,62}$/, "a database name"),
    "postgres",
  ],
  schedulerIntervalMs: ["TRICKLE_SCHEDULER_INTERVAL_MS", int(10, 3_600_000), 1000],
  maxConsecutiveErrors: ["TRICKLE_MAX_CONSECUTIVE_ERRORS", int(1, 1000), 3],
  differentialMaxChangeRatio: ["TRICKLE_DIFFERENTIAL_MAX_CHANGE_RATIO", z.coerce.number().min(0), 0.15],
  scheduleRecommendationMinSamples: ["TRICKLE_SCHEDULE_RECOMMENDATION_MIN_SAMPLES", int(1, 100_000), 20],
  scheduleAlertCooldownSeconds: ["TRICKLE_SCHEDULE_ALERT_COOLDOWN_SECONDS", int(0, 86_400 * 7), 300],
  metricsPort: ["TRICKLE_METRICS_PORT", z.preprocess((v) => (v === "" ? null : v), int(0, 65535).nullable()), null],
  metricsRequestTimeoutMs: ["TRICKLE_METRICS_REQUEST_TIMEOUT_MS", int(1, 600_000), 5000],
  metricsSelfCheck: ["TRICKLE_METRICS_SELF_CHECK", booleanFlag, false],
  requestTimeoutMs: ["TRICKLE_REQUEST_TIMEOUT_MS", int(1, 3_600_000), 30_000],
  bodyLimitBytes: ["TRICKLE_BODY_LIMIT_BYTES", int(1, 1 << 30), 1 << 20],
  historyRetentionDays: ["TRICKLE_HISTORY_RETENTION_DAYS", int(1, 3650), 7],
  // How long, and over how many buffered changes per source, a snapshot keeps its sources' changes (engine/snapshots.ts).
  snapshotRetentionMaxAgeSeconds: ["TRICKLE_SNAPSHOT_RETENTION_MAX_AGE_SECONDS", int(0, 86_400 * 366), 86_400 * 7],
  snapshotRetentionMaxRows: ["TRICKLE_SNAPSHOT_RETENTION_MAX_ROWS", int(0), 10_000_000],
  logLevel: ["TRICKLE_LOG_LEVEL", z.enum(["debug", "info", "warn", "error"]), "info"],
  // A folder of the operator's own planner rule files (docs/rules.md), beside the built-in ones.
  plannerRulesDir: ["TRICKLE_PLANNER_RULES_DIR", optionalText, null],
  plannerIntervalSeconds: ["TRICKLE_PLANNER_INTERVAL_SECONDS", int(1, 86_400), 60],
  alertWebhookUrls: ["TRICKLE_ALERT_WEBHOOK_URLS", commaList(httpUrl), []],
  // One per webhook URL, in order, or one for all of them.
  alertWebhookSecrets: ["TRICKLE_ALERT_WEBHOOK_SECRETS", commaList(webhookSecret), []],
  alertmanagerUrl: ["TRICKLE_ALERTMANAGER_URL", optionalText.refine((v) => v === null || isHttpUrl(v), "a URL"), null],
  alertMaxAttempts: ["TRICKLE_ALERT_MAX_ATTEMPTS", int(1, 100), 8],
  alertRetryBaseMs: ["TRICKLE_ALERT_RETRY_BASE_MS", int(1, 3_600_000), 1000],
  alertRetryMaxMs: ["TRICKLE_ALERT_RETRY_MAX_MS", int(1, 86_400_000), 300_000],
  alertDeliveryTimeoutMs: ["TRICKLE_ALERT_DELIVERY_TIMEOUT_MS", int(1, 600_000), 5000],
} as const;

/** Every setting as [file key, environment variable]: what docs/CONFIGURATION.md must list. */
export function settingNames(): [key: string, variable: string][] {
  return Object.entries(SETTINGS).map(([key, [variable]]) => [key, variable]);
}

function isHttpUrl(v: string): boolean {
  try {
    const u = new URL(v);
    return (u.protocol === "http:" || u.protocol === "https:") && u.hostname !== "";
  } catch {
    return false;
  }
}

function isPostgresUrl(v: string | null): boolean {
  if (v === null) return true;
  try {
    const u = new URL(v);
    return (u.protocol === "postgres:" || u.protocol === "postgresql:") && u.hostname !== "";
  } catch {
    return false;
  }
}

export interface LoadOptions {
  env?: Record<string, string | undefined>;
  args?: string[];
}

/** Reads and validates every setting; throws ConfigError naming each bad one. */
export async function loadConfig(options: LoadOptions = {}): Promise<Config> {
  const env = options.env ?? Deno.env.toObject();
  const args = options.args ?? Deno.args;
  const problems: string[] = [];
  let file: Record<string, unknown> = {};
  const configPath = flagValue(args, "--config");
  if (configPath !== null) {
    try {
      const parsed: unknown = JSON.parse(await Deno.readTextFile(configPath));
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
        problems.push(`--config ${configPath}: expected a JSON object`);
      } else {
        file = parsed as Record<string, unknown>;
        for (const key of Object.keys(file)) {
          if (!(key in SETTINGS)) problems.push(`--config ${configPath}: unknown setting "${key}"`);
        }
      }
    } catch (e) {
      problems.push(`--config ${configPath}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  const out: Record<string, unknown> = {};
  // An empty variable counts as unset (`TRICKLE_PORT=` must not mean port 0).
  const fromEnv = (variable: string) => env[variable] !== undefined && env[variable] !== "";
  for (const [key, [variable, schema, fallback]] of Object.entries(SETTINGS)) {
    const raw = fromEnv(variable) ? env[variable] : key in file ? file[key] : fallback;
    const result = (schema as z.ZodType).safeParse(raw);
    if (result.success) {
      out[key] = result.data;
    } else {
      const source = fromEnv(variable) ? variable : key in file ? `"${key}" in ${configPath}` : key;
      // The value itself is not echoed: it may be a token or a URL with a password.
      problems.push(`${source}: ${result.error.issues.map((i) => i.message).join("; ")}`);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  const config = out as unknown as Config;
  if (config.databases === null || (config.databases as string[] | null)?.length === 0) {
    config.databases = [defaultDatabase(config.databaseUrl)];
  }
  const secrets = config.alertWebhookSecrets.length;
  if (secrets !== 1 && secrets !== config.alertWebhookUrls.length) {
    throw new ConfigError([
      `TRICKLE_ALERT_WEBHOOK_SECRETS: ${secrets} secret(s) for ${config.alertWebhookUrls.length} webhook URL(s); ` +
      `give one per URL, in order, or one for all`,
    ]);
  }
  if (config.adminToken === null && config.readToken !== null) {
    throw new ConfigError(["TRICKLE_READ_TOKEN is set without TRICKLE_ADMIN_TOKEN: writes would be unprotected"]);
  }
  return config;
}

function flagValue(args: string[], flag: string): string | null {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === flag) return args[i + 1] ?? null;
    if (a.startsWith(flag + "=")) return a.slice(flag.length + 1);
  }
  return null;
}

/** The database named in the URL's path, else `postgres`. */
export function defaultDatabase(url: string | null): string {
  if (url === null) return "postgres";
  const path = decodeURIComponent(new URL(url).pathname.replace(/^\//, ""));
  return path === "" ? "postgres" : path;
}

/** True when the service must refuse to listen beyond loopback: no token protects it. */
export function isOpen(config: Pick<Config, "adminToken">): boolean {
  return config.adminToken === null;
}
