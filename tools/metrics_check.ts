/**
 * `deno task metrics:check <file|url|->`: validates an OpenMetrics 1.0 exposition read from a file, an http(s) URL
 * or stdin. Prints every violation as `line N: message` and exits 1, or one OK line and exits 0; exits 2 on a usage
 * or I/O error. A command-line tool: its output is its answer, so it writes to stdout/stderr, not to the logger.
 */
import { validateOpenMetrics, type Violation } from "../engine/metrics/conformance.ts";

const ACCEPT = "application/openmetrics-text; version=1.0.0";
const USAGE = "Usage: deno task metrics:check <file|http(s) url|->  (- reads stdin)";

class InputError extends Error {}

async function readSource(source: string): Promise<{ bytes: Uint8Array; contentType: string | null }> {
  if (source === "-") {
    return { bytes: new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer()), contentType: null };
  }
  if (/^https?:\/\//i.test(source)) {
    let res: Response;
    try {
      res = await fetch(source, { headers: { Accept: ACCEPT }, signal: AbortSignal.timeout(30_000) });
    } catch (e) {
      throw new InputError(`Cannot fetch "${source}": ${e instanceof Error ? e.message : String(e)}`);
    }
    const bytes = new Uint8Array(await res.arrayBuffer());
    if (!res.ok) throw new InputError(`Cannot fetch "${source}": HTTP ${res.status} ${res.statusText}`);
    return { bytes, contentType: res.headers.get("content-type") };
  }
  try {
    return { bytes: await Deno.readFile(source), contentType: null };
  } catch (e) {
    throw new InputError(`Cannot read "${source}": ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** The text, plus a violation for each line that is not valid UTF-8 (the spec requires UTF-8 throughout). */
function decode(bytes: Uint8Array): { text: string; violations: Violation[] } {
  try {
    return { text: new TextDecoder("utf-8", { fatal: true }).decode(bytes), violations: [] };
  } catch {
    // Find the offending lines; newline bytes never occur inside a multi-byte UTF-8 sequence, so splitting is safe.
    const violations: Violation[] = [];
    let start = 0;
    let line = 1;
    for (let i = 0; i <= bytes.length; i++) {
      if (i === bytes.length || bytes[i] === 0x0a) {
        try {
          new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(start, i));
        } catch {
          violations.push({ line, message: "Not valid UTF-8" });
        }
        start = i + 1;
        line++;
      }
    }
    return { text: new TextDecoder().decode(bytes), violations };
  }
}

async function main(args: string[]): Promise<number> {
  const [source] = args;
  if (args.length !== 1 || source === undefined || source === "" || source === "--help" || source === "-h") {
    console.error(USAGE);
    return 2;
  }
  let input: Awaited<ReturnType<typeof readSource>>;
  try {
    input = await readSource(source);
  } catch (e) {
    if (!(e instanceof InputError)) throw e;
    console.error(e.message);
    return 2;
  }
  if (input.contentType !== null && !input.contentType.toLowerCase().startsWith("application/openmetrics-text")) {
    // Not a violation of the text itself, but Prometheus would then parse the body as another format.
    console.error(`warning: Content-Type is "${input.contentType}", not application/openmetrics-text`);
  }
  const { text, violations: encoding } = decode(input.bytes);
  const result = validateOpenMetrics(text);
  const violations = [...encoding, ...result.violations].sort((a, b) => a.line - b.line);
  for (const v of violations) console.log(`line ${v.line}: ${v.message}`);
  if (violations.length > 0) {
    console.error(`${violations.length} violation(s) of OpenMetrics 1.0 in ${source === "-" ? "stdin" : source}`);
    return 1;
  }
  const lines = text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
  console.log(`OK: ${source === "-" ? "stdin" : source} is valid OpenMetrics 1.0 (${lines} lines)`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
