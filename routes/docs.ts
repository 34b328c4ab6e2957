/**
 * GET /docs: the standard Swagger UI (npm swagger-ui-dist) reading /openapi.json. Its assets are served by the
 * service itself, so the page works offline; like every GET, they are reads (the read token when one is set).
 */
import { Hono } from "hono";
import pkg from "swagger-ui-dist/package.json" with { type: "json" };
import bundle from "swagger-ui-dist/swagger-ui-bundle.js" with { type: "text" };
import css from "swagger-ui-dist/swagger-ui.css" with { type: "text" };

// Imported as text, the files are part of the module graph: locked by deno.lock, no file reads at run time.
const ASSETS: Record<string, { body: string; type: string }> = {
  "swagger-ui-bundle.js": { body: bundle, type: "text/javascript; charset=utf-8" },
  "swagger-ui.css": { body: css, type: "text/css; charset=utf-8" },
};

// The package version is in the path, so a browser may keep the files for good: an upgrade changes their URLs.
const ASSET_DIR = `docs/swagger-ui-${pkg.version}`;

// Relative URLs (resolved against /docs) keep the page working behind a reverse proxy's path prefix.
// validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io.
const PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trickle API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="${ASSET_DIR}/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="${ASSET_DIR}/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({
  url: new URL("openapi.json", location.href).href,
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  validatorUrl: null,
});
</script></body></html>`;

/** The /docs page and the Swagger UI files it loads. */
export function docsRoutes(): Hono {
  const app = new Hono();
  app.get("/docs", (c) => c.html(PAGE));
  // One route per file, no parameter: any other path stays an ordinary 404.
  for (const [file, asset] of Object.entries(ASSETS)) {
    app.get(
      `/${ASSET_DIR}/${file}`,
      (c) => c.body(asset.body, 200, { "content-type": asset.type, "cache-control": "max-age=31536000, immutable" }),
    );
  }
  return app;
}
