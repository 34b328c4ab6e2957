/**
 * The scheduler (DESIGN.md section 11). Every tick, for each database this instance leads, it finds the stream
 * tables that are due and queues refresh jobs; a worker pool runs them, at most `maxWorkers` at once and at most the
 * database's quota. A job waits for the jobs of the stream tables it reads, so stream tables on stream tables refresh
 * in dependency order. Leadership of a database is a session advisory lock held on a reserved connection: a second
 * instance stands by and takes over within a tick of the leader's connection closing.
 */
import type postgres from "postgres";
import type { Sql } from "../db/pool.ts";
import type { Clock } from "./clock.ts";
import type { DatabaseContext } from "./context.ts";
import type { Logger } from "./log.ts";
import { RefreshBusy, refreshStreamTable } from "./refresh/refresh.ts";
import { removeAbandonedCreation } from "./recovery.ts";

/**
 * How long stop() waits for a tick in progress. A tick only reads the catalog; one still running after this is
 * waiting for a connection to a server that does not answer, and is left behind (the pools' end closes it).
 */
const TICK_STOP_WAIT_MS = 500;
/** Advisory lock key for "this instance schedules this database" (arbitrary, fixed). */
const LEADER_LOCK = 7_417_003;

export interface SchedulerSettings {
  maxWorkers: number;
  perDatabaseQuota: number;
  schedulerIntervalMs: number;
}

