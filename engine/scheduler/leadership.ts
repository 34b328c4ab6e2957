/**
 * Leadership of one database's scheduler: a session advisory lock (LEADER_LOCK) held on a reserved connection to
 * that database. A second instance stands by and takes the lock within a tick of the leader's connection closing
 * (the lock dies with the session: a crashed leader frees it).
 */
import type postgres from "postgres";
import type { DatabaseContext } from "../context.ts";
import type { Logger } from "../../log.ts";

/** Advisory lock key for "this instance schedules this database" (arbitrary, fixed). */
export const LEADER_LOCK = 7_417_003;

/** This instance's claim on one database's scheduler. */
export class Leadership {
  readonly #ctx: DatabaseContext;
  readonly #log: Logger;
  #session: postgres.ReservedSql | null = null;

  constructor(ctx: DatabaseContext, log: Logger) {
    this.#ctx = ctx;
    this.#log = log;
  }

  /** Whether this instance holds the lock, as last checked. */
  get leading(): boolean {
    return this.#session !== null;
  }

  /** Keeps or takes the lock; returns whether this instance leads. `stopped` aborts a take that races a stop. */
  async lead(stopped: () => boolean): Promise<boolean> {
    if (this.#session !== null) {
      try {
        await this.#session`SELECT 1`;
        return true;
      } catch (e) {
        this.#log.warn("lost the leader connection; standing by", { database: this.#ctx.name, error: e });
        await this.resign();
      }
    }
    const reserved = await this.#ctx.sql.reserve();
    if (stopped()) {
      reserved.release(); // stop() did not wait for this connection
      return false;
    }
    try {
      const [row] = await reserved<{ ok: boolean }[]>`SELECT pg_try_advisory_lock(${LEADER_LOCK}) AS ok`;
      if (row?.ok === true) {
        this.#session = reserved;
        this.#log.info("leading the database's scheduler", { database: this.#ctx.name });
        return true;
      }
    } catch (e) {
      this.#log.warn("leader election failed", { database: this.#ctx.name, error: e });
    }
    reserved.release();
    return false;
  }

  /** Gives the lock up (or finds it gone with its connection). */
  async resign(): Promise<void> {
    const session = this.#session;
    this.#session = null;
    if (session === null) return;
    try {
      await session`SELECT pg_advisory_unlock(${LEADER_LOCK})`;
    } catch {
      // The connection is gone, and the lock with it.
    }
    session.release();
  }
}
