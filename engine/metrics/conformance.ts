/**
 * An OpenMetrics 1.0 text exposition validator: checks a whole exposition against the spec's rules and lists every
 * violation with its 1-based line number. Pure (no I/O); the line syntax is in conformance_sample.ts.
 */
import { METRIC_NAME, type ParsedSample, parseNumber, parseSampleLine } from "./conformance_sample.ts";

/** One broken rule, on a 1-based line. */
export interface Violation {
  line: number;
  message: string;
}

/** The verdict: ok when there are no violations. */
export interface ConformanceResult {
  ok: boolean;
  violations: Violation[];
}

const TYPES = ["counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset", "unknown"] as const;
type MetricType = typeof TYPES[number];

/** The sample name suffixes each type allows; gauge, stateset and unknown samples carry the bare family name. */
const SUFFIXES: Record<MetricType, readonly string[]> = {
  counter: ["_total", "_created"],
  gauge: [""],
  histogram: ["_bucket", "_count", "_sum", "_created"],
  gaugehistogram: ["_bucket", "_gcount", "_gsum"],
  summary: ["", "_count", "_sum", "_created"],
  info: ["_info"],
  stateset: [""],
  unknown: [""],
};

/** Suffixes whose values count things: never NaN; all but _gsum also never negative. */
const NEVER_NAN = ["_total", "_sum", "_count", "_bucket", "_gcount", "_gsum"];
const NEVER_NEGATIVE = ["_total", "_sum", "_count", "_bucket", "_gcount"];

interface Family {
  name: string;
  line: number;
  type: MetricType | null;
  typeLine: number;
  unit: string | null;
  unitLine: number;
  help: boolean;
  /** A TYPE line was read, even one with an invalid type (so a second one is reported as a repeat). */
  typed: boolean;
  /** True when a sample (not metadata) opened the family: it has no metadata and is of type unknown. */
  fromSample: boolean;
  samples: { sample: ParsedSample; line: number }[];
  seenGroups: Set<string>;
  group: string | null;
  groupTimestamp: number | null;
}

const familyType = (f: Family): MetricType => f.type ?? "unknown";

/** Sample names a family owns; another family may not use them (the family's own name is always reserved). */
function reservedNames(f: Family): string[] {
  return [...new Set(["", ...SUFFIXES[familyType(f)]])].map((s) => f.name + s);
}

/** The label set that identifies one metric point of the family (le, quantile and the state label excluded). */
function groupKey(f: Family, s: ParsedSample): string {
  const type = familyType(f);
  if (type === "info") return "";
  const drop = (type === "summary" && s.name === f.name)
    ? "quantile"
    : type === "stateset"
    ? f.name
    : ((type === "histogram" || type === "gaugehistogram") && s.name === f.name + "_bucket")
    ? "le"
    : null;
  const kept = s.labels.filter(([n]) => n !== drop).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  // JSON.stringify quotes and escapes the values, so two different label sets never share a key.
  return "{" + kept.map(([n, v]) => `${n}=${JSON.stringify(v)}`).join(",") + "}";
}

const label = (s: ParsedSample, name: string) => s.labels.find(([n]) => n === name)?.[1];

