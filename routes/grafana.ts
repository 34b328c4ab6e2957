/**
 * /grafana: the API the Grafana JSON datasource plugin (simpod-json-datasource) calls. Bodies are parsed leniently as
 * the plugin sends them (unknown fields ignored); errors are `{"message": ...}` with a 4xx, the form the plugin shows.
 */
import { Hono } from "hono";
import { z } from "zod";
import type { Engine } from "../engine/engine.ts";
import { TrickleError } from "../engine/errors.ts";
import * as grafana from "../engine/grafana.ts";
import type { Logger } from "../log.ts";
import type { AppEnv } from "./env.ts";
import { errorToResponse } from "./problem.ts";

const Filter = z.object({ key: z.string(), operator: z.string(), value: z.coerce.string() });
const Range = z.object({ from: z.string().optional(), to: z.string().optional() }).optional();
/** The plugin sends a target's payload as an object, or as the JSON text typed in its code editor. */
const Payload = z.union([z.record(z.string(), z.unknown()), z.string()]).optional().transform((p) => {
  if (p === undefined || (typeof p === "string" && p.trim() === "")) return {};
  if (typeof p !== "string") return p;
  try {
    const parsed: unknown = JSON.parse(p);
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
      return parsed as Record<string, unknown>;
    }
  } catch {
    // falls through to the message below
  }
  throw new TrickleError("BadRequest", "A target's payload must be a JSON object");
});

const QueryBody = z.object({
  range: Range,
  intervalMs: z.number().optional(),
  maxDataPoints: z.number().optional(),
  targets: z.array(
    z.object({
      target: z.string().optional(),
      refId: z.string().optional(),
      hide: z.boolean().optional(),
      payload: Payload,
    }),
  ).default([]),
  filters: z.array(Filter).optional(),
  adhocFilters: z.array(Filter).optional(),
});

const MetricsBody = z.object({ metric: z.string().optional(), payload: Payload });
const PayloadOptionsBody = z.object({ metric: z.string(), payload: Payload, name: z.string() });
const VariableBody = z.object({
  payload: z.union([
    z.string().transform((target) => ({ target })),
    z.object({ target: z.string(), database: z.unknown().optional() }),
  ]),
  range: Range,
});
const TagValuesBody = z.object({ key: z.string() });
const AnnotationsBody = z.object({
  annotation: z.object({ name: z.string().default(""), query: z.string().default("") }),
  range: Range,
  filters: z.array(Filter).optional(),
  adhocFilters: z.array(Filter).optional(),
});

/** Ad-hoc filters: `filters` (plugin 0.6.4 and later) and `adhocFilters` (older); either, or both, apply. */
function adhoc(b: { filters?: grafana.AdhocFilter[] | undefined; adhocFilters?: grafana.AdhocFilter[] | undefined }) {
  return [...(b.filters ?? []), ...(b.adhocFilters ?? [])];
}

/** The body parsed by `schema`, or a 400 naming the first problem. */
async function body<T extends z.ZodType>(req: Request, schema: T): Promise<z.output<T>> {
  let raw: unknown;
  try {
    const text = await req.text();
    raw = text.trim() === "" ? {} : JSON.parse(text);
  } catch {
    throw new TrickleError("BadRequest", "The request body is not JSON");
  }
  const r = schema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new TrickleError("BadRequest", `${i.path.join(".") || "body"}: ${i.message}`);
  }
  return r.data;
}

/** The datasource's POSTs only read: the read token is enough for them. */
export function isGrafanaPath(path: string): boolean {
  return path === "/grafana" || path.startsWith("/grafana/");
}

/** The datasource's routes, mounted on /grafana. */
export function grafanaRoutes(engine: Engine, log: Logger): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  // "Test connection" and the plugin's health check.
  app.get("/", (c) => c.json({ status: "ok", datasource: "trickle" }));
  app.post("/metrics", async (c) => {
    await body(c.req.raw, MetricsBody);
    return c.json(grafana.metricList(engine));
  });
  app.post("/metric-payload-options", async (c) => {
    const b = await body(c.req.raw, PayloadOptionsBody);
    return c.json(await grafana.payloadOptions(engine, b));
  });
  app.post("/query", async (c) => {
    const b = await body(c.req.raw, QueryBody);
    const frames = await grafana.query(engine, {
      range: grafana.rangeOf({ ...b.range, intervalMs: b.intervalMs, maxDataPoints: b.maxDataPoints }, new Date()),
      // Placeholder targets (no metric chosen yet) and hidden ones are skipped, as the plugin itself does.
      targets: b.targets.filter((t) => t.target !== undefined && t.target !== "" && t.hide !== true).map((t) => ({
        target: t.target!,
        refId: t.refId,
        payload: t.payload,
      })),
      filters: adhoc(b),
    });
    return c.json(frames);
  });
  app.post("/variable", async (c) => {
    const b = await body(c.req.raw, VariableBody);
    return c.json(await grafana.variable(engine, b.payload));
  });
  app.post("/tag-keys", (c) => c.json(grafana.tagKeys()));
  app.post("/tag-values", async (c) => {
    const b = await body(c.req.raw, TagValuesBody);
    return c.json(await grafana.tagValues(engine, b.key));
  });
  app.post("/annotations", async (c) => {
    const b = await body(c.req.raw, AnnotationsBody);
    return c.json(
      await grafana.annotations(engine, {
        query: b.annotation.query,
        name: b.annotation.name,
        range: grafana.rangeOf({ ...b.range }, new Date()),
        filters: adhoc(b),
      }),
    );
  });
  // The plugin shows `message` from a non-2xx answer; other errors (a database down) keep their status.
  app.onError(async (err, c) => {
    if (err instanceof TrickleError) return c.json({ message: err.message }, err.status as 400);
    const res = errorToResponse(err, c, log);
    const p = await res.json() as { detail?: string };
    return c.json({ message: p.detail ?? "An internal error occurred" }, res.status as 500);
  });
  return app;
}
