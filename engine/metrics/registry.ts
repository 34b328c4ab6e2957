/**
 * The metrics kept in memory from the engine's events (engine/events.ts): refresh and failure counts, rows changed,
 * the refresh-duration histogram, alerts and webhook deliveries. Counters only grow while the process lives; each
 * series remembers when it started (OpenMetrics `_created`). A scrape adds the catalog's figures (scrape.ts).
 */
import type { DatabaseContext } from "../context.ts";
import type { EngineEvents } from "../events.ts";

/** Refresh durations in seconds: from a NO_DATA refresh (milliseconds) to a long FULL one. */
export const DURATION_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
export const ACTIONS = ["FULL", "DIFFERENTIAL", "NO_DATA"] as const;

/** A counter series: its value and its start (Unix seconds). */
export interface Count {
  value: number;
  created: number;
}

/** One stream table's counters. */
export interface StreamTableCounts {
  refreshes: Count;
  failures: Count;
  rowsChanged: Count;
}

export interface Histogram {
  /** Per bound of DURATION_BOUNDS, observations at or under it (not cumulative; summed when rendered). */
  buckets: number[];
  sum: number;
  count: number;
  created: number;
}

/** A database's MVCC clock: snapshots taken at known times (freshness.ts brackets commit times with them). */
export interface SnapshotSample {
  /** Unix seconds, the database's clock, before the snapshot was taken. */
  at: number;
  snapshot: string;
}

/** Per database: everything the events taught. */
export interface DatabaseCounts {
  streamTables: Map<number, StreamTableCounts>;
  durations: Map<string, Histogram>;
  alerts: Map<string, Count>;
  /** Keyed by JSON [sink, outcome]. */
  deliveries: Map<string, Count>;
  selfCheckFailures: Count;
  samples: SnapshotSample[];
}

/** Snapshots kept per database: beyond it, older ones are thinned out (see addSample). */
const MAX_SAMPLES = 64;

const registries = new WeakMap<EngineEvents, MetricsRegistry>();

/** The in-memory metrics of one engine, fed by its events. */
export class MetricsRegistry {
  readonly #dbs = new Map<number, DatabaseCounts>();
  readonly #now: () => number;

  constructor(events: EngineEvents, options: { now?: () => number } = {}) {
    this.#now = options.now ?? (() => Date.now() / 1000);
    registries.set(events, this);
    events.subscribe("refresh_committed", (e) => {
      const st = this.streamTable(e.db_oid, e.pgt_id);
      st.refreshes.value++;
      st.rowsChanged.value += e.rows_inserted + e.rows_deleted;
      const h = this.#histogram(e.db_oid, e.action);
      const seconds = e.duration_ms / 1000;
      const i = DURATION_BOUNDS.findIndex((b) => seconds <= b);
      if (i >= 0) h.buckets[i]!++;
      h.sum += seconds;
      h.count++;
    });
    events.subscribe("refresh_failed", (e) => void this.streamTable(e.db_oid, e.pgt_id).failures.value++);
    events.subscribe("stream_table_created", (e) => void this.streamTable(e.db_oid, e.pgt_id));
    // A dropped stream table's series end; one created again under the same name is a new series (new _created).
    events.subscribe("stream_table_dropped", (e) => void this.database(e.db_oid).streamTables.delete(e.pgt_id));
  }

  /** A database's counts (made empty on first use). */
  database(dbOid: number): DatabaseCounts {
    let d = this.#dbs.get(dbOid);
    if (d === undefined) {
      const created = this.#now();
      d = {
        streamTables: new Map(),
        durations: new Map(),
        alerts: new Map(),
        deliveries: new Map(),
        selfCheckFailures: { value: 0, created },
        samples: [],
      };
      this.#dbs.set(dbOid, d);
    }
    return d;
  }

  /** A stream table's counters (zero from now on first sight: one created before this process started). */
  streamTable(dbOid: number, pgtId: number): StreamTableCounts {
    const d = this.database(dbOid);
    let st = d.streamTables.get(pgtId);
    if (st === undefined) {
      const created = this.#now();
      st = {
        refreshes: { value: 0, created },
        failures: { value: 0, created },
        rowsChanged: { value: 0, created },
      };
      d.streamTables.set(pgtId, st);
    }
    return st;
  }

  /** The duration histogram of one action in one database. */
  histogram(dbOid: number, action: string): Histogram {
    return this.#histogram(dbOid, action);
  }

  #histogram(dbOid: number, action: string): Histogram {
    const d = this.database(dbOid);
    let h = d.durations.get(action);
    if (h === undefined) {
      h = { buckets: DURATION_BOUNDS.map(() => 0), sum: 0, count: 0, created: this.#now() };
      d.durations.set(action, h);
    }
    return h;
  }

  /** Counts one alert of `kind` raised in a database. */
  countAlert(dbOid: number, kind: string): void {
    bump(this.database(dbOid).alerts, kind, this.#now);
  }

  /** Counts one webhook delivery attempt by sink and outcome. */
  countDelivery(dbOid: number, delivery: { sink: string; outcome: string }): void {
    bump(this.database(dbOid).deliveries, JSON.stringify([delivery.sink, delivery.outcome]), this.#now);
  }

  /** Counts an exposition that failed the service's own conformance check (in every database's series). */
  countSelfCheckFailure(dbOids: number[]): void {
    for (const oid of dbOids) this.database(oid).selfCheckFailures.value++;
  }

  /**
   * Remembers a snapshot of a database taken at `at`. Recent ones are kept densely and older ones thinned (every
   * other one of the older half goes when full), so both a short and a long pending interval stay bracketed.
   */
  addSample(dbOid: number, sample: SnapshotSample): void {
    const samples = this.database(dbOid).samples;
    samples.push(sample);
    if (samples.length > MAX_SAMPLES) {
      const half = Math.floor(samples.length / 2);
      const older = samples.slice(0, half).filter((_, i) => i % 2 === 0);
      samples.splice(0, half, ...older);
    }
  }
}

function bump(map: Map<string, Count>, key: string, now: () => number): void {
  const c = map.get(key) ?? { value: 0, created: now() };
  c.value++;
  map.set(key, c);
}

/**
 * For the alert subsystem: counts one alert of `kind` in `db` (pg_trickle_alerts_total). A no-op for an engine
 * without a metrics registry.
 */
export function recordAlert(db: DatabaseContext, kind: string): void {
  registries.get(db.events)?.countAlert(db.oid, kind);
}

/**
 * For the alert subsystem: counts one webhook delivery to `sink` with its outcome (pg_trickle_webhook_deliveries_total).
 * `sink` becomes a label value anyone with the read token can see: pass the sink's name, never a URL with a secret.
 */
export function recordDelivery(db: DatabaseContext, delivery: { sink: string; outcome: string }): void {
  registries.get(db.events)?.countDelivery(db.oid, delivery);
}
