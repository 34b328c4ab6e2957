/**
 * Leadership of one database's scheduler: a session advisory lock (LEADER_LOCK) held on a connection of this
 * instance's own to that database (db/pool.ts `connectSession`). A second instance stands by and takes the lock
 * within a tick of the leader's connection closing (the lock dies with the session: a crashed leader frees it).
 */
import { connectSession, type Sql } from "../../db/pool.ts";
import type { DatabaseContext } from "../context.ts";
import type { Logger } from "../../log.ts";

/** Advisory lock key for "this instance schedules this database" (arbitrary, fixed). */
export const LEADER_LOCK = 7_417_003;

/** This instance's claim on one database's scheduler. */
export class Leadership {
  readonly #ctx: DatabaseContext;
  readonly #log: Logger;
  /** Opened at the first attempt, kept while this instance runs: the lock lives in its session. */
  #session: Sql | null = null;
  #leading = false;

  constructor(ctx: DatabaseContext, log: Logger) {
    this.#ctx = ctx;
    this.#log = log;
  }

  /** Whether this instance holds the lock, as last checked. */
  get leading(): boolean {
    return this.#leading;
  }

  /** Keeps or takes the lock; returns whether this instance leads. `stopped` aborts a take that races a stop. */
  async lead(stopped: () => boolean): Promise<boolean> {
    if (this.#leading) {
      try {
        // Asked of the lock, not of the connection: one that died and reconnected answers, without the lock.
        const [row] = await this.#session!<{ held: boolean }[]>`
          SELECT EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
            AND classid = 0 AND objid = ${LEADER_LOCK} AND objsubid = 1 AND granted) AS held`;
        if (row?.held === true) return true;
        this.#log.warn("lost the leader lock with its connection; standing by", { database: this.#ctx.name });
      } catch (e) {
        this.#log.warn("lost the leader connection; standing by", { database: this.#ctx.name, error: e });
        // A client whose connection failed is not asked again: a new one is (postgres.js can leave the next query
        // on a failed connection waiting for ever).
        await this.resign();
      }
      this.#leading = false;
    }
    if (stopped()) return false;
    this.#session ??= connectSession(this.#ctx.url);
    const session = this.#session;
    try {
      const [row] = await session<{ ok: boolean }[]>`SELECT pg_try_advisory_lock(${LEADER_LOCK}) AS ok`;
      if (row?.ok === true) {
        if (stopped()) {
          await this.resign(); // stop() did not wait for this attempt
          return false;
        }
        this.#leading = true;
        this.#log.info("leading the database's scheduler", { database: this.#ctx.name });
        return true;
      }
    } catch (e) {
      this.#log.warn("leader election failed", { database: this.#ctx.name, error: e });
      if (this.#session === session) await this.resign();
    }
    return false;
  }

  /** Gives the lock up: closing its session frees it (and is all there is to do when the connection is gone). */
  async resign(): Promise<void> {
    const session = this.#session;
    this.#session = null;
    this.#leading = false;
    await session?.end({ timeout: 1 }).catch(() => {});
  }
}
