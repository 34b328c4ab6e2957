/**
 * Delivering the alert outbox (docs/SQL_REFERENCE.md, alerts): webhooks signed the Standard Webhooks way
 * (`standardwebhooks`: webhook-id, webhook-timestamp, webhook-signature) and Alertmanager's POST /api/v2/alerts.
 * Each due delivery is claimed with FOR UPDATE SKIP LOCKED, so two instances never send the same attempt; its
 * outcome commits with the claim. A crash before that commit leaves it pending: it is sent again with the same
 * webhook-id (at least once; the receiver deduplicates by it). 2xx delivers; 5xx, 429 and network errors retry with
 * exponential backoff and jitter, or after Retry-After when the receiver gives it; other answers, or the attempt
 * limit, make it dead. Redirects are not followed. Secrets never leave memory.
 */
import { Webhook } from "standardwebhooks";
import type { Clock } from "../clock.ts";
import type { DatabaseContext } from "../context.ts";
import type { Logger } from "../../log.ts";
import type { AlertSinks } from "./outbox.ts";
import { recordDelivery } from "../metrics/registry.ts";

export interface DeliverySettings {
  sinks: AlertSinks;
  maxAttempts: number;
  retryBaseMs: number;
  retryMaxMs: number;
  timeoutMs: number;
  /** How often due deliveries are looked for. */
  pollMs: number;
}

interface Due {
  alert_id: number;
  sink: "webhook" | "alertmanager";
  target: string;
  attempts: number;
  webhook_id: string;
  kind: string;
  state: "firing" | "resolved";
  severity: string;
  stream_table: string;
  payload: Record<string, unknown>;
}

/** What one attempt came to. */
interface Outcome {
  ok: boolean;
  retry: boolean;
  status: number | null;
  error: string | null;
  retryAfterMs: number | null;
}

/** How often an instance without sinks looks at the outbox. */
const IDLE_POLL_MS = 60_000;

/** Sends due alert deliveries of every managed database. */
export class AlertDelivery {
  readonly #dbs: DatabaseContext[];
  readonly #settings: DeliverySettings;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #webhooks: Map<string, Webhook>;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #running: Promise<void> | null = null;
  #stopped = false;
  #started = false;

  constructor(dbs: DatabaseContext[], settings: DeliverySettings, deps: { log: Logger; clock: Clock }) {
    this.#dbs = dbs;
    this.#settings = settings;
    this.#log = deps.log;
    this.#clock = deps.clock;
    this.#webhooks = new Map(settings.sinks.webhooks.map((w) => [w.url, new Webhook(w.secret)]));
  }

