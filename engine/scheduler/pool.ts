/**
 * The worker pool, its state kept in PostgreSQL so that `max_workers` and the per-database quotas hold across every
 * service instance of the cluster (docs/architecture.md, scheduler), and so any instance can tell which refresh runs where.
 *
 * The state lives in pg_stat_activity, cluster-wide and crash-safe by construction: each fact is the
 * `application_name` of a connection to one agreed coordination database (default `postgres`, the server's
 * maintenance database: every instance of a cluster must use the same one), and it dies with that connection, so a
 * crashed or killed instance leaves nothing behind:
 *
 *   trickle:<pid>:instance:<max_workers>:<per_database_quota>:<databases>  one per instance: its settings and
 *                                                                          how many databases it manages
 *   trickle:<pid>:lead:<db_oid>:<queued>:<oldest_epoch_ms>  one per database the instance leads: its queue
 *   trickle:<pid>:run:<db_oid>:<pgt_id>                     one per running worker, held for its whole refresh
 *
 * A job is admitted under a short cluster-wide mutex (a transaction advisory lock in the coordination database): it
 * counts the `run` markers, and when a slot is free marks a connection of its own as running before the mutex is
 * released, so two instances can never both take the last slot. Waiting jobs retry every 100 ms (a slot freed by
 * another instance) and at once when a local one finishes. Quota: `per_database_quota` is a hard cap; 0 means a fair
 * share `ceil(max_workers / databases)`, databases being the most of: those led or worked for anywhere in the cluster,
 * and those any one instance manages (so a database not led yet already counts). Capacity a quiet database leaves is
 * then lent to a busy one, and returned as soon as the quiet one has queued work: a database over its share is
 * admitted only while no other database with queued work is under its share (running refreshes are not interrupted;
 * the next free slot goes back). Among the jobs that may run, the one whose database runs the fewest goes first, so
 * databases under their share take turns instead of the oldest queue taking every slot. Queue lengths published by
 * other instances may lag by one update, so lending is best effort; `max_workers` is exact. Refreshes run by API
 * requests (create, manual refresh) are not pool work and are not counted.
 *
 * The cluster view read from these markers is SQL (pgtrickle.cluster_worker_summary and its siblings, in every managed
 * database), so the REST answer and a SQL query give the same numbers; engine/cluster.ts reads it. The quota formula
 * is written twice, here for admission and there for the view, and tests/cluster_workers_test.ts holds them equal.
 */
import type postgres from "postgres";
import { connect, connectSession, type Sql, urlForDatabase } from "../../db/pool.ts";
import type { Logger } from "../../log.ts";

/** Advisory lock key of the admission mutex, in the coordination database (arbitrary, fixed). */
const ADMISSION_LOCK = 7_417_005;
/** How often a waiting job looks for a slot another instance freed. */
const POLL_MS = 100;
const MARKER = /^trickle:(\d+):(instance|lead|run):(.*)$/;

export interface PoolSettings {
  maxWorkers: number;
  perDatabaseQuota: number;
}

/** One database's workers across the cluster. */
export interface DatabaseWorkers {
  db_oid: number;
  db_name: string;
  workers_active: number;
  workers_queued: number;
  quota: number;
  quota_utilization_pct: number;
  oldest_queued_wait_ms: number | null;
  /** The instance leading it (`trickle:<pid>`), null while none does. */
  leader: string | null;
}

/** The cluster's workers, as any instance sees them. */
export interface ClusterWorkers {
  databases: DatabaseWorkers[];
  workers_active: number;
  workers_queued: number;
  max_workers: number;
  /** Each database's quota (per_database_quota, or the fair share); null while no instance is present. */
  quota: number | null;
  /** workers_active as a percentage of max_workers. */
  utilization_pct: number | null;
  /** Instances present (`trickle:<pid>`) with their max_workers. */
  instances: { instance: string; max_workers: number; per_database_quota: number }[];
  /** Which instance leads which database. */
  leaders: { db_oid: number; db_name: string; instance: string }[];
}

interface Job {
  dbOid: number;
  pgtId: number;
  queuedAt: number;
  admit: (slot: Sql) => void;
  reject: (e: Error) => void;
}

