/** Reading a /metrics answer the way a scraper does: its samples by name and labels, and their values. */
import assert from "node:assert/strict";
import { parseSampleLine } from "../../engine/metrics/conformance_sample.ts";
import type { TestService } from "./service.ts";

export const OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8";
export const TEXT = "text/plain; version=0.0.4; charset=utf-8";
/** What Prometheus 3 sends. */
export const PROMETHEUS_ACCEPT =
  "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75," +
  "text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

export interface ParsedSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** GET /metrics with `accept`; the body after checking status and the exact content type. */
export async function scrape(s: TestService, accept: string | undefined, contentType: string): Promise<string> {
  const res = await s.request("GET", "/metrics", undefined, accept === undefined ? {} : { accept });
  const body = await res.text();
  assert.equal(res.status, 200, body);
  assert.equal(res.headers.get("content-type"), contentType);
  return body;
}

/** Every sample line of an exposition (either format), parsed. */
export function samples(body: string): ParsedSample[] {
  const out: ParsedSample[] = [];
  for (const line of body.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const p = parseSampleLine(line);
    assert.ok(p.ok, `not a sample line: ${JSON.stringify(line)}`);
    out.push({ name: p.sample.name, labels: Object.fromEntries(p.sample.labels), value: Number(p.sample.value) });
  }
  return out;
}

/** The one sample named `name` whose labels include `labels`; fails when there is none or several. */
export function sample(all: ParsedSample[], name: string, labels: Record<string, string>): ParsedSample {
  const found = all.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.equal(found.length, 1, `${name}${JSON.stringify(labels)}: ${found.length} samples`);
  return found[0]!;
}