/** What the worker pool is doing for one database, as of now. */
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
  leader: postgres.ReservedSql | null;
  active: number;
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
  #active = 0;
  #waiters: (() => void)[] = [];
  #timer: ReturnType<typeof setTimeout> | null = null;
  #ticking: Promise<void> | null = null;
  #stopped = false;

  constructor(databases: DatabaseContext[], settings: SchedulerSettings, deps: { log: Logger; clock: Clock }) {
    this.#dbs = databases.map((ctx) => ({
      ctx,
      leader: null,
      active: 0,
      queued: 0,
      inflight: new Map(),
      lastHistoryPrune: 0,
    }));
    this.#settings = settings;
    this.#log = deps.log;
    this.#clock = deps.clock;
  }

  /** The per-database quota: configured, or a fair share of the workers. */
  quota(): number {
    return this.#settings.perDatabaseQuota > 0
      ? Math.min(this.#settings.perDatabaseQuota, this.#settings.maxWorkers)
      : Math.ceil(this.#settings.maxWorkers / Math.max(1, this.#dbs.length));
  }

  /** Starts ticking every `schedulerIntervalMs`. */
  start(): void {
    const loop = async () => {
      if (this.#stopped) return;
      this.#ticking = this.tick().catch((e) => this.#log.error("scheduler tick failed", { error: e }));
      await this.#ticking;
      if (!this.#stopped) this.#timer = setTimeout(loop, this.#settings.schedulerIntervalMs);
    };
    this.#timer = setTimeout(loop, 0);
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
    for (const d of this.#dbs) await this.#resign(d);
  }

  /** Worker use per database. */
  workers(): WorkerState[] {
    return this.#dbs.map((d) => ({
      db_name: d.ctx.name,
      db_oid: d.ctx.oid,
      leader: d.leader !== null,
      workers_active: d.active,
      workers_queued: d.queued,
      quota: this.quota(),
    }));
  }

  /** One pass: for each database this instance leads, queue the due stream tables. Resolves once queued. */
  async tick(): Promise<void> {
    for (const d of this.#dbs) {
      if (this.#stopped) return;
      try {
        if (!(await this.#lead(d))) continue;
        await this.#queueDue(d);
        await this.#pruneHistory(d);
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

  async #lead(d: DbState): Promise<boolean> {
    if (d.leader !== null) {
      try {
        await d.leader`SELECT 1`;
        return true;
      } catch (e) {
        this.#log.warn("lost the leader connection; standing by", { database: d.ctx.name, error: e });
        await this.#resign(d);
      }
    }
    const reserved = await d.ctx.sql.reserve();
    if (this.#stopped) {
      reserved.release(); // stop() did not wait for this connection
      return false;
    }
    try {
      const [row] = await reserved<{ ok: boolean }[]>`SELECT pg_try_advisory_lock(${LEADER_LOCK}) AS ok`;
      if (row?.ok === true) {
        d.leader = reserved;
        this.#log.info("leading the database's scheduler", { database: d.ctx.name });
        return true;
      }
    } catch (e) {
      this.#log.warn("leader election failed", { database: d.ctx.name, error: e });
    }
    reserved.release();
    return false;
  }

  async #resign(d: DbState): Promise<void> {
    const leader = d.leader;
    d.leader = null;
    if (leader === null) return;
    try {
      await leader`SELECT pg_advisory_unlock(${LEADER_LOCK})`;
    } catch {
      // The connection is gone, and the lock with it.
    }
    leader.release();
  }

  async #queueDue(d: DbState): Promise<void> {
    const tables = await findDue(d.ctx.sql, this.#clock.now());
    const upstream = new Map(tables.map((t) => [t.pgt_id, t.upstream]));
    for (const st of tables) {
      if (st.status !== "INITIALIZING" || d.inflight.has(st.pgt_id) || this.#stopped) continue;
      const job = this.#recover(d, st.pgt_id).finally(() => d.inflight.delete(st.pgt_id));
      d.inflight.set(st.pgt_id, job);
    }
    const due = tables.filter((st) => st.status === "ACTIVE" && !d.inflight.has(st.pgt_id));
    // Queue upstream first: a job awaits the inflight jobs of the stream tables it reads.
    for (const st of orderByDependencies(due, upstream)) {
      const waitFor = (upstream.get(st.pgt_id) ?? []).map((id) => d.inflight.get(id)).filter((p) => p !== undefined);
      d.queued++;
      const job = this.#run(d, st.pgt_id, waitFor).finally(() => d.inflight.delete(st.pgt_id));
      d.inflight.set(st.pgt_id, job);
    }
  }

  async #run(d: DbState, pgtId: number, waitFor: Promise<void>[]): Promise<void> {
    await Promise.allSettled(waitFor);
    await this.#acquire(d);
    try {
      if (!this.#stopped) await refreshStreamTable(d.ctx, pgtId, { initiatedBy: "SCHEDULER", skipIfBusy: true });
    } catch (e) {
      if (!(e instanceof RefreshBusy)) {
        this.#log.debug("scheduled refresh failed", { database: d.ctx.name, pgt_id: pgtId, error: e });
      }
    } finally {
      this.#release(d);
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

  async #acquire(d: DbState): Promise<void> {
    while (this.#active >= this.#settings.maxWorkers || d.active >= this.quota()) {
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    // Counted in the same turn as the check, so no other waiter can pass it meanwhile.
    this.#active++;
    d.active++;
    d.queued--;
  }

  #release(d: DbState): void {
    this.#active--;
    d.active--;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  async #pruneHistory(d: DbState): Promise<void> {
    const now = this.#clock.now().getTime();
    if (now - d.lastHistoryPrune < 3_600_000) return;
    d.lastHistoryPrune = now;
    const cutoff = new Date(now - d.ctx.settings.historyRetentionDays * 86_400_000);
    await d.ctx.sql`DELETE FROM pgtrickle.pgt_refresh_history WHERE started_at < ${cutoff}`;
  }
}

/** Orders stream tables so that each comes after the ones it reads (among those given). */
export function orderByDependencies<T extends { pgt_id: number }>(items: T[], upstream: Map<number, number[]>): T[] {
  const byId = new Map(items.map((i) => [i.pgt_id, i]));
  const out: T[] = [];
  const seen = new Set<number>();
  const visit = (id: number) => {
    if (seen.has(id)) return;
    seen.add(id);
    for (const up of upstream.get(id) ?? []) visit(up);
    const item = byId.get(id);
    if (item !== undefined) out.push(item);
  };
  for (const i of items) visit(i.pgt_id);
  return out;
}

/** A stream table the tick acts on: ACTIVE and due, or INITIALIZING; with the stream tables it reads. */
export interface DueStreamTable {
  pgt_id: number;
  status: "ACTIVE" | "INITIALIZING";
  upstream: number[];
}

/** The stream tables due at `now` and those INITIALIZING: one indexed query, no plan or schedule read. */
export async function findDue(sql: Sql, now: Date): Promise<DueStreamTable[]> {
  return [
    ...await sql<DueStreamTable[]>`
    SELECT st.pgt_id, st.status, ARRAY(
        SELECT d.source_pgt_id FROM pgtrickle.pgt_dependencies d
        WHERE d.pgt_id = st.pgt_id AND d.source_pgt_id IS NOT NULL) AS upstream
    FROM pgtrickle.pgt_stream_tables st
    WHERE (st.status = 'ACTIVE' AND st.next_due_at <= ${now}) OR st.status = 'INITIALIZING'
    ORDER BY st.next_due_at, st.pgt_id`,
  ];
}