/** Parsed markers: the cluster's worker state. */
interface Markers {
  running: Map<number, number>;
  leaders: Map<number, { instance: string; queued: number; oldest: number | null }>;
  /** instance -> the number of databases it manages. */
  instances: Map<string, number>;
}

/** Admits refresh jobs within the cluster's limits and publishes this instance's part of the worker state. */
export class WorkerPool {
  readonly #url: string;
  readonly #settings: PoolSettings;
  readonly #log: Logger;
  readonly #base = `trickle:${Deno.pid}`;
  /** The managed databases of this instance: oid -> name. */
  readonly #local: Map<number, string>;
  #coordinationDatabase: string;
  #sql: Sql | null = null;
  /** Connections of this instance's own in the coordination database (db/pool.ts connectSession), each a marker. */
  #presence: Sql | null = null;
  readonly #leads = new Map<number, { session: Sql; published: string; busy: boolean }>();
  /** Idle run-slot connections, reused by the next admitted job. */
  #idleSlots: Sql[] = [];
  #queue: Job[] = [];
  readonly #active = new Map<number, number>();
  #pumping = false;
  #again = false;
  #wake: (() => void) | null = null;
  #closed = false;

  constructor(
    databases: { oid: number; name: string }[],
    options: { url: string; coordinationDatabase: string; settings: PoolSettings; log: Logger },
  ) {
    this.#local = new Map(databases.map((d) => [d.oid, d.name]));
    this.#url = options.url;
    this.#coordinationDatabase = options.coordinationDatabase;
    this.#settings = options.settings;
    this.#log = options.log;
  }

