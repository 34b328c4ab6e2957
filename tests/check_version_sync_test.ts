/**
 * deno task check-version-sync: passes on this repository, and fails, naming the place, when any one place where the
 * version is shown is edited to another version (each edit made on a copy in a temporary directory).
 */
import assert from "node:assert/strict";
import * as path from "node:path";
import { checkVersionSync, FILES } from "../tools/check_version_sync.ts";
import { VERSION } from "../version.ts";

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
const OTHER = "9.9.9";

/** A copy of the files the tool reads, with `edit` applied to one of them; removed after `fn`. */
async function withCopy(
  edit: { file: string; from: string | RegExp; to: string } | null,
  fn: (dir: string) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "trickle-version-sync-" });
  try {
    for (
      const file of [
        ...FILES,
        ...[...Deno.readDirSync(path.join(ROOT, "sql/migrations"))].map((e) => `sql/migrations/${e.name}`),
      ]
    ) {
      await Deno.mkdir(path.dirname(path.join(dir, file)), { recursive: true });
      await Deno.copyFile(path.join(ROOT, file), path.join(dir, file));
    }
    if (edit !== null) {
      const text = await Deno.readTextFile(path.join(dir, edit.file));
      const edited = text.replace(edit.from, edit.to);
      assert.notEqual(edited, text, `the edit of ${edit.file} applies`);
      await Deno.writeTextFile(path.join(dir, edit.file), edited);
    }
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function runTool(root: string): Promise<{ code: number; out: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", path.join(ROOT, "tools/check_version_sync.ts"), root],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, out: new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr) };
}

Deno.test("the repository is in sync: the task exits 0", async () => {
  const { code, out } = await runTool(ROOT);
  assert.equal(code, 0, out);
  assert.match(out, new RegExp(`${VERSION.replaceAll(".", "\\.")} everywhere`));
});

const q = (s: string) => s.replaceAll(".", "\\.");

/** One edit per place, and the file the tool must name for it. */
const EDITS: { place: string; file: string; from: string | RegExp; to: string; names: string }[] = [
  {
    place: "deno.json",
    file: "deno.json",
    from: `"version": "${VERSION}"`,
    to: `"version": "${OTHER}"`,
    names: "CHANGELOG.md",
  },
  { place: "version.ts", file: "version.ts", from: "meta.version;", to: `"${OTHER}";`, names: "version.ts" },
  {
    place: "OpenAPI",
    file: "routes/app.ts",
    from: /version: VERSION,/,
    to: `version: "${OTHER}",`,
    names: "routes/app.ts",
  },
  {
    place: "/health",
    file: "routes/health.ts",
    from: "version: VERSION }",
    to: `version: "${OTHER}" }`,
    names: "routes/health.ts",
  },
  {
    place: "info metric",
    file: "engine/metrics/scrape.ts",
    from: '["version", VERSION]',
    to: `["version", "${OTHER}"]`,
    names: "engine/metrics/scrape.ts",
  },
  { place: "CHANGELOG", file: "CHANGELOG.md", from: `## [${VERSION}]`, to: `## [${OTHER}]`, names: "CHANGELOG.md" },
  {
    place: "RELEASES",
    file: "version.ts",
    from: new RegExp(`version: "${q(VERSION)}"`),
    to: `version: "${OTHER}"`,
    names: "version.ts",
  },
];

for (const e of EDITS) {
  Deno.test(`editing the version in ${e.place} fails, naming ${e.names}`, async () => {
    await withCopy(e, async (dir) => {
      const problems = await checkVersionSync(dir);
      assert.ok(problems.length > 0, "a disagreement is found");
      assert.ok(
        problems.some((p) => p.startsWith(`${e.names}:`) && (p.includes(OTHER) || p.includes(VERSION))),
        `one names ${e.names} and a version:\n${problems.join("\n")}`,
      );
    });
  });
}

Deno.test("the task exits 1 and prints each disagreement for an edited copy", async () => {
  await withCopy({ file: "routes/health.ts", from: "version: VERSION }", to: `version: "${OTHER}" }` }, async (dir) => {
    const { code, out } = await runTool(dir);
    assert.equal(code, 1, out);
    assert.match(out, new RegExp(`routes/health\\.ts: /health's version is ${q(OTHER)}`));
    assert.match(out, /1 disagreement/);
  });
});

Deno.test("a migration no release ships fails: RELEASES must end at the newest migration", async () => {
  await withCopy(null, async (dir) => {
    await Deno.writeTextFile(path.join(dir, "sql/migrations/0999_later.sql"), "SELECT 1;\n");
    const problems = await checkVersionSync(dir);
    assert.ok(problems.some((p) => p.startsWith("version.ts:") && p.includes("0999")), problems.join("\n"));
  });
});

Deno.test("an import not pinned to an exact version fails", async () => {
  await withCopy({ file: "deno.json", from: /"npm:croner@[^"]+"/, to: '"npm:croner@^11"' }, async (dir) => {
    const problems = await checkVersionSync(dir);
    assert.deepEqual(problems, ['deno.json: import "croner" is "npm:croner@^11", not pinned to an exact version']);
  });
});
