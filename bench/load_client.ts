/**
 * A load generator run as its own process by bench/http_bench.ts, so the server it measures does not share its
 * event loop: `deno run --allow-net bench/load_client.ts <url> <clients> <seconds>` keeps <clients> requests in
 * flight (keep-alive connections) for <seconds>, then prints one JSON line: requests, errors, seconds, p50_ms, p99_ms.
 */
const [url, clientsArg, secondsArg] = Deno.args;
if (url === undefined || clientsArg === undefined || secondsArg === undefined) {
  console.error("usage: load_client.ts <url> <clients> <seconds>");
  Deno.exit(2);
}
const clients = Number(clientsArg);
const seconds = Number(secondsArg);
const latencies: number[] = [];
let errors = 0;
const t0 = performance.now();
const end = t0 + seconds * 1000;

async function client(): Promise<void> {
  while (performance.now() < end) {
    const start = performance.now();
    try {
      const res = await fetch(url!);
      await res.arrayBuffer();
      if (res.status === 200) latencies.push(performance.now() - start);
      else errors++;
    } catch {
      errors++;
    }
  }
}

await Promise.all(Array.from({ length: clients }, client));
const elapsed = (performance.now() - t0) / 1000;
latencies.sort((a, b) => a - b);
const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN;
console.log(
  JSON.stringify({ requests: latencies.length, errors, seconds: elapsed, p50_ms: at(0.5), p99_ms: at(0.99) }),
);
