/**
 * The HTTP listeners: a Hono app served on node:http (through @hono/node-server), so that a malformed request is
 * answered 400 with a plain-text body saying what was wrong.
 *
 * Why not Deno.serve: it answers a request it cannot parse (garbage bytes, a bad request line, a header without a
 * colon) with 400 and an EMPTY body before any handler runs, and offers no hook to say more. node:http emits
 * `clientError` with the raw bytes, and its handler writes the answer itself.
 *
 * What it costs, measured before choosing (`deno task bench --only http`: the API app, 50 concurrent keep-alive
 * clients in another process, 2 shared CPUs, load average 4-7): a trivial route 1,536 req/s on node:http against
 * 4,197 on Deno.serve, p99 98 ms against 53 ms; /health 2,108 against 3,851 req/s, p99 105 against 52 ms. A bare
 * "ok" handler without Hono shows most of the gap (3.8k against 7.0k req/s): it is mostly Deno's node:http itself,
 * the adapter adds the rest. A second run at load average 10 gave 827 against 2,373 req/s (trivial) and 666 against 2,282 (/health),
 * p99 161 against 80 ms and 232 against 81 ms: about 3x when the CPUs are contended. In time per request at
 * saturation that is 0.4 to 1 ms more per request. Chosen anyway: the issue requires the 400 with a body, and that
 * overhead is small beside what an API request that reads PostgreSQL costs.
 */
import { createAdaptorServer } from "@hono/node-server";
import type { Server } from "node:http";
import type { Socket } from "node:net";
import type { Logger } from "../log.ts";

/** The typed error for a listen address already taken. */
export class PortInUse extends Error {
  readonly code = "PortInUse";
  constructor(host: string, options: { port: number; setting: string }) {
    super(
      `Port ${options.port} on ${host} is already in use; stop the other process or set ${options.setting} ` +
        `to a free port`,
    );
    this.name = "PortInUse";
  }
}

/** A listening server. */
export interface Listener {
  /** The port it listens on (the one chosen when 0 was asked). */
  port: number;
  /** Stops accepting, lets requests in flight finish, closes idle keep-alive connections. */
  shutdown(): Promise<void>;
}

export interface ListenOptions {
  hostname: string;
  port: number;
  /** The setting that chose the port, named in PortInUse. */
  setting: string;
  log: Logger;
  /** The listener's name in the log ("main", "metrics"). */
  name: string;
  /** How long a client may take to send a request's headers before a 408 (default 10 s). */
  headersTimeoutMs?: number;
}

const DEFAULT_HEADERS_TIMEOUT_MS = 10_000;
/** How long a client may take to send a whole request (headers and body). */
const REQUEST_TIMEOUT_MS = 60_000;

/** Serves `app` on node:http; rejects with PortInUse when the port is taken. */
export function listen(
  app: { fetch: (req: Request) => Response | Promise<Response> },
  options: ListenOptions,
): Promise<Listener> {
  // overrideGlobalObjects: the adapter would otherwise replace the global Request and Response with its own.
  const headersTimeout = options.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS;
  const server = createAdaptorServer({
    fetch: app.fetch,
    hostname: options.hostname,
    overrideGlobalObjects: false,
    // A client that trickles its request in (slowloris) is answered 408 and disconnected. Deno's node:http only
    // enforces these at each connectionsCheckingInterval, so the interval is a fraction of the limit.
    serverOptions: {
      headersTimeout: headersTimeout,
      requestTimeout: Math.max(REQUEST_TIMEOUT_MS, headersTimeout),
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(headersTimeout / 4))),
    },
  });
  (server as Server).on("clientError", (err: Error & { code?: string; rawPacket?: Uint8Array }, socket: Socket) => {
    if (err.code === "ECONNRESET" || !socket.writable) return void socket.destroy();
    const answer = malformedRequestAnswer(err);
    options.log.warn("malformed request", { listener: options.name, status: answer.status, reason: answer.reason });
    socket.end(answer.raw);
  });
  return new Promise((resolve, reject) => {
    const onError = (e: Error & { code?: string }) => {
      reject(
        e.code === "EADDRINUSE" ? new PortInUse(options.hostname, { port: options.port, setting: options.setting }) : e,
      );
    };
    server.once("error", onError);
    server.listen(options.port, options.hostname, () => {
      server.off("error", onError);
      server.on("error", (e) => options.log.error("listener error", { listener: options.name, error: e }));
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : options.port;
      resolve({
        port,
        shutdown: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            (server as Server).closeIdleConnections?.();
          }),
      });
    });
  });
}

