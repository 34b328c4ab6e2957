/**
 * Syntax of one OpenMetrics 1.0 sample line: `name{labels} value [timestamp] [# {labels} value [timestamp]]`.
 * Pure string handling; the family-level rules live in conformance.ts.
 */

/** A label set in the order written; values are unescaped. */
export type LabelPairs = [name: string, value: string][];

/** An exemplar attached to a counter or bucket sample. */
export interface Exemplar {
  labels: LabelPairs;
  value: number;
  timestamp: number | null;
}

/** One parsed sample line. */
export interface ParsedSample {
  name: string;
  labels: LabelPairs;
  value: number;
  timestamp: number | null;
  exemplar: Exemplar | null;
}

/** Either the parsed sample or why the line is not one. */
export type SampleParse = { ok: true; sample: ParsedSample } | { ok: false; message: string };

export const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const NAME_PREFIX = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME_PREFIX = /^[a-zA-Z_][a-zA-Z0-9_]*/;
// Decimal only: the spec's number has no hex, binary, octal or digit separators. Inf/NaN are case-insensitive
// (ABNF strings are), and the cases accept `Inf`, `+Inf`, `-Inf` and `NaN`.
const REAL = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;
const INF = /^[+-]?inf(?:inity)?$/i;
const NAN = /^nan$/i;

/** The exemplar label set (names plus values) may hold at most this many UTF-8 characters (code points). */
export const EXEMPLAR_LABELS_MAX_CHARS = 128;

/** The value of an OpenMetrics number (float, Inf, NaN), or null when the text is not one. */
export function parseNumber(text: string): number | null {
  if (REAL.test(text)) return Number(text);
  if (INF.test(text)) return text.startsWith("-") ? -Infinity : Infinity;
  if (NAN.test(text)) return NaN;
  return null;
}

/** A timestamp is a finite decimal number of seconds: no NaN, no Inf. */
function parseTimestamp(text: string): number | null {
  return REAL.test(text) ? Number(text) : null;
}

class LineError extends Error {}

/** A cursor over one line; each `expect*` throws LineError with a message naming what was expected. */
class Cursor {
  pos = 0;
  constructor(readonly text: string) {}

  get done(): boolean {
    return this.pos >= this.text.length;
  }

  peek(): string | undefined {
    return this.text[this.pos];
  }

  expect(char: string, what: string): void {
    if (this.text[this.pos] !== char) {
      const found = this.done ? "end of line" : `"${this.text[this.pos]}"`;
      throw new LineError(`Expected ${what} at column ${this.pos + 1}, found ${found}`);
    }
    this.pos++;
  }

  /** Characters up to the next space or the end of the line. */
  token(): string {
    const end = this.text.indexOf(" ", this.pos);
    const stop = end === -1 ? this.text.length : end;
    const token = this.text.slice(this.pos, stop);
    this.pos = stop;
    return token;
  }

  match(re: RegExp): string {
    const m = re.exec(this.text.slice(this.pos));
    const found = m?.[0] ?? "";
    this.pos += found.length;
    return found;
  }
}

