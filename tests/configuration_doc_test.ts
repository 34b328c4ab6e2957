/** docs/CONFIGURATION.md lists every setting the service reads, by file key and environment variable. */
import assert from "node:assert/strict";
import { settingNames } from "../config.ts";

Deno.test("docs/CONFIGURATION.md lists every setting with its file key and variable, and no other", async () => {
  const doc = await Deno.readTextFile(new URL("../docs/CONFIGURATION.md", import.meta.url));
  const keys = new Set<string>();
  const variables = new Set<string>();
  for (const line of doc.split("\n")) {
    const cells = line.split("|").map((c) => c.trim());
    if (cells.length < 4 || !cells[1]!.startsWith("`")) continue;
    for (const m of cells[1]!.matchAll(/`([A-Za-z]+)`/g)) keys.add(m[1]!);
    for (const m of cells[2]!.matchAll(/`([A-Z_]+)`/g)) variables.add(m[1]!);
  }
  const settings = settingNames();
  assert.ok(settings.length > 10, "config.ts has settings");
  assert.deepEqual(settings.filter(([k]) => !keys.has(k)).map(([k]) => k), [], "settings missing from the doc");
  assert.deepEqual(settings.filter(([, v]) => !variables.has(v)).map(([, v]) => v), [], "variables missing");
  const known = new Set(settings.map(([k]) => k));
  assert.deepEqual([...keys].filter((k) => !known.has(k)), [], "the doc lists settings config.ts does not read");
});
