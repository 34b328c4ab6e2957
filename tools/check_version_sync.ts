/**
 * `deno task check-version-sync [root]`: the version in deno.json must be the one everywhere it is shown: version.ts,
 * the OpenAPI document, /health, the pg_trickle info metric, the top release of CHANGELOG.md, and the last release of
 * version.ts's RELEASES, whose catalog must end at the newest migration file. Also checks every dependency is pinned
 * to an exact version in deno.json. Prints each disagreement and exits 1, or one OK line and exits 0. A command-line
 * tool: its output is its answer, so it writes to stdout/stderr, not to the logger.
 */
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** The files it reads beside sql/migrations/ (a test copies these to edit one). */
export const FILES = [
  "deno.json",
  "version.ts",
  "CHANGELOG.md",
  "routes/app.ts",
  "routes/health.ts",
  "engine/metrics/scrape.ts",
] as const;

/** Where a version is shown, found in its source as the expression after a fixed pattern. */
const SHOWN: { what: string; file: string; pattern: RegExp }[] = [
  {
    what: "the OpenAPI document's info.version",
    file: "routes/app.ts",
    pattern: /\binfo:\s*\{[^}]*?\bversion:\s*([^,\n}]+)/,
  },
  { what: "/health's version", file: "routes/health.ts", pattern: /\bstatus:\s*"ok"[^}]*?\bversion:\s*([^,\n}]+)/ },
  {
    what: "the pg_trickle info metric's version label",
    file: "engine/metrics/scrape.ts",
    pattern: /\[\s*"version"\s*,\s*([^\]\n]+)\]/,
  },
];

const SEMVER = /^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$/;
/** An exact pin: npm:name@1.2.3 (a prerelease allowed), optionally the "name/" form with a trailing slash. */
const PINNED = /^npm:\/?(?:@[^/@]+\/)?[^/@]+@\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?\/?$/;

interface Release {
  version: string;
  lastMigration: number;
}

