/** The error-code table is the one the README documents: the same codes, with the same HTTP statuses. */
import assert from "node:assert/strict";
import { ERROR_CODES } from "../engine/errors.ts";

/** The README's "## Errors" table as code -> status, read as a user reads it. */
async function readmeErrorTable(): Promise<Map<string, number>> {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const section = /^## Errors\n([\s\S]*?)(?=^## )/m.exec(readme);
  assert.ok(section !== null, 'README.md has an "## Errors" section');
  const rows = new Map<string, number>();
  for (const line of section[1]!.split("\n")) {
    const m = /^\|\s*(\d{3})\s*\|\s*`([A-Za-z]+)`\s*\|/.exec(line);
    if (m === null) continue;
    assert.ok(!rows.has(m[2]!), `README lists ${m[2]} once`);
    rows.set(m[2]!, Number(m[1]));
  }
  assert.ok(rows.size > 0, "the Errors section has a table of codes");
  return rows;
}

Deno.test("the README's Errors table lists exactly the codes of ERROR_CODES, with the same statuses", async () => {
  const readme = await readmeErrorTable();
  const table = new Map(Object.entries(ERROR_CODES).map(([code, e]) => [code, e.status as number]));
  const missing = [...table.keys()].filter((c) => !readme.has(c));
  const unknown = [...readme.keys()].filter((c) => !table.has(c));
  assert.deepEqual(missing, [], "codes of the table the README does not list");
  assert.deepEqual(unknown, [], "codes the README lists that the table does not have");
  for (const [code, status] of table) assert.equal(readme.get(code), status, `status of ${code}`);
});
