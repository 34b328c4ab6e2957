/**
 * What serving the API on node:http (routes/listener.ts, for its 400-with-a-body on malformed requests) costs against
 * Deno.serve: the same app, a trivial route and /health, each under 50 concurrent keep-alive clients run from another
 * process (bench/load_client.ts). Figures: p99 latency and time per request (the inverse of throughput), node:http
 * against Deno.serve measured in the same run.
 */
import { silentLogger } from "../log.ts";
import { listen } from "../routes/listener.ts";
import { startTestService } from "../tests/support/service.ts";
import type { BenchOptions, Figure } from "./support.ts";

const CLIENTS = 50;
/**
 * node:http may cost up to 3x Deno.serve at saturation on a route that does nothing: the price accepted for
 * answering malformed requests with a body (routes/listener.ts); real requests wait on PostgreSQL far longer.
 */
const ACCEPTED_RATIO = 3;
const SECONDS = Number(Deno.env.get("BENCH_HTTP_SECONDS") ?? "5");
const LOAD_CLIENT = new URL("./load_client.ts", import.meta.url).pathname;

interface Load {
  requests: number;
  errors: number;
  seconds: number;
  p50_ms: number;
  p99_ms: number;
}

async function load(url: string): Promise<Load> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", LOAD_CLIENT, url, String(CLIENTS), String(SECONDS)],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`the load client failed on ${url}`);
  const result = JSON.parse(new TextDecoder().decode(out.stdout)) as Load;
  if (result.errors > 0) throw new Error(`${result.errors} requests to ${url} failed under load`);
  return result;
}

type Serve = (
  fetch: (req: Request) => Response | Promise<Response>,
) => Promise<{ port: number; stop(): Promise<void> }>;

const denoServe: Serve = (fetch) => {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, fetch);
  return Promise.resolve({ port: server.addr.port, stop: () => server.shutdown() });
};

const nodeServe: Serve = async (fetch) => {
  const l = await listen({ fetch }, {
    hostname: "127.0.0.1",
    port: 0,
    setting: "bench",
    log: silentLogger,
    name: "bench",
  });
  return { port: l.port, stop: () => l.shutdown() };
};

/** Runs the comparison; one figure per path and measure. */
export async function runHttpBench(opts: BenchOptions): Promise<Figure[]> {
  const svc = await startTestService();
  try {
    // The trivial route sits on the API's own app, behind the same middleware as every route.
    svc.app.get("/bench/trivial", (c) => c.text("ok"));
    const results: Record<string, Load[]> = {};
    // Alternating the servers, twice each, spreads the noise of a shared machine over both.
    for (const round of [1, 2]) {
      for (const [name, serve] of [["deno", denoServe], ["node", nodeServe]] as const) {
        const server = await serve(svc.app.fetch);
        try {
          for (const path of ["/bench/trivial", "/health"]) {
            opts.progress(`http: ${name} ${path}, ${CLIENTS} clients, ${SECONDS} s (round ${round})`);
            const r = await load(`http://127.0.0.1:${server.port}${path}`);
            const key = `${name} ${path}`;
            results[key] = [...(results[key] ?? []), r];
          }
        } finally {
          await server.stop();
        }
      }
    }
    const figures: Figure[] = [];
    for (const path of ["/bench/trivial", "/health"]) {
      const d = results[`deno ${path}`]!;
      const n = results[`node ${path}`]!;
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      const rps = (ls: Load[]) => mean(ls.map((l) => l.requests / l.seconds));
      const label = path === "/health" ? "/health" : "trivial route";
      opts.progress(
        `http: ${label}: Deno.serve ${rps(d).toFixed(0)} req/s, p99 ${mean(d.map((l) => l.p99_ms)).toFixed(2)} ms; ` +
          `node:http ${rps(n).toFixed(0)} req/s, p99 ${mean(n.map((l) => l.p99_ms)).toFixed(2)} ms`,
      );
      figures.push({
        name: `${label}: p99 latency, ${CLIENTS} clients, node:http`,
        measuredMs: mean(n.map((l) => l.p99_ms)),
        baselineMs: mean(d.map((l) => l.p99_ms)),
        baseline: `the same app on Deno.serve (${rps(d).toFixed(0)} req/s there, ${rps(n).toFixed(0)} on node:http)`,
        goal: { kind: "ratio", max: ACCEPTED_RATIO },
        runs: n.length,
      });
      figures.push({
        name: `${label}: time per request (1/throughput), ${CLIENTS} clients, node:http`,
        measuredMs: 1000 / rps(n),
        baselineMs: 1000 / rps(d),
        baseline: "the same app on Deno.serve",
        goal: { kind: "ratio", max: ACCEPTED_RATIO },
        runs: n.length,
      });
    }
    return figures;
  } finally {
    await svc.close();
  }
}
