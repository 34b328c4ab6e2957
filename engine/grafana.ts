/**
 * The Grafana JSON datasource (the simpod-json-datasource plugin's API): which targets exist, what each one selects
 * (payload options and ad-hoc filters), and the answers to its requests. The targets themselves, one entry each, are
 * in grafana_targets.ts; a new one (recommendations, snapshots, alerts) plugs in there.
 */
import type { Engine } from "./engine.ts";
import { badRequest } from "./errors.ts";
import { streamTableKeys, TARGETS } from "./grafana_targets.ts";
import { alertAnnotations, failureAnnotations } from "./grafana_history.ts";

/** An ad-hoc filter as Grafana sends it. */
export interface AdhocFilter {
  key: string;
  operator: string;
  value: string;
}

/** What a target answers: a time series, or a table. */
export type Frame =
  | { target: string; refId?: string; datapoints: [number, number][] }
  | { type: "table"; refId?: string; columns: { text: string; type: string }[]; rows: unknown[][] };

/** The keys ad-hoc filters may use, and what each matches. */
export const FILTER_KEYS = ["database", "stream_table", "status"] as const;
type FilterKey = typeof FILTER_KEYS[number];

/** One thing a row is about: a stream table of a database (or a database alone, for worker rows). */
export interface Subject {
  database: string;
  stream_table?: string;
  status?: string;
}

/** Which subjects a target covers: its payload's database and stream table choice, and the ad-hoc filters. */
export class Selection {
  readonly #databases: Set<string> | null;
  readonly #streamTables: Set<string> | null;
  readonly #filters: ((s: Subject) => boolean)[];

  constructor(payload: Record<string, unknown>, filters: AdhocFilter[]) {
    this.#databases = choice(payload.database, "database");
    const st = choice(payload.stream_table, "stream_table");
    this.#streamTables = st === null ? null : new Set([...st].map(qualify));
    this.#filters = filters.map(filterPredicate);
  }

