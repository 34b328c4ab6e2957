/**
 * The scheduler (docs/architecture.md, scheduler). Every tick, for each database this instance leads (leadership.ts), it finds
 * the stream tables that are due (tick.ts) and queues refresh jobs; the worker pool (pool.ts) runs them within the
 * cluster's `max_workers` and each database's quota, its state kept in PostgreSQL. A job waits for the jobs of the
 * stream tables it reads, so stream tables on stream tables refresh in dependency order.
 */
import type { Clock } from "../clock.ts";
import type { DatabaseContext } from "../context.ts";
import type { Logger } from "../../log.ts";
import { RefreshBusy, refreshStreamTable } from "../refresh/refresh.ts";
import { removeAbandonedCreation } from "../recovery.ts";
import { readClusterWorkers } from "../cluster.ts";
import { Leadership } from "./leadership.ts";
import { type ClusterWorkers, WorkerPool } from "./pool.ts";
import { type DueStreamTable, findDue, nextDueAt, orderByDependencies, pruneHistory } from "./tick.ts";

/**
 * How long stop() waits for a tick in progress. A tick only reads the catalog; one still running after this is
 * waiting for a connection to a server that does not answer, and is left behind (the pools' end closes it).
 */
const TICK_STOP_WAIT_MS = 500;

/** Tries of a scheduled refresh that finds its stream table locked, and the pause between them (see #refreshUnlessBusy). */
const BUSY_RETRIES = 4;
const BUSY_RETRY_MS = 50;
export interface SchedulerSettings {
  maxWorkers: number;
  perDatabaseQuota: number;
  schedulerIntervalMs: number;
  /** The database whose pg_stat_activity holds the cluster's worker state (see pool.ts); default `postgres`. */
  coordinationDatabase?: string;
}

/** What this instance's worker pool is doing for one database, as of now. */
export interface WorkerState {
  db_name: string;
  db_oid: number;
  leader: boolean;
  workers_active: number;
  workers_queued: number;
  quota: number;
}

interface DbState {
  ctx: DatabaseContext;
  leadership: Leadership;
  /** Jobs created and not yet running (waiting for upstream jobs or a worker). */
  queued: number;
  /** pgt_id -> the job refreshing it, while queued or running. */
  inflight: Map<number, Promise<void>>;
  lastHistoryPrune: number;
}

/** Runs refresh jobs on schedule for every managed database this instance leads. */
export class Scheduler {
  readonly #dbs: DbState[];
  readonly #settings: SchedulerSettings;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #pool: WorkerPool;
  #timer: ReturnType<typeof setTimeout> | null = null;
  /** When the pending timer fires (ms since the epoch, on the scheduler's clock). */
  #timerAt: number | null = null;
  /** The earliest due time heard of while a tick ran, for the timer set after it. */
  #wakeAfterTick: number | null = null;
  #ticking: Promise<void> | null = null;
  #stopped = false;

