/** The renderer and content negotiation, without a database: what a scraper reads in each format. */
import assert from "node:assert/strict";
import { validateOpenMetrics } from "../engine/metrics/conformance.ts";
import { type Family, formatNumber, labelText, negotiate, render } from "../engine/metrics/exposition.ts";
import { PROMETHEUS_ACCEPT } from "./support/metrics.ts";

Deno.test("negotiation: OpenMetrics 1.0 when Accept allows it at least as much as text, else 0.0.4", () => {
  const cases: [string | undefined, string][] = [
    [PROMETHEUS_ACCEPT, "openmetrics"],
    ["application/openmetrics-text; version=1.0.0; charset=utf-8", "openmetrics"],
    ["application/openmetrics-text", "openmetrics"],
    [undefined, "text"],
    ["*/*", "text"],
    ["text/plain;version=0.0.4", "text"],
    ["application/openmetrics-text;version=0.0.1", "text"], // the draft is not served
    ["application/openmetrics-text;q=0", "text"],
    ["text/plain;q=0.9,application/openmetrics-text;q=0.5", "text"],
    ["text/plain;q=0.5,application/openmetrics-text;q=0.9", "openmetrics"],
    ["application/json", "text"],
  ];
  for (const [accept, want] of cases) assert.equal(negotiate(accept), want, String(accept));
});

const FAMILIES: Family[] = [
  { name: "x", type: "info", help: "An info", samples: [{ labels: labelText([["v", "1"]]), value: 1 }] },
  {
    name: "x_events",
    type: "counter",
    help: 'Help with a \\ backslash and a "quote"\nand a newline',
    samples: [{ labels: labelText([["db_name", 'a"b\\c\nd']]), value: 3, created: 1700000000.5 }],
  },
  {
    name: "x_duration_seconds",
    type: "histogram",
    unit: "seconds",
    help: "A histogram",
    bounds: [0.1, 1],
    samples: [{ labels: labelText([["action", "FULL"]]), cumulative: [1, 2, 3], sum: 2.5, count: 3, created: 1 }],
  },
  { name: "x_lag_seconds", type: "gauge", unit: "seconds", help: "A gauge", samples: [{ labels: "", value: NaN }] },
];

Deno.test("render: OpenMetrics with _created, UNIT, escaping and # EOF; valid", () => {
  const om = render(FAMILIES, "openmetrics");
  assert.deepEqual(validateOpenMetrics(om).violations, []);
  assert.equal(
    om,
    [
      "# HELP x An info",
      "# TYPE x info",
      'x_info{v="1"} 1',
      '# HELP x_events Help with a \\\\ backslash and a \\"quote\\"\\nand a newline',
      "# TYPE x_events counter",
      'x_events_total{db_name="a\\"b\\\\c\\nd"} 3',
      'x_events_created{db_name="a\\"b\\\\c\\nd"} 1700000000.5',
      "# HELP x_duration_seconds A histogram",
      "# TYPE x_duration_seconds histogram",
      "# UNIT x_duration_seconds seconds",
      'x_duration_seconds_bucket{action="FULL",le="0.1"} 1',
      'x_duration_seconds_bucket{action="FULL",le="1"} 2',
      'x_duration_seconds_bucket{action="FULL",le="+Inf"} 3',
      'x_duration_seconds_count{action="FULL"} 3',
      'x_duration_seconds_sum{action="FULL"} 2.5',
      'x_duration_seconds_created{action="FULL"} 1',
      "# HELP x_lag_seconds A gauge",
      "# TYPE x_lag_seconds gauge",
      "# UNIT x_lag_seconds seconds",
      "x_lag_seconds NaN",
      "# EOF",
      "",
    ].join("\n"),
  );
});

Deno.test("formatNumber: the shortest decimal a float parser reads back exactly, fast path included", () => {
  for (
    const v of [0, 3, -7, 0.1, 0.05, 0.005, 1.5, -0.001, 12.34, 1764201037.123, 1764201037.1, 1 / 3, 1e-7, 2 ** 60]
  ) {
    const text = formatNumber(v);
    assert.equal(Number(text), v, `${v} -> ${text}`);
    assert.equal(text, String(v), `${v} reads as String() writes it`);
  }
  assert.deepEqual([NaN, Infinity, -Infinity].map(formatNumber), ["NaN", "+Inf", "-Inf"]);
});

Deno.test("render: 0.0.4 names counters by their sample, infos as gauges, no _created, UNIT or # EOF", () => {
  const text = render(FAMILIES, "text");
  assert.match(text, /^# TYPE x_events_total counter\nx_events_total\{db_name="a\\"b\\\\c\\nd"\} 3$/m);
  assert.match(text, /^# TYPE x_info gauge\nx_info\{v="1"\} 1$/m);
  assert.ok(!/_created|# UNIT|# EOF/.test(text), text);
});
