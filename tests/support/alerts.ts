/**
 * Shared by the alert tests: a clock the test moves (real time plus an offset, so refreshes and the planner agree), a
 * logger that keeps its lines (to show a secret never reaches them), planning options with given sinks, and a second
 * engine over the same database (a restarted service).
 */
import type { Clock } from "../../engine/clock.ts";
import { DEFAULT_PLANNING, Engine, type PlanningOptions } from "../../engine/engine.ts";
import type { AlertSinks } from "../../engine/alerts/outbox.ts";
import { loadRules } from "../../engine/planner/rules.ts";
import type { Logger } from "../../log.ts";
import { DEFAULT_SETTINGS, type TestService } from "./service.ts";

/** Real time plus an offset the test moves forward. */
export class OffsetClock implements Clock {
  offsetMs = 0;
  now(): Date {
    return new Date(Date.now() + this.offsetMs);
  }
  advance(ms: number): void {
    this.offsetMs += ms;
  }
}

/** A logger keeping every line as JSON text. */
export function capturingLogger(lines: string[], base: Record<string, unknown> = {}): Logger {
  const write = (level: string) => (msg: string, fields?: Record<string, unknown>) =>
    void lines.push(JSON.stringify({ level, msg, ...base, ...fields }, (_, v) => v instanceof Error ? v.message : v));
  return {
    debug: write("debug"),
    info: write("info"),
    warn: write("warn"),
    error: write("error"),
    child: (fields) => capturingLogger(lines, { ...base, ...fields }),
  };
}

/** Built-in rules, the given sinks, fast retries. */
export async function planning(
  sinks: Partial<AlertSinks>,
  delivery: Partial<PlanningOptions["delivery"]> = {},
): Promise<PlanningOptions> {
  return {
    rules: await loadRules(null),
    settings: { ...DEFAULT_PLANNING.settings, sinks: { webhooks: [], alertmanagerUrl: null, ...sinks } },
    delivery: { ...DEFAULT_PLANNING.delivery, retryBaseMs: 200, ...delivery },
  };
}

/** Another engine over the service's database, as a restarted service would open it. */
export async function reopen(
  s: TestService,
  options: { clock: Clock; planning: PlanningOptions; log: Logger },
): Promise<Engine> {
  return await Engine.open({
    url: s.db.serverUrl,
    databases: [s.db.name],
    settings: { ...DEFAULT_SETTINGS, coordinationDatabase: s.db.name },
    log: options.log,
    clock: options.clock,
    poolSize: 3,
    planning: options.planning,
  });
}
