/**
 * The planner's rules: JSON files of json-rules-engine rules, the built-in ones in engine/rules/ and an operator's in
 * the directory of the `planner_rules_dir` setting (docs/rules.md). Every file is checked at start: a file that is not
 * JSON, a rule json-rules-engine refuses, a fact not in FACTS or an event the planner does not understand stops the
 * service with the file and the problem named.
 */
import { Engine as RulesEngine, type RuleProperties } from "json-rules-engine";
import { FACTS } from "./facts.ts";

/** The events a rule may emit, and the parameters each takes. */
export const EVENT_TYPES = ["insufficient_samples", "recommend_interval", "peak_window", "alert"] as const;
export type EventType = typeof EVENT_TYPES[number];
export const ALERT_KINDS = ["predicted_sla_breach", "freshness_deadline_missed"] as const;
export type AlertKind = typeof ALERT_KINDS[number];

/** A rule as loaded, with the file it came from. */
export interface LoadedRule {
  file: string;
  rule: RuleProperties & { name: string };
  /** Every fact its conditions read. */
  facts: string[];
}

/** Thrown at start when a rule file is unusable; the message names the file and the problem. */
export class RuleFileError extends Error {
  readonly code = "InvalidRule";
  constructor(file: string, problem: string) {
    super(`Rule file ${file}: ${problem}`);
    this.name = "RuleFileError";
  }
}

/** The folder of the built-in rules. */
export const BUILT_IN_RULES_DIR = new URL("../rules/", import.meta.url);

/** Loads the built-in rules and those in `customDir` (if set); throws RuleFileError on the first bad file. */
export async function loadRules(customDir: string | null): Promise<LoadedRule[]> {
  const rules = await loadDir(BUILT_IN_RULES_DIR.pathname);
  if (customDir !== null) rules.push(...await loadDir(customDir));
  const names = new Map<string, string>();
  for (const r of rules) {
    const other = names.get(r.rule.name);
    if (other !== undefined) throw new RuleFileError(r.file, `rule name "${r.rule.name}" is already used in ${other}`);
    names.set(r.rule.name, r.file);
  }
  return rules;
}

async function loadDir(dir: string): Promise<LoadedRule[]> {
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir)];
  } catch (e) {
    throw new RuleFileError(dir, `cannot read the folder (${e instanceof Error ? e.message : String(e)})`);
  }
  const out: LoadedRule[] = [];
  for (const entry of entries.filter((e) => e.isFile && e.name.endsWith(".json")).sort(byName)) {
    const file = `${dir.replace(/\/$/, "")}/${entry.name}`;
    let parsed: unknown;
    try {
      parsed = JSON.parse(await Deno.readTextFile(file));
    } catch (e) {
      throw new RuleFileError(file, `not valid JSON (${e instanceof Error ? e.message : String(e)})`);
    }
    for (const rule of Array.isArray(parsed) ? parsed : [parsed]) out.push(checkRule(file, rule));
  }
  return out;
}

function byName(a: Deno.DirEntry, b: Deno.DirEntry): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/** Checks one rule: json-rules-engine accepts it, its facts are known, its event is one the planner understands. */
export function checkRule(file: string, raw: unknown): LoadedRule {
  if (typeof raw !== "object" || raw === null) throw new RuleFileError(file, "a rule must be a JSON object");
  const rule = raw as RuleProperties & { name?: unknown };
  if (typeof rule.name !== "string" || rule.name === "") {
    throw new RuleFileError(file, `every rule needs a "name" (a non-empty string)`);
  }
  const where = `rule "${rule.name}"`;
  try {
    new RulesEngine().addRule(rule);
  } catch (e) {
    throw new RuleFileError(file, `${where}: ${e instanceof Error ? e.message : String(e)}`);
  }
  const facts = [...new Set(factsOf(rule.conditions))];
  const unknown = facts.filter((f) => !(f in FACTS));
  if (unknown.length > 0) {
    throw new RuleFileError(
      file,
      `${where} names unknown fact${unknown.length > 1 ? "s" : ""} ${unknown.map((f) => `"${f}"`).join(", ")} ` +
        `(known facts are listed in docs/rules.md)`,
    );
  }
  checkEvent(file, where, rule.event);
  return { file, rule: rule as LoadedRule["rule"], facts };
}

function checkEvent(file: string, where: string, event: RuleProperties["event"]): void {
  const type = event?.type as EventType;
  if (!EVENT_TYPES.includes(type)) {
    throw new RuleFileError(file, `${where}: event type "${type}" is not one of ${EVENT_TYPES.join(", ")}`);
  }
  const p = (event.params ?? {}) as Record<string, unknown>;
  if (type === "recommend_interval") {
    if (!["set", "at_least", "at_most"].includes(p.mode as string)) {
      throw new RuleFileError(file, `${where}: recommend_interval needs "mode": "set", "at_least" or "at_most"`);
    }
    const hasFact = typeof p.fact === "string";
    if (hasFact && !((p.fact as string) in FACTS)) {
      throw new RuleFileError(file, `${where} names unknown fact "${p.fact}" in its event`);
    }
    if (hasFact === (typeof p.value === "number")) {
      throw new RuleFileError(file, `${where}: recommend_interval needs exactly one of "fact" or "value" (seconds)`);
    }
  }
  if (type === "alert" && !ALERT_KINDS.includes(p.kind as AlertKind)) {
    throw new RuleFileError(file, `${where}: alert needs "kind": ${ALERT_KINDS.join(" or ")}`);
  }
}

/** The facts a condition tree reads (`fact`, and `value: {"fact": ...}` comparisons). */
function factsOf(node: unknown): string[] {
  if (Array.isArray(node)) return node.flatMap(factsOf);
  if (typeof node !== "object" || node === null) return [];
  const n = node as Record<string, unknown>;
  const out: string[] = [];
  if (typeof n.fact === "string") out.push(n.fact);
  if (typeof n.value === "object" && n.value !== null && typeof (n.value as { fact?: unknown }).fact === "string") {
    out.push((n.value as { fact: string }).fact);
  }
  for (const key of ["all", "any", "not"]) if (key in n) out.push(...factsOf(n[key]));
  return out;
}