  /** Whether the database is chosen at all (so its queries can be skipped). */
  database(name: string): boolean {
    return (this.#databases === null || this.#databases.has(name)) &&
      this.#filters.every((f) => f({ database: name }));
  }

  /** Whether a row about `s` belongs in the answer. */
  matches(s: Subject): boolean {
    if (this.#databases !== null && !this.#databases.has(s.database)) return false;
    if (this.#streamTables !== null && s.stream_table !== undefined && !this.#streamTables.has(s.stream_table)) {
      return false;
    }
    return this.#filters.every((f) => f(s));
  }
}

/** "schema.name" for a name given with or without its schema (public by default, as in the REST API). */
function qualify(name: string): string {
  return name.includes(".") ? name : `public.${name}`;
}

/**
 * A payload choice: absent, empty, "All" ("$__all", "*") means every one; a string or a list of strings (a
 * multi-select, or a multi-value variable) names them.
 */
function choice(value: unknown, name: string): Set<string> | null {
  const all = (v: string) => v === "" || v === "$__all" || v === "*" || v === "All";
  if (value === undefined || value === null) return null;
  if (typeof value === "string") return all(value) ? null : new Set([value]);
  if (Array.isArray(value) && value.every((v) => typeof v === "string")) {
    return value.length === 0 || value.some(all) ? null : new Set(value);
  }
  throw badRequest(`payload "${name}" must be a string or a list of strings`);
}

function filterPredicate(f: AdhocFilter): (s: Subject) => boolean {
  if (!(FILTER_KEYS as readonly string[]).includes(f.key)) {
    throw badRequest(`Unknown ad-hoc filter key "${f.key}"; expected one of ${FILTER_KEYS.join(", ")}`);
  }
  const key = f.key as FilterKey;
  const value = key === "stream_table" ? qualifyPattern(f) : f.value;
  let test: (v: string) => boolean;
  if (f.operator === "=" || f.operator === "!=") {
    test = (v) => v === value;
  } else if (f.operator === "=~" || f.operator === "!~") {
    let re: RegExp;
    try {
      // Anchored, as Prometheus anchors its label matchers.
      re = new RegExp(`^(?:${f.value})$`);
    } catch {
      throw badRequest(`Ad-hoc filter on "${f.key}": ${JSON.stringify(f.value)} is not a regular expression`);
    }
    test = (v) => re.test(v);
  } else {
    throw badRequest(`Ad-hoc filter on "${f.key}": operator "${f.operator}" is not supported (use =, !=, =~, !~)`);
  }
  const negate = f.operator.startsWith("!");
  // A row without the key (a worker row has no stream table) is not filtered by it.
  return (s) => s[key] === undefined || test(s[key]!) !== negate;
}

function qualifyPattern(f: AdhocFilter): string {
  return f.operator === "=" || f.operator === "!=" ? qualify(f.value) : f.value;
}

/** The time range and resolution of a query. */
export interface Range {
  from: Date;
  to: Date;
  /** The width of one datapoint's bucket. */
  bucketMs: number;
}

const DEFAULT_RANGE_MS = 6 * 3600_000;
const MIN_BUCKET_MS = 1000;

/**
 * The range of a request: `from`/`to` as Grafana sends them (ISO dates; the last 6 hours when absent), and one
 * bucket per `intervalMs`, widened so that no series has more than `maxDataPoints` points, and at least a second.
 */
export function rangeOf(
  r: {
    from?: string | undefined;
    to?: string | undefined;
    intervalMs?: number | undefined;
    maxDataPoints?: number | undefined;
  },
  now: Date,
): Range {
  const to = r.to === undefined ? now : new Date(r.to);
  const from = r.from === undefined ? new Date(to.getTime() - DEFAULT_RANGE_MS) : new Date(r.from);
  if (Number.isNaN(from.getTime()) || Number.isNaN(to.getTime())) {
    throw badRequest(
      `range.from and range.to must be ISO 8601 dates (got ${JSON.stringify(r.from)}, ${JSON.stringify(r.to)})`,
    );
  }
  if (from.getTime() > to.getTime()) throw badRequest("range.from is after range.to");
  const span = to.getTime() - from.getTime();
  const byPoints = r.maxDataPoints !== undefined && r.maxDataPoints > 0 ? Math.ceil(span / r.maxDataPoints) : 0;
  return { from, to, bucketMs: Math.max(MIN_BUCKET_MS, r.intervalMs ?? 0, byPoints) };
}

/** A /query request, parsed. */
export interface QueryRequest {
  range: Range;
  targets: { target: string; refId?: string | undefined; payload: Record<string, unknown> }[];
  filters: AdhocFilter[];
}

/** The metric list (/metrics): every target with its payload options; the database options listed inline. */
export function metricList(engine: Engine): unknown[] {
  const databases = engine.databaseNames.map((d) => ({ label: d, value: d }));
  return Object.entries(TARGETS).map(([value, t]) => ({
    label: t.label,
    value,
    payloads: [
      {
        label: "Database",
        name: "database",
        type: "select",
        placeholder: "every database",
        reloadMetric: true,
        options: databases,
      },
      ...(t.perStreamTable
        ? [{ label: "Stream table", name: "stream_table", type: "multi-select", placeholder: "every stream table" }]
        : []),
    ],
  }));
}

/** The options of one payload (/metric-payload-options). */
export async function payloadOptions(
  engine: Engine,
  request: { metric: string; payload: Record<string, unknown>; name: string },
): Promise<{ label: string; value: string }[]> {
  const target = TARGETS[request.metric];
  if (target === undefined) throw unknownTarget(request.metric);
  if (request.name === "database") return engine.databaseNames.map((d) => ({ label: d, value: d }));
  if (request.name === "stream_table" && target.perStreamTable) {
    const selection = new Selection({ database: request.payload.database }, []);
    return (await streamTableKeys(engine, selection)).map((k) => ({ label: k.stream_table, value: k.stream_table }));
  }
  throw badRequest(`Metric "${request.metric}" has no payload "${request.name}"`);
}

/** Answers /query: one or more frames per target, in the targets' order. */
export async function query(engine: Engine, request: QueryRequest): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (const t of request.targets) {
    const target = TARGETS[t.target];
    if (target === undefined) throw unknownTarget(t.target);
    const selection = new Selection(t.payload, request.filters);
    const out = await target.run(engine, { range: request.range, selection });
    frames.push(...out.map((f) => (t.refId === undefined ? f : { ...f, refId: t.refId })));
  }
  return frames;
}

/** What /variable can list. */
export const VARIABLES = ["databases", "stream_tables", "statuses"] as const;

/** Answers /variable: `databases`, `stream_tables` (optionally of `database`), `statuses`. */
export async function variable(
  engine: Engine,
  payload: { target: string; database?: unknown },
): Promise<{ __text: string; __value: string }[]> {
  const item = (v: string) => ({ __text: v, __value: v });
  switch (payload.target.trim()) {
    case "databases":
      return engine.databaseNames.map(item);
    case "stream_tables": {
      const keys = await streamTableKeys(engine, new Selection({ database: payload.database }, []));
      return [...new Set(keys.map((k) => k.stream_table))].map(item);
    }
    case "statuses":
      return STATUSES.map(item);
    default:
      throw badRequest(
        `Unknown variable query ${JSON.stringify(payload.target)}; expected one of ${VARIABLES.join(", ")}`,
      );
  }
}

const STATUSES = ["INITIALIZING", "ACTIVE", "SUSPENDED", "ERROR"];

/** Answers /tag-keys. */
export function tagKeys(): { type: string; text: string }[] {
  return FILTER_KEYS.map((k) => ({ type: "string", text: k }));
}

/** Answers /tag-values for one key. */
export async function tagValues(engine: Engine, key: string): Promise<{ text: string }[]> {
  const text = (v: string) => ({ text: v });
  if (key === "database") return engine.databaseNames.map(text);
  if (key === "status") return STATUSES.map(text);
  if (key === "stream_table") {
    const keys = await streamTableKeys(engine, new Selection({}, []));
    return [...new Set(keys.map((k) => k.stream_table))].sort().map(text);
  }
  throw badRequest(`Unknown tag key ${JSON.stringify(key)}; expected one of ${FILTER_KEYS.join(", ")}`);
}

/** What the legacy /annotations endpoint can show: refresh failures, and the planner's alerts. */
export const ANNOTATION_QUERIES = ["refresh_failures", "alerts"] as const;

/** Answers /annotations (the older SimpleJSON form): the events of the range, refresh failures when no query names. */
export async function annotations(
  engine: Engine,
  request: { query: string; name: string; range: Range; filters: AdhocFilter[] },
): Promise<unknown[]> {
  const q = request.query.trim();
  if (q !== "" && !(ANNOTATION_QUERIES as readonly string[]).includes(q)) {
    throw badRequest(
      `Unknown annotation query ${JSON.stringify(q)}; expected one of ${ANNOTATION_QUERIES.join(", ")}`,
    );
  }
  const query = { range: request.range, selection: new Selection({}, request.filters) };
  const events = q === "alerts" ? await alertAnnotations(engine, query) : await failureAnnotations(engine, query);
  return events.map((e) => ({ annotation: { name: request.name }, ...e }));
}

function unknownTarget(name: string) {
  return badRequest(`Unknown target ${JSON.stringify(name)}; expected one of ${Object.keys(TARGETS).join(", ")}`);
}
