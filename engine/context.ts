/** What engine operations on one managed database need. */
import type { Sql } from "../db/pool.ts";
import type { Clock } from "./clock.ts";
import type { EngineEvents } from "./events.ts";
import type { Logger } from "../log.ts";

export interface EngineSettings {
  maxConsecutiveErrors: number;
  differentialMaxChangeRatio: number;
  historyRetentionDays: number;
  /** Past these, a snapshot stops pinning its sources' change buffers (it becomes rows_only). */
  snapshotRetentionMaxAgeSeconds: number;
  snapshotRetentionMaxRows: number;
}

export interface DatabaseContext {
  /** The database's name, as configured. */
  name: string;
  /** Its OID in the cluster (metrics and cluster views label by it). */
  oid: number;
  sql: Sql;
  /** Its connection URL, for a session of its own outside the pool (a creation's lock). */
  url: string;
  settings: EngineSettings;
  log: Logger;
  clock: Clock;
  /** The engine's event emitter (shared by all its databases). */
  events: EngineEvents;
}