/** Every disagreement found under `root` (a checkout), each naming the file and both versions; empty when in sync. */
export async function checkVersionSync(root: string): Promise<string[]> {
  const problems: string[] = [];
  const read = (file: string) => Deno.readTextFile(path.join(root, file));
  const meta = JSON.parse(await read("deno.json")) as {
    version?: unknown;
    imports?: Record<string, string>;
    allowScripts?: { allow?: string[] };
  };
  const version = typeof meta.version === "string" ? meta.version : "";
  if (!SEMVER.test(version)) problems.push(`deno.json: "version" is ${JSON.stringify(meta.version)}, not x.y.z`);

  const mod = await import(pathToFileURL(path.resolve(root, "version.ts")).href) as {
    VERSION: string;
    RELEASES: readonly Release[];
  };
  if (mod.VERSION !== version) problems.push(`version.ts: VERSION is ${mod.VERSION}, deno.json says ${version}`);

  for (const place of SHOWN) {
    const source = await read(place.file);
    const expr = place.pattern.exec(source)?.[1]?.trim();
    const shown = expr === undefined ? undefined : resolve(expr, source, mod.VERSION);
    if (shown === undefined) {
      problems.push(`${place.file}: cannot find ${place.what} (expected VERSION from version.ts or a literal)`);
    } else if (shown !== version) {
      problems.push(`${place.file}: ${place.what} is ${shown} (${expr}), deno.json says ${version}`);
    }
  }

  const changelog = [...(await read("CHANGELOG.md")).matchAll(/^## \[([^\]]+)\](.*)$/gm)]
    .map((m) => ({ version: m[1]!, rest: m[2]!.trim() }))
    .filter((h) => h.version.toLowerCase() !== "unreleased");
  if (changelog[0]?.version !== version) {
    problems.push(`CHANGELOG.md: the top release is ${changelog[0]?.version ?? "missing"}, deno.json says ${version}`);
  }
  for (const h of changelog) {
    if (!/^- \d{4}-\d{2}-\d{2}$/.test(h.rest)) {
      problems.push(`CHANGELOG.md: release ${h.version} has no date ("## [${h.version}] - YYYY-MM-DD")`);
    }
  }
  const listed = mod.RELEASES.map((r) => r.version).reverse();
  if (changelog.map((h) => h.version).join() !== listed.join()) {
    problems.push(
      `CHANGELOG.md: its releases are ${changelog.map((h) => h.version).join(", ")}, version.ts RELEASES has ` +
        listed.join(", "),
    );
  }

  problems.push(...await checkCatalog(root, mod.RELEASES, version));
  problems.push(...await checkPins(root, meta));
  return problems;
}

/** The value an expression shows: VERSION imported from version.ts, or a string literal; undefined otherwise. */
function resolve(expr: string, source: string, version: string): string | undefined {
  const literal = /^["'`]([^"'`$]*)["'`]$/.exec(expr);
  if (literal !== null) return literal[1];
  const imported = /import\s*\{[^}]*\bVERSION\b[^}]*\}\s*from\s*"(?:\.\.?\/)+version\.ts"/.test(source);
  return expr === "VERSION" && imported ? version : undefined;
}

/** RELEASES: ascending, the last one is this version and its catalog ends at the newest migration file. */
async function checkCatalog(root: string, releases: readonly Release[], version: string): Promise<string[]> {
  const problems: string[] = [];
  let newest = 0;
  for await (const entry of Deno.readDir(path.join(root, "sql/migrations"))) {
    const m = /^(\d{4})_[a-z0-9_]+\.sql$/.exec(entry.name);
    if (m !== null) newest = Math.max(newest, Number(m[1]));
  }
  const last = releases.at(-1);
  if (last?.version !== version) {
    problems.push(`version.ts: the last of RELEASES is ${last?.version ?? "missing"}, deno.json says ${version}`);
  }
  if (last !== undefined && last.lastMigration !== newest) {
    problems.push(
      `version.ts: RELEASES says ${last.version}'s catalog ends at migration ${last.lastMigration}, the newest ` +
        `file in sql/migrations/ is ${String(newest).padStart(4, "0")}`,
    );
  }
  releases.forEach((r, i) => {
    const before = releases[i - 1];
    if (before === undefined) return;
    if (compareVersions(before.version, r.version) >= 0) {
      problems.push(`version.ts: RELEASES lists ${r.version} after ${before.version}; oldest first`);
    }
    if (r.lastMigration < before.lastMigration) {
      problems.push(`version.ts: RELEASES gives ${r.version} an older catalog than ${before.version}`);
    }
  });
  return problems;
}

function compareVersions(a: string, b: string): number {
  const parts = (v: string) => v.split("-")[0]!.split(".").map(Number);
  const [x, y] = [parts(a), parts(b)];
  for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return (x[i] ?? 0) - (y[i] ?? 0);
  return a === b ? 0 : a.includes("-") ? -1 : 1;
}

/** Every import in deno.json pinned exactly; allowScripts names the same versions; no specifier outside deno.json. */
async function checkPins(
  root: string,
  meta: { imports?: Record<string, string>; allowScripts?: { allow?: string[] } },
): Promise<string[]> {
  const problems: string[] = [];
  const imports = meta.imports ?? {};
  for (const [name, spec] of Object.entries(imports)) {
    if (!PINNED.test(spec)) problems.push(`deno.json: import "${name}" is "${spec}", not pinned to an exact version`);
  }
  for (const spec of meta.allowScripts?.allow ?? []) {
    const pkg = /^npm:((?:@[^/@]+\/)?[^/@]+)@/.exec(spec)?.[1];
    if (pkg !== undefined && imports[pkg] !== undefined && imports[pkg] !== spec) {
      problems.push(`deno.json: allowScripts names "${spec}", the import is "${imports[pkg]}"`);
    }
  }
  for (const file of await sourceFiles(root)) {
    const text = await Deno.readTextFile(path.join(root, file));
    for (const m of text.matchAll(/(?:from\s+|import\(\s*)"((?:npm|jsr|https?):[^"]+)"/g)) {
      problems.push(`${file}: imports "${m[1]}" directly; add it to deno.json "imports" (pinned) and import its name`);
    }
  }
  return problems;
}

/** The repository's own TypeScript files (not node_modules, data directories or fixtures). */
async function sourceFiles(root: string, dir = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(path.join(root, dir))) {
    const rel = dir === "" ? entry.name : `${dir}/${entry.name}`;
    if (entry.isDirectory && !/^(node_modules|\.|tests\/fixtures$)/.test(rel) && !entry.name.startsWith(".")) {
      out.push(...await sourceFiles(root, rel));
    } else if (entry.isFile && rel.endsWith(".ts")) {
      out.push(rel);
    }
  }
  return out;
}

if (import.meta.main) {
  const root = Deno.args[0] ?? fileURLToPath(new URL("..", import.meta.url));
  const problems = await checkVersionSync(root);
  if (problems.length > 0) {
    for (const p of problems) console.error(p);
    console.error(`version sync: ${problems.length} disagreement(s)`);
    Deno.exit(1);
  }
  const meta = JSON.parse(await Deno.readTextFile(path.join(root, "deno.json"))) as { version: string };
  console.log(`version sync: ${meta.version} everywhere; every dependency pinned`);
}
