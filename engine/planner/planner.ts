/**
 * The planner in the service (docs/SQL_REFERENCE.md, schedule planner). After each scheduler tick of a database this
 * instance leads (the `tick_done` event), it checks the alerts of stream tables with a freshness deadline, and every
 * `intervalSeconds` it makes a full pass that stores every recommendation. A refresh that makes data fresh again
 * resolves `freshness_deadline_missed` in its own transaction (the `onRefreshCommitting` hook).
 */
import type { DatabaseContext } from "../context.ts";
import type { EngineEvents, RefreshFacts } from "../events.ts";
import type { Tx } from "../../db/pool.ts";
import { alertStates, writeAlert } from "../alerts/outbox.ts";
import { recordAlert } from "../metrics/registry.ts";
import { type HistoryCache, type PassResult, type PlannerSettings, planPass } from "./pass.ts";
import { RuleSet } from "./recommend.ts";
import type { LoadedRule } from "./rules.ts";

export interface PlannerOptions {
  rules: LoadedRule[];
  settings: PlannerSettings & { intervalSeconds: number };
}

/** Runs planner passes for the databases this instance leads. */
export class Planner {
  readonly rules: RuleSet;
  readonly settings: PlannerOptions["settings"];
  readonly #dbs: Map<string, DatabaseContext>;
  readonly #lastFull = new Map<string, number>();
  readonly #caches = new Map<string, HistoryCache>();
  readonly #running = new Map<string, Promise<void>>();
  readonly #unsubscribe: (() => void)[] = [];
  /** Called after a pass writes alerts (the delivery sends them without waiting for its next poll). */
  onAlerts: () => void = () => {};

  constructor(dbs: DatabaseContext[], options: PlannerOptions) {
    this.rules = new RuleSet(options.rules);
    this.settings = options.settings;
    this.#dbs = new Map(dbs.map((d) => [d.name, d]));
  }

  /** Subscribes to the engine's events: ticks drive passes, refreshes resolve missed deadlines. */
  attach(events: EngineEvents): void {
    this.#unsubscribe.push(
      events.subscribe("tick_done", (e) => this.#afterTick(e.db_name)),
      events.onRefreshCommitting((tx, facts) => this.#resolveMissed(tx, facts)),
    );
  }

  /** Stops reacting and waits for passes in flight. */
  async stop(): Promise<void> {
    for (const u of this.#unsubscribe.splice(0)) u();
    await Promise.allSettled([...this.#running.values()]);
  }

  /** Waits for the passes in flight (the bench, between its blocks). */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.#running.values()]);
  }

  /** One pass over a database now: `recommend` stores recommendations too (tests and the bench call it). */
  async pass(ctx: DatabaseContext, options: { recommend: boolean }): Promise<PassResult> {
    const cache = this.#caches.get(ctx.name) ?? new Map();
    this.#caches.set(ctx.name, cache);
    const result = await planPass(ctx, {
      rules: this.rules,
      settings: this.settings,
      recommend: options.recommend,
      cache,
    });
    if (options.recommend) this.#lastFull.set(ctx.name, ctx.clock.now().getTime());
    // Alerts raised (pg_trickle_alerts_total), counted once committed; resolves are not raises.
    for (const a of result.alerts) if (a.split(":")[1] === "firing") recordAlert(ctx, a.split(":")[0]!);
    if (result.alerts.length > 0) {
      ctx.log.info("alerts", { alerts: result.alerts });
      this.onAlerts();
    }
    return result;
  }

  #afterTick(dbName: string): void {
    const ctx = this.#dbs.get(dbName);
    if (ctx === undefined || this.#running.has(dbName)) return; // a pass still running covers this tick
    const last = this.#lastFull.get(dbName) ?? 0;
    const recommend = ctx.clock.now().getTime() - last >= this.settings.intervalSeconds * 1000;
    const run = this.pass(ctx, { recommend })
      .then(() => {})
      .catch((e) => ctx.log.error("planner pass failed", { error: e }))
      .finally(() => this.#running.delete(dbName));
    this.#running.set(dbName, run);
  }

  /** Inside a refresh's transaction: data fresh again within its deadline resolves a firing missed-deadline alert. */
  async #resolveMissed(tx: Tx, facts: RefreshFacts): Promise<void> {
    const state = (await alertStates(tx, [facts.pgt_id])).get(facts.pgt_id)?.get("freshness_deadline_missed");
    if (state?.active !== true) return;
    const [st] = await tx<{ freshness_deadline_ms: number | null }[]>`
      SELECT freshness_deadline_ms FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${facts.pgt_id}`;
    const deadline = st?.freshness_deadline_ms === null || st === undefined ? null : Number(st.freshness_deadline_ms);
    // The new data is as old as the refresh took; a refresh slower than the deadline leaves it missed.
    if (deadline !== null && facts.duration_ms > deadline) return;
    const ctx = this.#dbs.get(facts.db_name);
    if (ctx === undefined) return;
    await writeAlert(tx, {
      pgt_id: facts.pgt_id,
      stream_table: facts.stream_table,
      kind: "freshness_deadline_missed",
      state: "resolved",
      severity: "critical",
      db_name: facts.db_name,
      db_oid: facts.db_oid,
      figures: {
        predicted_ms: null,
        sla_ms: deadline,
        staleness_ms: Math.round(facts.duration_ms),
        pending_changes: 0,
      },
    }, { now: ctx.clock.now(), sinks: this.settings.sinks });
    // Delivery looks at the outbox after the refresh commits.
    queueMicrotask(() => this.onAlerts());
  }
}