/** Validates an OpenMetrics 1.0 text exposition, listing every violation (not only the first). */
export function validateOpenMetrics(text: string): ConformanceResult {
  const violations: Violation[] = [];
  const report = (line: number, message: string) => violations.push({ line, message });
  /** Every name reserved by a finished family, with the family that reserved it. */
  const owners = new Map<string, Family>();
  // A holder, not a let: the nested readers reassign it and the compiler does not track that across closures.
  const state: { current: Family | null } = { current: null };

  const close = (f: Family) => {
    checkFamily(f, report);
    for (const name of reservedNames(f)) {
      const owner = owners.get(name);
      if (owner === undefined) {
        owners.set(name, f);
      } else if (owner.name === f.name || f.fromSample) {
        report(
          f.line,
          `Family "${owner.name}" (line ${owner.line}) appears again after other lines: a family's metadata and ` +
            `samples must be together, not interleaved or repeated`,
        );
        break;
      } else {
        report(f.line, `Name "${name}" of family "${f.name}" clashes with family "${owner.name}" (line ${owner.line})`);
        break;
      }
    }
  };
  const open = (name: string, line: number, fromSample: boolean): Family => {
    if (state.current !== null) close(state.current);
    state.current = {
      name,
      line,
      type: fromSample ? "unknown" : null,
      typeLine: line,
      unit: null,
      unitLine: line,
      help: false,
      typed: false,
      fromSample,
      samples: [],
      seenGroups: new Set(),
      group: null,
      groupTimestamp: null,
    };
    return state.current;
  };

  const lines = text === "" ? [] : text.split("\n");
  // A final newline ends the last line rather than starting an empty one; the spec makes it optional after # EOF.
  if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
  let eofLine = 0;
  for (const [i, line] of lines.entries()) {
    const n = i + 1;
    if (eofLine > 0) {
      report(n, `Text after "# EOF" (line ${eofLine}): the exposition must end there`);
      break;
    }
    if (line === "# EOF") {
      eofLine = n;
    } else if (line === "") {
      report(n, "Blank line: OpenMetrics allows none");
    } else if (line.startsWith("#")) {
      readMetadata(line, n);
    } else {
      readSample(line, n);
    }
  }
  if (state.current !== null) close(state.current);
  if (eofLine === 0) report(text === "" ? 1 : lines.length + 1, 'Missing "# EOF" at the end');
  // Family-wide checks report when the family ends; sorting puts every violation back in reading order.
  violations.sort((a, b) => a.line - b.line);
  return { ok: violations.length === 0, violations };

  function readMetadata(line: string, n: number): void {
    const m = /^# (HELP|TYPE|UNIT) ([^ ]+) (.*)$/s.exec(line);
    if (m === null) {
      const kind = /^# (HELP|TYPE|UNIT)\b/.exec(line)?.[1];
      report(
        n,
        kind === undefined
          ? `Unexpected comment "${line}": only "# HELP", "# TYPE", "# UNIT" and "# EOF" lines may start with "#"`
          : `Malformed ${kind} line: expected "# ${kind} <metric name> <${kind.toLowerCase()}>"`,
      );
      return;
    }
    const [, kind, name = "", rest = ""] = m;
    if (!METRIC_NAME.test(name)) {
      report(n, `Invalid metric name "${name}" in ${kind}: expected [a-zA-Z_:][a-zA-Z0-9_:]*`);
      return;
    }
    let f: Family | null = state.current;
    if (f !== null && f.name === name) {
      if (f.samples.length > 0 || f.fromSample) {
        report(n, `${kind} for "${name}" after its samples: metadata must come before a family's samples`);
        return;
      }
    } else {
      f = open(name, n, false);
    }
    if (kind === "HELP") {
      if (f.help) report(n, `Second HELP for "${name}": at most one per family`);
      f.help = true;
    } else if (kind === "TYPE") {
      const repeated = f.typed;
      f.typed = true;
      if (repeated) {
        report(n, `Second TYPE for "${name}": at most one per family`);
      } else if (!(TYPES as readonly string[]).includes(rest)) {
        report(n, `Invalid type "${rest}" for "${name}": expected one of ${TYPES.join(", ")}`);
      } else {
        f.type = rest as MetricType;
        f.typeLine = n;
      }
    } else {
      if (f.unit !== null) report(n, `Second UNIT for "${name}": at most one per family`);
      else if (rest !== "" && !name.endsWith("_" + rest)) {
        report(n, `Unit "${rest}" is not a suffix of the metric name "${name}": expected it to end with "_${rest}"`);
      }
      f.unit = rest;
      f.unitLine = n;
    }
  }

  function readSample(line: string, n: number): void {
    const parsed = parseSampleLine(line);
    if (!parsed.ok) {
      report(n, parsed.message);
      return;
    }
    const s = parsed.sample;
    let f: Family | null = state.current;
    if (f === null || !SUFFIXES[familyType(f)].some((suffix) => f!.name + suffix === s.name)) {
      if (f !== null && reservedNames(f).includes(s.name)) {
        const allowed = SUFFIXES[familyType(f)].map((suffix) => `"${f!.name}${suffix}"`).join(", ");
        report(n, `Sample "${s.name}" is not valid in ${familyType(f)} family "${f.name}": expected ${allowed}`);
        return;
      }
      f = open(s.name, n, true);
    }
    const problem = sampleProblem(f, s);
    if (problem !== null) {
      report(n, problem);
      return;
    }
    const key = groupKey(f, s);
    if (f.group !== null && key === f.group) {
      if ((s.timestamp === null) !== (f.groupTimestamp === null)) {
        report(n, `Samples of one metric in "${f.name}" mix lines with and without a timestamp`);
      } else if (f.groupTimestamp !== null && s.timestamp! < f.groupTimestamp && familyType(f) !== "info") {
        report(
          n,
          `Timestamp ${s.timestamp} goes backwards (previous ${f.groupTimestamp}) within a metric of "${f.name}"`,
        );
      }
    } else if (f.seenGroups.has(key)) {
      report(n, `Samples of one metric of "${f.name}" are not together: ${key} appeared before another metric`);
    }
    f.group = key;
    f.groupTimestamp = s.timestamp;
    f.seenGroups.add(key);
    f.samples.push({ sample: s, line: n });
  }
}

