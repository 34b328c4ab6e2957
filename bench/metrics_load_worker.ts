/**
 * The load generator of bench/metrics_bench.ts, in a Web Worker: its clients run on their own event loop, so their
 * work does not queue behind the server's handlers (they still share the machine's CPUs).
 */
/// <reference lib="deno.worker" />

interface LoadRequest {
  base: string;
  paths: string[];
  clients: number;
  seconds: number;
}

self.onmessage = async (e: MessageEvent<LoadRequest>) => {
  const { base, paths, clients, seconds } = e.data;
  const latencies: Record<string, number[]> = Object.fromEntries(paths.map((p) => [p, []]));
  const end = performance.now() + seconds * 1000;
  let error: string | null = null;
  await Promise.all(Array.from({ length: clients }, async (_, client) => {
    for (let i = client; performance.now() < end && error === null; i++) {
      const path = paths[i % paths.length]!;
      const t0 = performance.now();
      const res = await fetch(base + path);
      await res.arrayBuffer();
      if (!res.ok) error = `${path}: HTTP ${res.status}`;
      latencies[path]!.push(performance.now() - t0);
    }
  }));
  self.postMessage({ latencies, error });
};