  constructor(
    databases: DatabaseContext[],
    settings: SchedulerSettings,
    deps: { log: Logger; clock: Clock; url: string },
  ) {
    this.#dbs = databases.map((ctx) => ({
      ctx,
      leadership: new Leadership(ctx, deps.log),
      queued: 0,
      inflight: new Map(),
      lastHistoryPrune: 0,
    }));
    this.#settings = settings;
    this.#log = deps.log;
    this.#clock = deps.clock;
    this.#pool = new WorkerPool(databases.map((c) => ({ oid: c.oid, name: c.name })), {
      url: deps.url,
      coordinationDatabase: settings.coordinationDatabase ?? "postgres",
      settings,
      log: deps.log,
    });
  }

  /** The configured per-database quota, or the fair share of this instance's databases. */
  quota(): number {
    return this.#settings.perDatabaseQuota > 0
      ? Math.min(this.#settings.perDatabaseQuota, this.#settings.maxWorkers)
      : Math.ceil(this.#settings.maxWorkers / Math.max(1, this.#dbs.length));
  }

  /**
   * Starts ticking: every `schedulerIntervalMs`, and earlier when a stream table falls due sooner (the earliest
   * `next_due_at` read after each tick, and after each scheduled refresh), so a short schedule is kept to its time
   * rather than to the next tick.
   */
  start(): void {
    const loop = async () => {
      this.#timer = this.#timerAt = null;
      if (this.#stopped) return;
      this.#wakeAfterTick = null;
      this.#ticking = this.tick().catch((e) => this.#log.error("scheduler tick failed", { error: e }));
      await this.#ticking;
      this.#ticking = null;
      if (this.#stopped) return;
      const interval = this.#clock.now().getTime() + this.#settings.schedulerIntervalMs;
      this.#setTimer(Math.min(interval, this.#wakeAfterTick ?? interval), loop);
    };
    this.#loop = loop;
    this.#setTimer(this.#clock.now().getTime(), loop);
  }

  #loop: (() => Promise<void>) | null = null;

  #setTimer(at: number, loop: () => Promise<void>): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timerAt = at;
    // A few ms late rather than early: a stream table is due when next_due_at <= now.
    this.#timer = setTimeout(loop, Math.max(0, at - this.#clock.now().getTime() + 5));
  }

  /** Brings the next tick forward to `at` when that is sooner (while a tick runs, to right after it). */
  #wakeBy(at: Date | null): void {
    if (at === null || this.#stopped || this.#loop === null) return;
    const ms = at.getTime();
    if (this.#ticking !== null || this.#timer === null) {
      this.#wakeAfterTick = Math.min(this.#wakeAfterTick ?? ms, ms);
      return;
    }
    if (this.#timerAt !== null && this.#timerAt <= ms) return;
    this.#setTimer(ms, this.#loop);
  }

  /** Stops queuing, waits for running refreshes (up to `graceMs`), and gives up leadership. */
  async stop(graceMs = 10_000): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    let tickTimer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.#ticking, new Promise((r) => (tickTimer = setTimeout(r, TICK_STOP_WAIT_MS)))]);
    clearTimeout(tickTimer);
    const jobs = this.#dbs.flatMap((d) => [...d.inflight.values()]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.allSettled(jobs),
      new Promise((r) => (timer = setTimeout(r, graceMs))),
    ]);
    clearTimeout(timer);
    for (const d of this.#dbs) await d.leadership.resign();
    await this.#pool.close();
  }

  /** This instance's worker use per database. */
  workers(): WorkerState[] {
    return this.#dbs.map((d) => ({
      db_name: d.ctx.name,
      db_oid: d.ctx.oid,
      leader: d.leadership.leading,
      workers_active: this.#pool.local(d.ctx.oid).active,
      workers_queued: d.queued,
      quota: this.quota(),
    }));
  }

  /** The cluster's workers per database, queues, quotas and leaders, read from PostgreSQL (any instance). */
  async clusterWorkers(): Promise<ClusterWorkers> {
    const coordinationDatabase = await this.#pool.coordinationDatabase();
    return await readClusterWorkers(this.#dbs.map((d) => d.ctx), { coordinationDatabase });
  }

  /** The database whose pg_stat_activity holds the cluster's worker state. */
  coordinationDatabase(): Promise<string> {
    return this.#pool.coordinationDatabase();
  }

  /** One pass: for each database this instance leads, queue the due stream tables. Resolves once queued. */
  async tick(): Promise<void> {
    const found: { d: DbState; tables: DueStreamTable[]; t0: number }[] = [];
    for (const d of this.#dbs) {
      if (this.#stopped) return;
      const t0 = performance.now();
      try {
        const leading = await d.leadership.lead(() => this.#stopped);
        await this.#pool.setLeading(d.ctx.oid, leading);
        if (leading) {
          const now = this.#clock.now();
          found.push({ d, tables: await findDue(d.ctx.sql, now), t0 });
          this.#wakeBy(await nextDueAt(d.ctx.sql, now));
        }
      } catch (e) {
        this.#log.error("scheduling failed", { database: d.ctx.name, error: e });
      }
    }
    // Every database's due jobs are queued in one synchronous pass, so the pool's next admission sees all the queues:
    // queued one database at a time, the first would be lent every free slot before the others' jobs arrived.
    const counts = found.map(({ d, tables }) => this.#queueDue(d, tables));
    for (const [i, { d, t0 }] of found.entries()) {
      try {
        d.lastHistoryPrune = await pruneHistory(d.ctx, d.lastHistoryPrune);
        d.ctx.events.emit({
          type: "tick_done",
          db_name: d.ctx.name,
          db_oid: d.ctx.oid,
          ...counts[i]!,
          duration_ms: performance.now() - t0,
        });
      } catch (e) {
        this.#log.error("scheduling failed", { database: d.ctx.name, error: e });
      }
    }
  }

  /** Waits until every queued or running job has finished (tests). */
  async idle(): Promise<void> {
    while (this.#dbs.some((d) => d.inflight.size > 0)) {
      await Promise.allSettled(this.#dbs.flatMap((d) => [...d.inflight.values()]));
    }
  }

  #queueDue(d: DbState, tables: DueStreamTable[]): { due: number; queued: number } {
    const upstream = new Map(tables.map((t) => [t.pgt_id, t.upstream]));
    for (const st of tables) {
      if (st.status !== "INITIALIZING" || d.inflight.has(st.pgt_id) || this.#stopped) continue;
      const job = this.#recover(d, st.pgt_id).finally(() => d.inflight.delete(st.pgt_id));
      d.inflight.set(st.pgt_id, job);
    }
    const due = tables.filter((st) => st.status === "ACTIVE");
    let queued = 0;
    // Queue upstream first: a job awaits the inflight jobs of the stream tables it reads.
    for (const st of orderByDependencies(due, upstream)) {
      if (d.inflight.has(st.pgt_id) || this.#stopped) continue;
      const waitFor = (upstream.get(st.pgt_id) ?? []).map((id) => d.inflight.get(id)).filter((p) => p !== undefined);
      d.queued++;
      queued++;
      const job = this.#run(d, st.pgt_id, waitFor).finally(() => d.inflight.delete(st.pgt_id));
      d.inflight.set(st.pgt_id, job);
    }
    return { due: due.length, queued };
  }

  /**
   * A scheduled refresh, skipped (RefreshBusy) when another refresh of the stream table runs. Its row is also locked,
   * for a few milliseconds, by the planner deciding an alert (engine/planner/pass.ts): a few short retries tell that
   * apart from a refresh, so such a moment does not cost the stream table its turn.
   */
  async #refreshUnlessBusy(d: DbState, pgtId: number): Promise<void> {
    for (let attempt = 1;; attempt++) {
      try {
        await refreshStreamTable(d.ctx, pgtId, { initiatedBy: "SCHEDULER", skipIfBusy: true });
        return;
      } catch (e) {
        if (!(e instanceof RefreshBusy) || attempt >= BUSY_RETRIES || this.#stopped) throw e;
        await new Promise((r) => setTimeout(r, BUSY_RETRY_MS));
      }
    }
  }

  async #run(d: DbState, pgtId: number, waitFor: Promise<void>[]): Promise<void> {
    const queuedAt = performance.now();
    const facts = { db_name: d.ctx.name, db_oid: d.ctx.oid, pgt_id: pgtId };
    let started = false;
    try {
      await Promise.allSettled(waitFor);
      const refreshed = await this.#pool.run(d.ctx.oid, pgtId, async () => {
        d.queued--;
        started = true;
        const t0 = performance.now();
        d.ctx.events.emit({ type: "worker_started", ...facts, waited_ms: t0 - queuedAt });
        let ok = false;
        try {
          if (!this.#stopped) await this.#refreshUnlessBusy(d, pgtId);
          ok = true;
        } catch (e) {
          if (!(e instanceof RefreshBusy)) {
            this.#log.debug("scheduled refresh failed", { database: d.ctx.name, pgt_id: pgtId, error: e });
          }
        } finally {
          d.ctx.events.emit({ type: "worker_finished", ...facts, duration_ms: performance.now() - t0, ok });
        }
        return ok;
      });
      // Its refresh set its next due time: wake for it (or an earlier one) rather than wait for the tick. Read after
      // the worker slot is free, so the slot is held only for the refresh.
      if (refreshed) this.#wakeBy(await nextDueAt(d.ctx.sql, this.#clock.now()).catch(() => null));
    } catch (e) {
      // The pool closed (stopping) or could not admit: the stream table stays due for the next leader.
      this.#log.debug("a refresh job did not run", { database: d.ctx.name, pgt_id: pgtId, error: e });
    } finally {
      if (!started) d.queued--;
    }
  }

  /**
   * An INITIALIZING stream table is a creation in progress or one whose creator is gone; the latter is removed
   * (see recovery.ts). Checked at every tick, so the first tick of a new leader cleans up after a crashed instance.
   */
  async #recover(d: DbState, pgtId: number): Promise<void> {
    try {
      await removeAbandonedCreation(d.ctx, pgtId);
    } catch (e) {
      this.#log.error("could not remove an interrupted creation", { database: d.ctx.name, pgt_id: pgtId, error: e });
    }
  }
}
