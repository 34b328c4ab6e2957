/** GET /docs: the standard Swagger UI, served by the service itself (works offline), reading /openapi.json. */
import assert from "node:assert/strict";
import { dbTest, startTestService } from "./support/service.ts";

const BASE = "http://trickle.test/docs";

/** The page's scripts and stylesheets, resolved as a browser would against /docs. */
function assetsOf(html: string): { scripts: URL[]; styles: URL[] } {
  const scripts = [...html.matchAll(/<script[^>]*\ssrc="([^"]+)"/g)].map((m) => new URL(m[1]!, BASE));
  const styles = [...html.matchAll(/<link[^>]*\srel="stylesheet"[^>]*\shref="([^"]+)"/g)].map((m) =>
    new URL(m[1]!, BASE)
  );
  return { scripts, styles };
}

/** The package's own file, as installed: what the service must serve byte for byte. */
function packageFile(name: string): Promise<string> {
  return Deno.readTextFile(new URL(import.meta.resolve(`swagger-ui-dist/${name}`)));
}

Deno.test(
  "GET /docs: Swagger UI from the service's own copy of swagger-ui-dist, pointed at /openapi.json",
  dbTest,
  async (t) => {
    const svc = await startTestService();
    try {
      const page = await svc.request("GET", "/docs");
      assert.equal(page.status, 200);
      assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
      const html = await page.text();
      const { scripts, styles } = assetsOf(html);

      await t.step("every script and stylesheet comes from the service, none from a CDN", () => {
        assert.ok(scripts.length > 0 && styles.length > 0, "the page loads a script and a stylesheet");
        for (const u of [...scripts, ...styles]) assert.equal(u.origin, new URL(BASE).origin, `${u} is local`);
        assert.ok(scripts.some((u) => u.pathname.endsWith("/swagger-ui-bundle.js")), "the Swagger UI bundle");
        assert.ok(styles.some((u) => u.pathname.endsWith("/swagger-ui.css")), "the Swagger UI stylesheet");
      });

      await t.step("Swagger UI is started on /openapi.json, with no online validator", () => {
        const config = /SwaggerUIBundle\(\{([\s\S]*?)\}\)/.exec(html);
        assert.ok(config !== null, "the page starts SwaggerUIBundle");
        const url = /url:\s*new URL\("([^"]+)", location\.href\)/.exec(config[1]!);
        assert.ok(url !== null, "Swagger UI is given the document's URL");
        assert.equal(new URL(url[1]!, BASE).pathname, "/openapi.json");
        assert.match(config[1]!, /validatorUrl:\s*null/, "no request to validator.swagger.io");
      });

      await t.step("each asset is the package's file, with its content type", async () => {
        const expected: Record<string, { file: string; type: RegExp }> = {
          "swagger-ui-bundle.js": { file: "swagger-ui-bundle.js", type: /^text\/javascript; charset=utf-8$/ },
          "swagger-ui.css": { file: "swagger-ui.css", type: /^text\/css; charset=utf-8$/ },
        };
        assert.equal(scripts.length + styles.length, 2, "the bundle and its stylesheet");
        for (const u of [...scripts, ...styles]) {
          const name = u.pathname.split("/").at(-1)!;
          const want = expected[name];
          assert.ok(want !== undefined, `unexpected asset ${u.pathname}`);
          const res = await svc.request("GET", u.pathname);
          assert.equal(res.status, 200, u.pathname);
          assert.match(res.headers.get("content-type") ?? "", want.type);
          assert.equal(
            await res.text(),
            await packageFile(want.file),
            `${u.pathname} is swagger-ui-dist's ${want.file}`,
          );
        }
        // The document it reads is there too.
        const doc = await svc.request("GET", "/openapi.json");
        assert.equal(doc.status, 200);
        assert.equal((await doc.json()).openapi, "3.1.0");
      });

      await t.step("an asset the package does not have is a 404 problem", async () => {
        const res = await svc.request("GET", scripts[0]!.pathname.replace(/[^/]+$/, "nope.js"));
        assert.equal(res.status, 404);
        assert.match(res.headers.get("content-type") ?? "", /^application\/problem\+json/);
        assert.equal((await res.json()).code, "NotFound");
      });
    } finally {
      await svc.close();
    }
  },
);

Deno.test(
  "GET /docs with a read token: the page, its assets and /openapi.json are open (a browser sends no token), data is not",
  dbTest,
  async () => {
    const svc = await startTestService({ adminToken: "admin-secret", readToken: "read-secret" });
    try {
      const html = await (await svc.request("GET", "/docs")).text();
      const { scripts, styles } = assetsOf(html);
      const paths = ["/docs", ...[...scripts, ...styles].map((u) => u.pathname), "/openapi.json"];
      assert.equal(paths.length, 4);
      for (const path of paths) {
        const open = await svc.request("GET", path);
        assert.equal(open.status, 200, `${path} without a token`);
        await open.body?.cancel();
      }
      // The data routes still need the token.
      assert.equal((await svc.request("GET", "/stream-tables")).status, 401, "/stream-tables without a token");
      const wrong = await svc.request("GET", "/stream-tables", undefined, { authorization: "Bearer nope" });
      assert.equal(wrong.status, 403, "/stream-tables with a wrong token");
      const read = await svc.request("GET", "/stream-tables", undefined, { authorization: "Bearer read-secret" });
      assert.equal(read.status, 200, "/stream-tables with the read token");
      await read.body?.cancel();
      assert.equal((await svc.request("GET", "/docs/../stream-tables")).status, 401, "no way around the token");
    } finally {
      await svc.close();
    }
  },
);
