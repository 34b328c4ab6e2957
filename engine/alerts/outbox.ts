/**
 * Alerts: deciding them (at most once per cooldown per stream table and kind, a resolve when the condition clears) and
 * writing them to the outbox in the deciding transaction, with one delivery row per sink and a NOTIFY
 * pg_trickle_alert that PostgreSQL sends when that transaction commits. delivery.ts sends them.
 */
import type { Sql, Tx } from "../../db/pool.ts";
import type { AlertKind } from "../planner/rules.ts";

/** Where alerts go. A webhook's secret stays in memory: it is never written to the database, a log or an answer. */
export interface AlertSinks {
  webhooks: { url: string; secret: string }[];
  alertmanagerUrl: string | null;
}

/** One kind's persisted state for a stream table. */
export interface AlertState {
  active: boolean;
  last_fired_at: Date | null;
}

/** What to do about one kind now. */
export type AlertDecision = "fire" | "resolve" | null;

/**
 * Fire when the condition holds and the kind has not fired within the cooldown (a condition still holding after the
 * cooldown fires again, so Alertmanager keeps it open); resolve once when it clears.
 */
export function decideAlert(
  state: AlertState | undefined,
  options: { holds: boolean; now: Date; cooldownSeconds: number },
): AlertDecision {
  if (options.holds) {
    const last = state?.last_fired_at ?? null;
    const cooled = last === null || options.now.getTime() - last.getTime() >= options.cooldownSeconds * 1000;
    return cooled ? "fire" : null;
  }
  return state?.active === true ? "resolve" : null;
}

/** An alert to write. */
export interface AlertToWrite {
  pgt_id: number;
  stream_table: string;
  kind: AlertKind;
  state: "firing" | "resolved";
  severity: string;
  db_name: string;
  db_oid: number;
  /** The figures behind it (predicted_ms, sla_ms, staleness_ms). */
  figures: Record<string, number | null>;
}

/**
 * Writes the alert, its state and its deliveries in `tx`, and queues its NOTIFY (sent at commit). Returns the outbox
 * row's id.
 */
export async function writeAlert(
  tx: Tx,
  alert: AlertToWrite,
  options: { now: Date; sinks: AlertSinks },
): Promise<number> {
  const firing = alert.state === "firing";
  const [state] = await tx<{ last_fired_at: Date | null }[]>`
    INSERT INTO pgtrickle.pgt_alert_state (pgt_id, kind, active, last_fired_at, last_resolved_at)
    VALUES (${alert.pgt_id}, ${alert.kind}, ${firing}, ${firing ? options.now : null}, ${firing ? null : options.now})
    ON CONFLICT (pgt_id, kind) DO UPDATE SET
      active = excluded.active,
      last_fired_at = coalesce(excluded.last_fired_at, pgt_alert_state.last_fired_at),
      last_resolved_at = coalesce(excluded.last_resolved_at, pgt_alert_state.last_resolved_at)
    RETURNING last_fired_at`;
  const webhookId = `msg_${crypto.randomUUID().replaceAll("-", "")}`;
  const payload = {
    kind: alert.kind,
    state: alert.state,
    severity: alert.severity,
    stream_table: alert.stream_table,
    db_name: alert.db_name,
    db_oid: alert.db_oid,
    at: options.now.toISOString(),
    // When the condition began to be reported (a resolve's Alertmanager startsAt).
    fired_at: state?.last_fired_at?.toISOString() ?? options.now.toISOString(),
    ...alert.figures,
  };
  const [row] = await tx<{ alert_id: number }[]>`
    INSERT INTO pgtrickle.pgt_alerts (webhook_id, pgt_id, stream_table, kind, state, severity, payload, created_at)
    VALUES (${webhookId}, ${alert.pgt_id}, ${alert.stream_table}, ${alert.kind}, ${alert.state}, ${alert.severity},
      ${tx.json(payload)}, ${options.now})
    RETURNING alert_id`;
  const id = Number(row!.alert_id);
  const targets = [
    ...options.sinks.webhooks.map((w) => ({ sink: "webhook", target: w.url })),
    ...(options.sinks.alertmanagerUrl === null
      ? []
      : [{ sink: "alertmanager", target: options.sinks.alertmanagerUrl }]),
  ];
  for (const t of targets) {
    await tx`
      INSERT INTO pgtrickle.pgt_alert_deliveries (alert_id, sink, target, next_attempt_at)
      VALUES (${id}, ${t.sink}, ${t.target}, ${options.now})`;
  }
  await tx`SELECT pg_notify('pg_trickle_alert', ${
    JSON.stringify({ alert_id: id, webhook_id: webhookId, ...payload })
  })`;
  return id;
}

