/**
 * The throwaway PostgreSQL that tests and benchmarks run against: the embedded server with its data in the system's
 * temporary directory, or a server the caller already has.
 */
import { startEmbedded } from "../../db/embedded.ts";
import { createLogger } from "../../log.ts";

export interface ThrowawayServer {
  /** The maintenance database URL. */
  url: string;
  /** Stops the server and removes its data; calling it again does nothing. */
  stop(): Promise<void>;
}

export interface ThrowawayServerOptions {
  /** A server to use instead (e.g. TEST_DATABASE_URL); it is left running on stop. Empty or absent: start one. */
  url?: string | undefined;
  /** Called before the embedded server starts, which takes seconds (a first start copies binaries). */
  onStart?: () => void;
}

/** Starts the embedded PostgreSQL in a fresh temporary directory (unless `url` names a server) and says how to stop it. */
export async function startThrowawayServer(options: ThrowawayServerOptions = {}): Promise<ThrowawayServer> {
  if (options.url !== undefined && options.url !== "") return { url: options.url, stop: () => Promise.resolve() };
  // The system's temporary directory, not the checkout: as root the server runs as the postgres OS user, who must
  // reach its data, which a checkout in a private home directory (/root) would not allow.
  const dataDir = await Deno.makeTempDir({ prefix: "trickle-test-" });
  await Deno.chmod(dataDir, 0o755);
  options.onStart?.();
  let server;
  try {
    server = await startEmbedded({ dataDir, log: createLogger("warn"), ephemeral: true });
  } catch (e) {
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    throw e;
  }
  let stopping: Promise<void> | null = null;
  const stop = () =>
    stopping ??= (async () => {
      await server.stop();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {}); // already removed when ephemeral
    })();
  return { url: server.url, stop };
}