  /** This instance's view: its running and waiting jobs of a database. */
  local(dbOid: number): { active: number; queued: number } {
    return { active: this.#active.get(dbOid) ?? 0, queued: this.#queue.filter((j) => j.dbOid === dbOid).length };
  }

  /** Waits for a worker slot of the cluster, runs `fn` holding it, frees it. Rejects when the pool closes first. */
  async run<T>(dbOid: number, pgtId: number, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new Error("The worker pool is closed");
    const slot = await new Promise<Sql>((admit, reject) => {
      this.#queue.push({ dbOid, pgtId, queuedAt: Date.now(), admit, reject });
      this.#changed(dbOid);
    });
    this.#active.set(dbOid, (this.#active.get(dbOid) ?? 0) + 1);
    try {
      return await fn();
    } finally {
      this.#active.set(dbOid, (this.#active.get(dbOid) ?? 1) - 1);
      // Back to an idle name before the connection is kept for the next job; a broken one is closed, its marker
      // gone with it.
      try {
        await slot`SELECT set_config('application_name', ${this.#base}, false)`;
        if (this.#closed) await slot.end({ timeout: 1 });
        else this.#idleSlots.push(slot);
      } catch {
        await slot.end({ timeout: 1 }).catch(() => {});
      }
      this.#changed(dbOid);
    }
  }

  /** Publishes (or withdraws) this instance's leadership of a database and its queue. */
  async setLeading(dbOid: number, leading: boolean): Promise<void> {
    // A standby is present too: the cluster view lists it, and the fair share counts the databases it manages.
    if (!this.#closed) {
      await this.#coordination();
      await this.#present();
    }
    const lead = this.#leads.get(dbOid);
    if (!leading) {
      if (lead === undefined) return;
      this.#leads.delete(dbOid);
      await lead.session.end({ timeout: 1 }).catch(() => {});
      return;
    }
    if (lead !== undefined || this.#closed) return;
    await this.#coordination();
    const session = connectSession(this.#coordinationUrl(), this.#base);
    if (this.#closed || this.#leads.has(dbOid)) return void await session.end({ timeout: 1 });
    this.#leads.set(dbOid, { session, published: "", busy: false });
    await this.#publish(dbOid);
  }

  /** The coordination database in use (the configured one, or the managed one it fell back to). */
  async coordinationDatabase(): Promise<string> {
    await this.#coordination();
    return this.#coordinationDatabase;
  }

  /** Rejects the jobs still waiting, withdraws this instance's markers and closes the coordination connections. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#wake?.();
    for (const job of this.#queue.splice(0)) job.reject(new Error("The worker pool closed"));
    for (const oid of [...this.#leads.keys()]) await this.setLeading(oid, false);
    await this.#presence?.end({ timeout: 1 }).catch(() => {});
    this.#presence = null;
    for (const slot of this.#idleSlots.splice(0)) await slot.end({ timeout: 1 }).catch(() => {});
    await this.#sql?.end({ timeout: 1 });
  }

  /** The quota of each database (the same formula as pgtrickle.cluster_worker_totals). */
  #quota(markers: Markers): number {
    const { maxWorkers, perDatabaseQuota } = this.#settings;
    const worked = new Set([...markers.leaders.keys(), ...markers.running.keys()]).size;
    const databases = Math.max(1, worked, this.#local.size, ...markers.instances.values());
    return perDatabaseQuota > 0 ? Math.min(perDatabaseQuota, maxWorkers) : Math.ceil(maxWorkers / databases);
  }

  /** Marks this instance present with its settings, once (the cluster view counts its databases from it). */
  async #present(): Promise<void> {
    if (this.#presence !== null || this.#closed) return;
    const { maxWorkers, perDatabaseQuota } = this.#settings;
    // The marker is the connection's own name, so a reconnection after a failure publishes it again.
    const presence = connectSession(
      this.#coordinationUrl(),
      `${this.#base}:instance:${maxWorkers}:${perDatabaseQuota}:${this.#local.size}`,
    );
    this.#presence = presence;
    try {
      await presence`SELECT 1`;
    } catch (e) {
      // Not connected, so not published: the next call tries again.
      if (this.#presence === presence) this.#presence = null;
      await presence.end({ timeout: 1 }).catch(() => {});
      throw e;
    }
  }

  /** The URL of the coordination database in use (after #coordination() chose it). */
  #coordinationUrl(): string {
    return urlForDatabase(this.#url, this.#coordinationDatabase);
  }

  /** The coordination pool, opened at first use (falling back to a managed database when the default is absent). */
  async #coordination(): Promise<Sql> {
    if (this.#sql !== null) return this.#sql;
    const max = this.#settings.maxWorkers + this.#local.size + 3;
    let sql = connect(urlForDatabase(this.#url, this.#coordinationDatabase), { max });
    try {
      await sql`SELECT 1`;
    } catch (e) {
      await sql.end({ timeout: 1 });
      const fallback = [...this.#local.values()].sort()[0]!;
      this.#log.warn("the coordination database is not reachable; coordinating workers in a managed database", {
        coordination_database: this.#coordinationDatabase,
        instead: fallback,
        hint: "every instance of the cluster must coordinate in the same database",
        error: e,
      });
      this.#coordinationDatabase = fallback;
      sql = connect(urlForDatabase(this.#url, fallback), { max });
    }
    if (this.#sql !== null) {
      await sql.end({ timeout: 1 }); // opened meanwhile by another caller
      return this.#sql;
    }
    this.#sql = sql;
    return sql;
  }

  /** A job queued, admitted or finished: publish the queue and look for slots. */
  #changed(dbOid: number): void {
    void this.#publish(dbOid);
    this.#kick();
  }

  async #publish(dbOid: number): Promise<void> {
    const lead = this.#leads.get(dbOid);
    if (lead === undefined || lead.busy) return;
    lead.busy = true;
    try {
      for (;;) {
        const waiting = this.#queue.filter((j) => j.dbOid === dbOid);
        const oldest = waiting.length === 0 ? 0 : Math.min(...waiting.map((j) => j.queuedAt));
        const name = `${this.#base}:lead:${dbOid}:${waiting.length}:${oldest}`;
        if (name === lead.published || this.#leads.get(dbOid) !== lead) return;
        await lead.session`SELECT set_config('application_name', ${name}, false)`;
        lead.published = name;
      }
    } catch (e) {
      this.#log.warn("could not publish the worker queue", { db_oid: dbOid, error: e });
      // Its connection failed: a new session publishes next time (a failed client is not asked again).
      if (this.#leads.get(dbOid) === lead) {
        this.#leads.delete(dbOid);
        await lead.session.end({ timeout: 1 }).catch(() => {});
      }
    } finally {
      lead.busy = false;
    }
  }

  #kick(): void {
    if (this.#pumping) {
      this.#again = true;
      this.#wake?.();
      return;
    }
    this.#pumping = true;
    void (async () => {
      try {
        while (this.#queue.length > 0 && !this.#closed) {
          this.#again = false;
          try {
            await this.#admit();
          } catch (e) {
            this.#log.warn("worker admission failed; retrying", { error: e });
          }
          if (this.#queue.length === 0 || this.#again) continue;
          await new Promise<void>((r) => {
            const timer = setTimeout(r, POLL_MS);
            this.#wake = () => (clearTimeout(timer), r());
          });
          this.#wake = null;
        }
      } finally {
        this.#pumping = false;
      }
    })();
  }

  /** One admission pass under the cluster-wide mutex: admits as many waiting jobs as the limits allow. */
  async #admit(): Promise<void> {
    const sql = await this.#coordination();
    await this.#present();
    const admitted: Job[] = [];
    await sql.begin(async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(${ADMISSION_LOCK})`;
      // Read after the lock: pg_stat_activity is snapshotted at its first read in a transaction.
      const markers = await readMarkers(tx);
      const running = markers.running;
      const oids = new Set([...this.#local.keys(), ...markers.leaders.keys(), ...running.keys()]);
      const quota = this.#quota(markers);
      const queued = (oid: number) =>
        this.#local.has(oid)
          ? this.#queue.filter((j) => j.dbOid === oid).length
          : markers.leaders.get(oid)?.queued ?? 0;
      const mayRun = (dbOid: number) => {
        if ((running.get(dbOid) ?? 0) < quota) return true;
        if (this.#settings.perDatabaseQuota > 0) return false; // a configured quota is a hard cap
        // Lent capacity goes back as soon as a database under its share has work.
        return ![...oids].some((o) => o !== dbOid && queued(o) > 0 && (running.get(o) ?? 0) < quota);
      };
      let total = [...running.values()].reduce((s, n) => s + n, 0);
      while (total < this.#settings.maxWorkers && !this.#closed) {
        // The oldest job of the database running the fewest (queue order breaks ties).
        let job: Job | undefined;
        for (const j of this.#queue) {
          if (job !== undefined && (running.get(j.dbOid) ?? 0) >= (running.get(job.dbOid) ?? 0)) continue;
          if (mayRun(j.dbOid)) job = j;
        }
        if (job === undefined) break;
        const mine = running.get(job.dbOid) ?? 0;
        const slot = this.#idleSlots.pop() ?? connectSession(this.#coordinationUrl(), this.#base);
        try {
          await slot`SELECT set_config('application_name', ${`${this.#base}:run:${job.dbOid}:${job.pgtId}`}, false)`;
        } catch (e) {
          await slot.end({ timeout: 1 }).catch(() => {});
          throw e;
        }
        const admittedJob = job;
        this.#queue = this.#queue.filter((j) => j !== admittedJob);
        running.set(job.dbOid, mine + 1);
        total++;
        admitted.push(job);
        // Admitted at once: the marker is set, and the job must not wait for the mutex's commit to start.
        job.admit(slot);
      }
    });
    for (const dbOid of new Set(admitted.map((j) => j.dbOid))) void this.#publish(dbOid);
  }
}

/** Reads the markers of every instance from pg_stat_activity (cluster-wide, in the coordination database). */
async function readMarkers(sql: Sql | postgres.TransactionSql): Promise<Markers> {
  const rows = await sql<{ app: string }[]>`
    SELECT application_name AS app FROM pg_stat_activity
    WHERE datname = current_database() AND application_name LIKE 'trickle:%:%'`;
  const out: Markers = { running: new Map(), leaders: new Map(), instances: new Map() };
  for (const { app } of rows) {
    const m = MARKER.exec(app);
    if (m === null) continue;
    const [, pid, kind, rest] = m as unknown as [string, string, string, string];
    const parts = rest.split(":").map(Number);
    const instance = `trickle:${pid}`;
    if (kind === "instance") out.instances.set(instance, parts[2] ?? 0);
    else if (kind === "run") out.running.set(parts[0]!, (out.running.get(parts[0]!) ?? 0) + 1);
    else out.leaders.set(parts[0]!, { instance, queued: parts[1] ?? 0, oldest: parts[2] ? parts[2] : null });
  }
  return out;
}
