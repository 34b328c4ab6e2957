/** GET /metrics: one scrape of every managed database, rendered in the negotiated format and checked if asked. */
import type { Engine } from "../engine.ts";
import { TrickleError } from "../errors.ts";
import type { Logger } from "../../log.ts";
import { validateOpenMetrics } from "./conformance.ts";
import { type Format, negotiate, OPENMETRICS_CONTENT_TYPE, render, TEXT_CONTENT_TYPE } from "./exposition.ts";
import { families, scrapeDatabase } from "./scrape.ts";

export interface ExposeOptions {
  /** The request's Accept header: OpenMetrics 1.0 when it allows it, else Prometheus text 0.0.4. */
  accept: string | undefined;
  /** Check the exposition with the conformance validator before serving it (setting `metricsSelfCheck`). */
  selfCheck: boolean;
  log: Logger;
}

type Exposition = { body: string; contentType: string; format: Format };

/**
 * Scrapes in flight, per engine and format: a request arriving while one runs shares its answer instead of reading
 * every database again, so many concurrent scrapers cost one scrape (the answer is as fresh as the request).
 */
const inflight = new WeakMap<Engine, Map<Format, Promise<Exposition>>>();

/** The exposition and its exact content type; 500 MetricsInvalid (logged, counted) when the self-check fails. */
export function exposeMetrics(engine: Engine, options: ExposeOptions): Promise<Exposition> {
  const format = negotiate(options.accept);
  const running = inflight.get(engine) ?? new Map<Format, Promise<Exposition>>();
  inflight.set(engine, running);
  let p = running.get(format);
  if (p === undefined) {
    p = scrape(engine, format, options).finally(() => running.delete(format));
    running.set(format, p);
  }
  return p;
}

async function scrape(engine: Engine, format: Format, options: ExposeOptions): Promise<Exposition> {
  const [scrapes, workers] = await Promise.all([
    Promise.all(engine.all().map((ctx) => scrapeDatabase(ctx, engine.metrics))),
    engine.scheduler.clusterWorkers().catch((e) => {
      options.log.warn("metrics: could not read the cluster's workers", { error: errorText(e) });
      return null;
    }),
  ]);
  const all = families(scrapes, { registry: engine.metrics, workers, instance: `trickle:${Deno.pid}` });
  const body = render(all, format);
  if (options.selfCheck) {
    // 0.0.4 has no validator of its own: the same families are checked as OpenMetrics (the formats differ only in
    // spelling: counter metadata names, _created, # EOF), so a broken series is caught whichever format was asked.
    const result = validateOpenMetrics(format === "openmetrics" ? body : render(all, "openmetrics"));
    if (!result.ok) {
      engine.metrics.countSelfCheckFailure(scrapes.map((s) => s.db.oid));
      options.log.error("metrics: the exposition failed the conformance check; not served", {
        violations: result.violations.slice(0, 20),
        count: result.violations.length,
      });
      throw new TrickleError(
        "MetricsInvalid",
        `The exposition failed the OpenMetrics conformance check (${result.violations.length} violations, the ` +
          `first: line ${result.violations[0]!.line}: ${result.violations[0]!.message}); the log lists them`,
      );
    }
  }
  return { body, contentType: format === "openmetrics" ? OPENMETRICS_CONTENT_TYPE : TEXT_CONTENT_TYPE, format };
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
