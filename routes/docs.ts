/** GET /docs: a self-contained page that renders /openapi.json (no external scripts, works offline). */
import { Hono } from "hono";

const PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trickle API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem 2rem;color:#222}
h1{margin-bottom:0}code,pre{font:13px ui-monospace,monospace;background:#f4f4f4;border-radius:4px}
pre{padding:.6rem;overflow:auto}.op{border:1px solid #ddd;border-radius:6px;margin:.8rem 0;padding:.2rem .9rem}
.m{display:inline-block;min-width:4.5rem;font-weight:700;text-transform:uppercase}
.get{color:#0a6}.post{color:#06c}.patch{color:#a60}.delete{color:#c22}
summary{cursor:pointer}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
</style></head><body>
<h1>trickle API</h1><p id="meta">Loading <a href="openapi.json">openapi.json</a>…</p><div id="ops"></div>
<script>
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (ch) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[ch]));
fetch("openapi.json").then((r) => r.json()).then((doc) => {
  document.getElementById("meta").innerHTML = esc(doc.info.title) + " " + esc(doc.info.version) +
    " — <a href='openapi.json'>openapi.json</a>. " + esc(doc.info.description || "");
  const out = [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const params = (op.parameters || []).map((p) => "<tr><td><code>" + esc(p.name) + "</code></td><td>" + esc(p.in) +
        "</td><td>" + esc(p.description || "") + "</td></tr>").join("");
      const body = op.requestBody ? "<p>Body:</p><pre>" + esc(JSON.stringify(op.requestBody.content, null, 2)) + "</pre>" : "";
      const responses = Object.entries(op.responses || {}).map(([code, r]) => "<li><b>" + esc(code) + "</b> " +
        esc(r.description) + "</li>").join("");
      out.push("<details class='op'><summary><span class='m " + method + "'>" + method + "</span> <code>" + esc(path) +
        "</code> " + esc(op.summary || "") + "</summary>" + (params ? "<table><tr><th>parameter</th><th>in</th><th></th></tr>" +
        params + "</table>" : "") + body + "<p>Responses:</p><ul>" + responses + "</ul></details>");
    }
  }
  out.push("<h2>Schemas</h2><pre>" + esc(JSON.stringify((doc.components || {}).schemas || {}, null, 2)) + "</pre>");
  document.getElementById("ops").innerHTML = out.join("");
}).catch((e) => { document.getElementById("meta").textContent = "Could not load openapi.json: " + e; });
</script></body></html>`;

/** The /docs page. */
export function docsRoutes(): Hono {
  const app = new Hono();
  app.get("/docs", (c) => c.html(PAGE));
  return app;
}
