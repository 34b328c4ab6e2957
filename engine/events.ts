/**
 * What the engine announces (docs/architecture.md, scheduler): refreshes committed or failed with their figures, stream tables
 * created, altered or dropped, scheduler ticks, workers started and finished. Metrics, the planner and alerts
 * subscribe instead of scraping history tables for what the engine already knew.
 *
 * Subscribers run synchronously after the fact (the refresh has committed); one that throws is logged and never
 * breaks the engine or the other subscribers. An effect that must commit with the decision (an alert outbox row)
 * registers an `onRefreshCommitting` hook instead: it runs inside the refresh transaction, before commit, and an
 * error it throws rolls the refresh back (recorded as a failed refresh), so the effect and the refresh commit together
 * or not at all.
 */
import type { Tx } from "../db/pool.ts";
import type { Logger } from "../log.ts";

/** Which database an event concerns. */
export interface DatabaseFacts {
  db_name: string;
  db_oid: number;
}

/** A stream table of a database, by id and `schema.name`. */
export interface StreamTableFacts extends DatabaseFacts {
  pgt_id: number;
  stream_table: string;
}

/** The figures of one refresh, as recorded in its history row. */
export interface RefreshFacts extends StreamTableFacts {
  action: "FULL" | "DIFFERENTIAL" | "NO_DATA";
  reason: string | null;
  initiated_by: "CREATE" | "SCHEDULER" | "MANUAL";
  duration_ms: number;
  rows_inserted: number;
  rows_deleted: number;
  delta_rows: number;
}

export type EngineEvent =
  | ({ type: "refresh_committed" } & RefreshFacts)
  | ({
    type: "refresh_failed";
    action: "FULL" | "DIFFERENTIAL" | "NO_DATA";
    initiated_by: "CREATE" | "SCHEDULER" | "MANUAL";
    duration_ms: number;
    error: string;
    consecutive_errors: number;
    status: string;
  } & StreamTableFacts)
  | ({ type: "stream_table_created"; refresh_mode: string } & StreamTableFacts)
  | ({ type: "stream_table_altered"; changes: string[] } & StreamTableFacts)
  | ({ type: "stream_table_dropped" } & StreamTableFacts)
  | ({ type: "tick_done"; due: number; queued: number; duration_ms: number } & DatabaseFacts)
  | ({ type: "worker_started"; pgt_id: number; waited_ms: number } & DatabaseFacts)
  | ({ type: "worker_finished"; pgt_id: number; duration_ms: number; ok: boolean } & DatabaseFacts);

export type EventType = EngineEvent["type"];
export type EventOf<T extends EventType> = Extract<EngineEvent, { type: T }>;

/** Runs inside a refresh transaction before it commits; what it writes commits with the refresh. */
export type CommittingHook = (tx: Tx, facts: RefreshFacts) => Promise<void>;

/** The engine's typed event emitter, shared by every managed database of one engine. */
export class EngineEvents {
  readonly #log: Logger;
  readonly #subscribers = new Map<EventType | "*", Set<(e: EngineEvent) => void>>();
  readonly #committing = new Set<CommittingHook>();

  constructor(log: Logger) {
    this.#log = log;
  }

  /** Calls `fn` for every event of `type` ("*": every event); returns the unsubscribe function. */
  subscribe<T extends EventType>(type: T, fn: (e: EventOf<T>) => void): () => void;
  subscribe(type: "*", fn: (e: EngineEvent) => void): () => void;
  subscribe(type: EventType | "*", fn: (e: never) => void): () => void {
    const set = this.#subscribers.get(type) ?? new Set();
    this.#subscribers.set(type, set);
    const f = fn as (e: EngineEvent) => void;
    set.add(f);
    return () => void set.delete(f);
  }

  /** Announces an event to its subscribers; a subscriber that throws is logged and skipped. */
  emit(event: EngineEvent): void {
    for (const key of [event.type, "*"] as const) {
      for (const fn of this.#subscribers.get(key) ?? []) {
        try {
          fn(event);
        } catch (e) {
          this.#log.error("an event subscriber failed", { event: event.type, error: e });
        }
      }
    }
  }

  /** Registers a hook run inside every refresh transaction before commit; returns the unregister function. */
  onRefreshCommitting(hook: CommittingHook): () => void {
    this.#committing.add(hook);
    return () => void this.#committing.delete(hook);
  }

  /** Runs the committing hooks in `tx` (called by the refresh, inside its transaction). */
  async refreshCommitting(tx: Tx, facts: RefreshFacts): Promise<void> {
    for (const hook of this.#committing) await hook(tx, facts);
  }
}