/** The alert state rows of some stream tables, by pgt_id then kind. */
export async function alertStates(
  sql: Sql | Tx,
  pgtIds: number[],
  options: { lock?: boolean } = {},
): Promise<Map<number, Map<AlertKind, AlertState>>> {
  const rows = options.lock
    ? await sql<({ pgt_id: number; kind: AlertKind } & AlertState)[]>`
      SELECT pgt_id, kind, active, last_fired_at FROM pgtrickle.pgt_alert_state
      WHERE pgt_id = ANY(${pgtIds}::int8[]) FOR UPDATE`
    : await sql<({ pgt_id: number; kind: AlertKind } & AlertState)[]>`
      SELECT pgt_id, kind, active, last_fired_at FROM pgtrickle.pgt_alert_state WHERE pgt_id = ANY(${pgtIds}::int8[])`;
  const out = new Map<number, Map<AlertKind, AlertState>>();
  for (const r of rows) {
    const m = out.get(Number(r.pgt_id)) ?? new Map();
    m.set(r.kind, { active: r.active, last_fired_at: r.last_fired_at });
    out.set(Number(r.pgt_id), m);
  }
  return out;
}

/** One delivery of an alert, as /alerts shows it (the target without credentials or query). */
export interface DeliveryView {
  sink: string;
  target: string;
  state: "pending" | "delivered" | "dead";
  attempts: number;
  next_attempt_at: string | null;
  last_attempt_at: string | null;
  last_status: number | null;
  last_error: string | null;
  delivered_at: string | null;
}

export interface AlertView {
  alert_id: number;
  webhook_id: string;
  stream_table: string;
  kind: string;
  state: "firing" | "resolved";
  severity: string;
  payload: Record<string, unknown>;
  created_at: string;
  deliveries: DeliveryView[];
}

/** The latest alerts, newest first, with each delivery's state. */
export async function listAlerts(sql: Sql, options: { limit: number }): Promise<AlertView[]> {
  const alerts = await sql<(Omit<AlertView, "created_at" | "deliveries"> & { created_at: Date })[]>`
    SELECT alert_id, webhook_id, stream_table, kind, state, severity, payload, created_at FROM pgtrickle.pgt_alerts
    ORDER BY alert_id DESC LIMIT ${options.limit}`;
  const ids = alerts.map((a) => Number(a.alert_id));
  const deliveries = await sql<
    {
      alert_id: number;
      sink: string;
      target: string;
      state: DeliveryView["state"];
      attempts: number;
      next_attempt_at: Date;
      last_attempt_at: Date | null;
      last_status: number | null;
      last_error: string | null;
      delivered_at: Date | null;
    }[]
  >`
    SELECT alert_id, sink, target, state, attempts, next_attempt_at, last_attempt_at, last_status, last_error,
      delivered_at
    FROM pgtrickle.pgt_alert_deliveries WHERE alert_id = ANY(${ids}::int8[]) ORDER BY sink, target`;
  const iso = (d: Date | null) => d?.toISOString() ?? null;
  return alerts.map((a) => ({
    alert_id: Number(a.alert_id),
    webhook_id: a.webhook_id,
    stream_table: a.stream_table,
    kind: a.kind,
    state: a.state,
    severity: a.severity,
    payload: a.payload,
    created_at: a.created_at.toISOString(),
    deliveries: deliveries.filter((d) => Number(d.alert_id) === Number(a.alert_id)).map((d) => ({
      sink: d.sink,
      target: redactUrl(d.target),
      state: d.state,
      attempts: d.attempts,
      next_attempt_at: d.state === "pending" ? iso(d.next_attempt_at) : null,
      last_attempt_at: iso(d.last_attempt_at),
      last_status: d.last_status,
      last_error: d.last_error,
      delivered_at: iso(d.delivered_at),
    })),
  }));
}

/** A URL without user info, query or fragment: what may be shown of a sink (a token may hide in those). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return "(invalid URL)";
  }
}