  /**
   * Looks for due deliveries every pollMs until stopped. An instance with no sink configured writes no deliveries,
   * so it looks only every IDLE_POLL_MS (for rows left by an earlier configuration, which it marks dead), and does
   * not keep a database busy twice a second for nothing.
   */
  start(): void {
    const { webhooks, alertmanagerUrl } = this.#settings.sinks;
    const pollMs = webhooks.length === 0 && alertmanagerUrl === null
      ? Math.max(this.#settings.pollMs, IDLE_POLL_MS)
      : this.#settings.pollMs;
    this.#stopped = false;
    this.#started = true;
    const loop = async () => {
      if (this.#stopped) return;
      this.#running = this.deliverAll().then(() => {});
      await this.#running;
      if (!this.#stopped) this.#timer = setTimeout(loop, pollMs);
    };
    this.#timer = setTimeout(loop, 0);
  }

  /** Sends what is due now, without waiting for the next poll (after a pass wrote alerts); only once started. */
  kick(): void {
    if (!this.#started || this.#stopped) return;
    const previous = this.#running ?? Promise.resolve();
    this.#running = previous.then(() => this.deliverAll()).then(() => {}, () => {});
  }

  /** Stops looking; an attempt in flight finishes (or its claim rolls back with the pool). */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    await this.#running;
  }

  /** One round over every database; the attempts made. */
  async deliverAll(): Promise<number> {
    let n = 0;
    for (const ctx of this.#dbs) {
      try {
        n += await this.deliverDue(ctx);
      } catch (e) {
        this.#log.warn("alert delivery round failed", { database: ctx.name, error: e });
      }
    }
    return n;
  }

  /** Attempts the deliveries of `ctx` that are due now; returns how many were attempted. */
  async deliverDue(ctx: DatabaseContext, limit = 20): Promise<number> {
    const now = this.#clock.now();
    const outcomes: { sink: string; outcome: string }[] = [];
    const attempted = await ctx.sql.begin(async (tx) => {
      const due = await tx<Due[]>`
        SELECT d.alert_id, d.sink, d.target, d.attempts, a.webhook_id, a.kind, a.state, a.severity, a.stream_table,
          a.payload
        FROM pgtrickle.pgt_alert_deliveries d JOIN pgtrickle.pgt_alerts a USING (alert_id)
        WHERE d.state = 'pending' AND d.next_attempt_at <= ${now}
        ORDER BY d.next_attempt_at, d.alert_id
        LIMIT ${limit}
        FOR UPDATE OF d SKIP LOCKED`;
      for (const d of due) {
        const outcome = await this.#attempt(d);
        const attempts = d.attempts + 1;
        const dead = !outcome.ok && (!outcome.retry || attempts >= this.#settings.maxAttempts);
        const state = outcome.ok ? "delivered" : dead ? "dead" : "pending";
        const at = this.#clock.now();
        const next = new Date(at.getTime() + (outcome.retryAfterMs ?? this.backoffMs(attempts)));
        await tx`
          UPDATE pgtrickle.pgt_alert_deliveries SET state = ${state}, attempts = ${attempts},
            last_attempt_at = ${at}, last_status = ${outcome.status}, last_error = ${outcome.error},
            delivered_at = ${outcome.ok ? at : null}, next_attempt_at = ${state === "pending" ? next : at}
          WHERE alert_id = ${d.alert_id} AND sink = ${d.sink} AND target = ${d.target}`;
        // The sink's kind, never its URL: the metric's labels are readable with the read token.
        outcomes.push({ sink: d.sink, outcome: outcome.ok ? "delivered" : dead ? "dead" : "failed" });
        const log = { database: ctx.name, alert_id: Number(d.alert_id), sink: d.sink, attempts, state };
        if (dead) this.#log.warn("alert delivery dead", { ...log, error: outcome.error });
        else if (!outcome.ok) this.#log.info("alert delivery will retry", { ...log, error: outcome.error });
      }
      return due.length;
    });
    // Counted once the outcomes are committed (pg_trickle_webhook_deliveries_total).
    for (const o of outcomes) recordDelivery(ctx, o);
    return attempted;
  }

  /** Exponential backoff with "full jitter" over its upper half: spread, never shorter than half the step. */
  backoffMs(attempts: number): number {
    const step = Math.min(this.#settings.retryMaxMs, this.#settings.retryBaseMs * 2 ** Math.max(0, attempts - 1));
    return Math.round(step / 2 + Math.random() * (step / 2));
  }

  async #attempt(d: Due): Promise<Outcome> {
    const now = this.#clock.now();
    let request: { url: string; body: string; headers: Record<string, string> };
    if (d.sink === "webhook") {
      const wh = this.#webhooks.get(d.target);
      if (wh === undefined) {
        return {
          ok: false,
          retry: false,
          status: null,
          error: "the webhook is no longer configured",
          retryAfterMs: null,
        };
      }
      const body = JSON.stringify({
        type: `alert.${d.state}`,
        timestamp: now.toISOString(),
        data: { alert_id: Number(d.alert_id), ...d.payload },
      });
      request = {
        url: d.target,
        body,
        headers: {
          "content-type": "application/json",
          "webhook-id": d.webhook_id,
          "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
          "webhook-signature": wh.sign(d.webhook_id, now, body),
        },
      };
    } else {
      request = {
        url: `${d.target.replace(/\/$/, "")}/api/v2/alerts`,
        body: JSON.stringify([alertmanagerAlert(d)]),
        headers: { "content-type": "application/json" },
      };
    }
    try {
      const res = await fetch(request.url, {
        method: "POST",
        headers: request.headers,
        body: request.body,
        redirect: "manual",
        signal: AbortSignal.timeout(this.#settings.timeoutMs),
      });
      await res.body?.cancel();
      if (res.status >= 200 && res.status < 300) {
        return { ok: true, retry: false, status: res.status, error: null, retryAfterMs: null };
      }
      const retry = res.status === 429 || res.status >= 500;
      return {
        ok: false,
        retry,
        status: res.status,
        error: res.status >= 300 && res.status < 400
          ? `HTTP ${res.status}: redirects are not followed`
          : `HTTP ${res.status}${retry ? "" : ": not retried (the receiver refused the alert)"}`,
        retryAfterMs: retry ? retryAfterMs(res.headers.get("retry-after"), now, this.#settings.retryMaxMs) : null,
      };
    } catch (e) {
      const why = e instanceof DOMException && e.name === "TimeoutError"
        ? `no answer within ${this.#settings.timeoutMs} ms`
        : e instanceof Error
        ? e.message
        : String(e);
      return { ok: false, retry: true, status: null, error: `network: ${withoutUrlSecrets(why)}`, retryAfterMs: null };
    }
  }
}

/**
 * A network error's text without what a URL may hide a secret in (user info, query, fragment): Deno's fetch errors
 * quote the URL, and this text is logged and shown in /alerts.
 */
export function withoutUrlSecrets(text: string): string {
  return text.replace(/(https?:\/\/)[^\s/@)]*@/g, "$1").replace(/(https?:\/\/[^\s?#)]*)[?#][^\s)]*/g, "$1");
}

/** Retry-After as milliseconds from `now` (seconds or an HTTP date), capped; null when absent or unreadable. */
export function retryAfterMs(header: string | null, now: Date, capMs: number): number | null {
  if (header === null || header.trim() === "") return null;
  const t = header.trim();
  const ms = /^\d+$/.test(t) ? Number(t) * 1000 : Date.parse(t) - now.getTime();
  return Number.isNaN(ms) ? null : Math.min(capMs, Math.max(0, ms));
}

/** The alert as Alertmanager's API v2 takes it; a resolve carries endsAt. */
function alertmanagerAlert(d: Due): Record<string, unknown> {
  const p = d.payload;
  return {
    labels: {
      alertname: d.kind,
      stream_table: d.stream_table,
      db_name: String(p.db_name ?? ""),
      severity: d.severity,
    },
    annotations: {
      summary: d.kind === "predicted_sla_breach"
        ? `The next refresh of ${d.stream_table} is predicted to take ${p.predicted_ms} ms, over its ${p.sla_ms} ms deadline`
        : `The data of ${d.stream_table} is older than its ${p.sla_ms} ms freshness deadline`,
      predicted_ms: String(p.predicted_ms ?? ""),
      sla_ms: String(p.sla_ms ?? ""),
    },
    startsAt: String(p.fired_at ?? p.at),
    ...(d.state === "resolved" ? { endsAt: String(p.at) } : {}),
  };
}