/** What is wrong with a sample given its family's type, or null. */
function sampleProblem(f: Family, s: ParsedSample): string | null {
  const type = familyType(f);
  const suffix = s.name.slice(f.name.length);
  if (type === "stateset" && label(s, f.name) === undefined) {
    return `Stateset sample "${s.name}" lacks the label "${f.name}" naming its state`;
  }
  if (suffix === "_bucket" && (type === "histogram" || type === "gaugehistogram")) {
    const le = label(s, "le");
    const bound = le === undefined ? null : parseNumber(le);
    if (le === undefined || bound === null || Number.isNaN(bound)) {
      return `Bucket "${s.name}" needs an "le" label holding a number, found ${le === undefined ? "none" : `"${le}"`}`;
    }
    if (bound === Infinity && le !== "+Inf") return `Bucket bound "${le}" must be written "+Inf"`;
  }
  if ((suffix === "_bucket" || suffix === "_count" || suffix === "_gcount") && !Number.isInteger(s.value)) {
    return `"${s.name}" must be an integer count, found ${s.value}`;
  }
  if (type === "summary" && suffix === "") {
    const q = label(s, "quantile");
    const qv = q === undefined ? null : parseNumber(q);
    if (qv === null || !(qv >= 0 && qv <= 1)) {
      return `Summary quantile sample needs a "quantile" label between 0 and 1, found ${
        q === undefined ? "none" : `"${q}"`
      }`;
    }
    if (s.value < 0) return `Quantile value ${s.value} is negative`;
  }
  if (NEVER_NAN.includes(suffix) && Number.isNaN(s.value)) return `"${s.name}" counts something and cannot be NaN`;
  if (NEVER_NEGATIVE.includes(suffix) && s.value < 0) {
    return `"${s.name}" counts something and cannot be negative, found ${s.value}`;
  }
  if (type === "stateset" && s.value !== 0 && s.value !== 1) return `Stateset value must be 0 or 1, found ${s.value}`;
  if (type === "info" && s.value !== 1) return `Info value must be 1, found ${s.value}`;
  if (
    s.exemplar !== null &&
    !((type === "histogram" || type === "gaugehistogram") && suffix === "_bucket") &&
    !(type === "counter" && suffix === "_total")
  ) {
    return `Exemplar on "${s.name}" (${type}): only counter _total and histogram buckets may carry exemplars`;
  }
  return null;
}

type Report = (line: number, message: string) => void;

/** Rules that need the whole family: UNIT against TYPE, and each histogram's buckets, count and sum. */
function checkFamily(f: Family, report: Report): void {
  const type = familyType(f);
  if (f.unit !== null && f.unit !== "" && (type === "info" || type === "stateset")) {
    report(f.unitLine, `Family "${f.name}" is of type ${type}, which cannot have a UNIT`);
  }
  if (type !== "histogram" && type !== "gaugehistogram") return;
  // One run = consecutive samples of one metric point at one timestamp.
  let run: { sample: ParsedSample; line: number }[] = [];
  const runs: (typeof run)[] = [];
  let last: { key: string; ts: number | null } | null = null;
  for (const entry of f.samples) {
    const key = groupKey(f, entry.sample);
    if (last === null || key !== last.key || entry.sample.timestamp !== last.ts) {
      if (run.length > 0) runs.push(run);
      run = [];
    }
    run.push(entry);
    last = { key, ts: entry.sample.timestamp };
  }
  if (run.length > 0) runs.push(run);
  for (const r of runs) checkHistogramRun(f, r, report);
}

function checkHistogramRun(f: Family, run: { sample: ParsedSample; line: number }[], report: Report): void {
  const count = f.type === "histogram" ? "_count" : "_gcount";
  const sum = f.type === "histogram" ? "_sum" : "_gsum";
  let bound: number | null = null;
  let bucketValue = 0;
  let negativeBuckets = false;
  let countEntry: { value: number; line: number } | null = null;
  let sumEntry: { value: number; line: number } | null = null;
  for (const { sample: s, line } of run) {
    const suffix = s.name.slice(f.name.length);
    if (suffix === "_bucket") {
      const b = parseNumber(label(s, "le")!)!;
      if (b < 0) negativeBuckets = true;
      if (bound !== null && b <= bound) report(line, `Bucket le="${label(s, "le")}" is not above the previous bound`);
      if (s.value < bucketValue) report(line, `Bucket value ${s.value} is below the previous bucket's ${bucketValue}`);
      bound = b;
      bucketValue = s.value;
    } else if (suffix === count) {
      countEntry = { value: s.value, line };
    } else if (suffix === sum) {
      sumEntry = { value: s.value, line };
    }
  }
  const first = run[0]!.line;
  if (bound !== Infinity) report(first, `Histogram "${f.name}" lacks its le="+Inf" bucket`);
  else if (countEntry !== null && countEntry.value !== bucketValue) {
    report(countEntry.line, `${f.name}${count} ${countEntry.value} differs from the +Inf bucket's ${bucketValue}`);
  }
  if (sumEntry !== null && countEntry === null) report(sumEntry.line, `${f.name}${sum} without ${f.name}${count}`);
  if (countEntry !== null && sumEntry === null) report(countEntry.line, `${f.name}${count} without ${f.name}${sum}`);
  if (f.type === "histogram" && negativeBuckets && sumEntry !== null) {
    report(sumEntry.line, `Histogram "${f.name}" has negative buckets, so it cannot have ${f.name}_sum`);
  }
  if (f.type === "gaugehistogram" && !negativeBuckets && sumEntry !== null && sumEntry.value < 0) {
    report(sumEntry.line, `${f.name}_gsum is negative but no bucket bound is`);
  }
}