/** `{name="value",...}` with the cursor on `{`; a backslash escapes the next character in a value. */
function readLabels(cur: Cursor, what: string): LabelPairs {
  cur.expect("{", `"{" opening the ${what}`);
  const labels: LabelPairs = [];
  if (cur.peek() === "}") {
    cur.pos++;
    return labels;
  }
  for (;;) {
    const start = cur.pos;
    const name = cur.match(LABEL_NAME_PREFIX);
    if (name === "") {
      const bad = cur.text.slice(start).match(/^[^=,}"]*/)?.[0] ?? "";
      throw new LineError(
        bad === "" ? `Expected a label name in the ${what} at column ${start + 1}` : `Invalid label name "${bad}"`,
      );
    }
    cur.expect("=", `"=" after label name "${name}"`);
    cur.expect('"', `'"' opening the value of label "${name}"`);
    let value = "";
    for (;;) {
      const ch = cur.peek();
      if (ch === undefined) throw new LineError(`Unterminated value of label "${name}"`);
      cur.pos++;
      if (ch === '"') break;
      if (ch === "\\") {
        const next = cur.peek();
        if (next === undefined) throw new LineError(`Unterminated value of label "${name}"`);
        cur.pos++;
        // Only \\, \" and \n are escapes; the official cases accept any other backslash literally.
        value += next === "n" ? "\n" : next === "\\" || next === '"' ? next : "\\" + next;
      } else {
        value += ch;
      }
    }
    if (labels.some(([n]) => n === name)) throw new LineError(`Duplicate label "${name}" in the ${what}`);
    labels.push([name, value]);
    if (cur.peek() === "}") {
      cur.pos++;
      return labels;
    }
    cur.expect(",", `"," or "}" after the value of label "${name}"`);
  }
}

function readExemplar(cur: Cursor): Exemplar {
  cur.expect("#", `"#" opening an exemplar`);
  cur.expect(" ", `" " after the exemplar's "#"`);
  const labels = readLabels(cur, "exemplar's label set");
  const chars = labels.reduce((sum, [n, v]) => sum + [...n].length + [...v].length, 0);
  if (chars > EXEMPLAR_LABELS_MAX_CHARS) {
    throw new LineError(
      `Exemplar labels hold ${chars} characters, more than the ${EXEMPLAR_LABELS_MAX_CHARS} allowed`,
    );
  }
  cur.expect(" ", `" " before the exemplar's value`);
  const valueText = cur.token();
  const value = parseNumber(valueText);
  if (value === null) throw new LineError(`Invalid exemplar value "${valueText}": expected a decimal number`);
  if (cur.done) return { labels, value, timestamp: null };
  cur.pos++;
  const tsText = cur.token();
  const timestamp = parseTimestamp(tsText);
  if (timestamp === null) {
    throw new LineError(`Invalid exemplar timestamp "${tsText}": expected a finite decimal number of seconds`);
  }
  if (!cur.done) throw new LineError(`Unexpected text after the exemplar's timestamp: "${cur.text.slice(cur.pos)}"`);
  return { labels, value, timestamp };
}

/** Parses one sample line (not a comment, not blank). */
export function parseSampleLine(line: string): SampleParse {
  const cur = new Cursor(line);
  try {
    const name = cur.match(NAME_PREFIX);
    const next = cur.peek();
    if (name === "" || (next !== "{" && next !== " " && next !== undefined)) {
      const bad = line.match(/^[^{ ]*/)?.[0] ?? "";
      throw new LineError(`Invalid metric name "${bad}": expected [a-zA-Z_:][a-zA-Z0-9_:]*`);
    }
    const labels = next === "{" ? readLabels(cur, "label set") : [];
    cur.expect(" ", "a space before the value");
    const valueText = cur.token();
    const value = parseNumber(valueText);
    if (value === null) {
      throw new LineError(`Invalid value "${valueText}": expected a decimal number, +Inf, -Inf or NaN`);
    }
    let timestamp: number | null = null;
    let exemplar: Exemplar | null = null;
    if (!cur.done) {
      cur.pos++;
      if (cur.peek() !== "#") {
        const tsText = cur.token();
        timestamp = parseTimestamp(tsText);
        if (timestamp === null) {
          throw new LineError(`Invalid timestamp "${tsText}": expected a finite decimal number of seconds`);
        }
        if (!cur.done) {
          cur.pos++;
          if (cur.peek() !== "#") {
            throw new LineError(`Unexpected text after the timestamp: "${line.slice(cur.pos - 1)}"`);
          }
        }
      }
      if (!cur.done) exemplar = readExemplar(cur);
    }
    return { ok: true, sample: { name, labels, value, timestamp, exemplar } };
  } catch (e) {
    if (e instanceof LineError) return { ok: false, message: e.message };
    throw e;
  }
}