const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  408: "Request Timeout",
  431: "Request Header Fields Too Large",
};

/** The raw HTTP answer to a request node:http could not parse: status, reason, and the bytes to write. */
export function malformedRequestAnswer(
  err: { code?: string; rawPacket?: Uint8Array },
): { status: number; reason: string; raw: string } {
  let status = 400;
  let reason: string;
  if (err.code === "HPE_HEADER_OVERFLOW") {
    status = 431;
    reason = "the request's header section is too large";
  } else if (err.code === "ERR_HTTP_REQUEST_TIMEOUT") {
    status = 408;
    reason = "the request was not received in time";
  } else {
    reason = describeMalformedRequest(err.rawPacket ?? new Uint8Array());
  }
  const body = `${STATUS_TEXT[status]}: ${reason}\n`;
  const raw = `HTTP/1.1 ${status} ${STATUS_TEXT[status]}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
    `content-length: ${new TextEncoder().encode(body).length}\r\nconnection: close\r\n\r\n${body}`;
  return { status, reason, raw };
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const REQUEST_LINE = /^([^ ]+) ([^ ]+) (HTTP\/\d\.\d)$/;

/** A value quoted for the answer: at most 60 characters, control bytes escaped. */
function quote(text: string): string {
  const cut = text.length > 60 ? text.slice(0, 60) + "..." : text;
  return JSON.stringify(cut);
}

/** The offset of the first control character (tab allowed; bytes above 0x7f too unless `above7f`), or -1. */
function firstControl(text: string, options: { above7f: boolean }): number {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c === 0x7f || (options.above7f && c > 0x7f)) return i;
  }
  return -1;
}

/** What is wrong with a request head that node:http refused, in words (pure: `raw` is what the client sent). */
export function describeMalformedRequest(raw: Uint8Array): string {
  // latin1: one character per byte, so offsets are byte offsets and no byte is lost to UTF-8 decoding.
  const text = Array.from(raw.subarray(0, 8192), (b) => String.fromCharCode(b)).join("");
  const headEnd = text.search(/\r?\n\r?\n/);
  const lines = (headEnd === -1 ? text : text.slice(0, headEnd)).split(/\r?\n/);
  const first = lines[0] ?? "";
  if (first === "") return "the request line is empty";
  const control = firstControl(first, { above7f: true });
  if (control !== -1) {
    const byte = first.charCodeAt(control).toString(16).padStart(2, "0");
    return `the request is not HTTP: byte 0x${byte} at offset ${control} of the request line ${quote(first)}`;
  }
  const m = REQUEST_LINE.exec(first);
  if (m === null) {
    return `bad request line ${quote(first)}: expected "METHOD target HTTP/1.1" (three parts, single spaces)`;
  }
  if (!TOKEN.test(m[1]!)) return `bad method ${quote(m[1]!)} in the request line`;
  if (m[3] !== "HTTP/1.1" && m[3] !== "HTTP/1.0") {
    return `unsupported HTTP version ${quote(m[3]!)} in the request line: expected HTTP/1.1 or HTTP/1.0`;
  }
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(":");
    if (colon === -1) return `header line ${i} has no colon: ${quote(line)} (expected "Name: value")`;
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) return `header line ${i} has an invalid name ${quote(name)}`;
    if (firstControl(line.slice(colon + 1), { above7f: false }) !== -1) {
      return `header "${name}" has a control character in its value`;
    }
  }
  return "the request could not be parsed as HTTP/1.1 (its head is well formed: check its framing, e.g. " +
    "content-length and transfer-encoding)";
}
