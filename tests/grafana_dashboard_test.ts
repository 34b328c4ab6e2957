/**
 * docs/dashboards/trickle.json: it parses, declares its two data sources as import inputs, and every query on the
 * JSON datasource names a target, variable or annotation query that /grafana serves (the metric list /grafana/metrics
 * answers is built from TARGETS), so the published dashboard cannot drift from the API.
 */
import assert from "node:assert/strict";
import { ANNOTATION_QUERIES, VARIABLES } from "../engine/grafana.ts";
import { TARGETS } from "../engine/grafana_targets.ts";

const PATH = new URL("../docs/dashboards/trickle.json", import.meta.url);

interface Ds {
  type: string;
  uid: string;
}
interface Panel {
  type: string;
  title: string;
  datasource?: Ds;
  targets?: { datasource?: Ds; target?: string; expr?: string; payload?: Record<string, unknown> }[];
  panels?: Panel[];
}

Deno.test("the dashboard parses and names only what the service serves", async () => {
  const dash = JSON.parse(await Deno.readTextFile(PATH));
  const inputs = new Map<string, string>(
    dash.__inputs.map((i: { name: string; pluginId: string }) => [`\${${i.name}}`, i.pluginId]),
  );
  assert.deepEqual([...inputs.values()].sort(), ["prometheus", "simpod-json-datasource"]);
  const checkDs = (ds: Ds | undefined, where: string) => {
    assert.ok(ds !== undefined, `${where}: no datasource`);
    assert.equal(inputs.get(ds.uid), ds.type, `${where}: datasource ${JSON.stringify(ds)} is not an input`);
  };

  const panels: Panel[] = dash.panels.flatMap((p: Panel) => [p, ...(p.panels ?? [])]);
  const used = { json: new Set<string>(), prometheus: 0 };
  for (const p of panels.filter((p) => p.type !== "row")) {
    checkDs(p.datasource, p.title);
    assert.ok((p.targets ?? []).length > 0, `${p.title}: no query`);
    for (const t of p.targets!) {
      checkDs(t.datasource, p.title);
      if (t.datasource!.type === "prometheus") {
        assert.match(t.expr ?? "", /\bpg_trickle_[a-z_]+/, `${p.title}: a PromQL query on trickle's metrics`);
        used.prometheus++;
      } else {
        assert.ok(t.target !== undefined && t.target in TARGETS, `${p.title}: target ${t.target} is not served`);
        used.json.add(t.target);
      }
    }
  }
  assert.ok(used.prometheus > 0 && used.json.size > 0, "both data sources are used");

  for (const v of dash.templating.list) {
    if (v.type === "query") {
      checkDs(v.datasource, `variable ${v.name}`);
      assert.ok((VARIABLES as readonly string[]).includes(v.query.query), `variable ${v.name}: ${v.query.query}`);
    } else {
      assert.equal(v.type, "adhoc");
      checkDs(v.datasource, `variable ${v.name}`);
    }
  }
  const annotations = dash.annotations.list.filter((a: { builtIn?: number }) => a.builtIn !== 1);
  assert.ok(annotations.length > 0, "refresh failures are annotated");
  for (const a of annotations) {
    checkDs(a.datasource, `annotation ${a.name}`);
    assert.ok((ANNOTATION_QUERIES as readonly string[]).includes(a.query), `annotation ${a.name}: ${a.query}`);
    assert.ok(a.target.target in TARGETS, `annotation ${a.name}: ${a.target.target}`);
  }
});
