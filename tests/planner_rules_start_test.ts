/** A custom rule naming an unknown fact stops the real service at start (exit 1), the file and the fact named. */
import assert from "node:assert/strict";
import { launchService, logLines } from "./support/process.ts";

Deno.test({
  name: "planner rules: the service refuses to start on a custom rule with an unknown fact, naming file and fact",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(
        `${dir}/p95.json`,
        JSON.stringify({
          name: "p95_too_high",
          conditions: { all: [{ fact: "p95_ms", operator: "greaterThan", value: 1000 }] },
          event: { type: "alert", params: { kind: "predicted_sla_breach" } },
        }),
      );
      // No database is touched: the rules are checked before the embedded server would start.
      const proc = await launchService({ env: { TRICKLE_PLANNER_RULES_DIR: dir, TRICKLE_DATA_DIR: `${dir}/data` } });
      const status = await proc.status;
      assert.equal(status.code, 1, proc.log());
      const [line] = logLines(proc, "could not load the planner rules");
      assert.ok(line !== undefined, proc.log());
      const error = line.error as { message: string; code: string };
      assert.equal(error.code, "InvalidRule");
      assert.equal(
        error.message,
        `Rule file ${dir}/p95.json: rule "p95_too_high" names unknown fact "p95_ms" (known facts are listed in ` +
          `docs/rules.md)`,
      );
      assert.ok(!proc.log().includes("starting the embedded"), "stopped before any database work");
      await assert.rejects(Deno.stat(`${dir}/data`), Deno.errors.NotFound);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
