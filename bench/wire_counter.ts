/**
 * A TCP relay between a client (the service) and PostgreSQL that counts what the client asks of the server, from the
 * wire protocol itself: statements (Execute messages of the extended protocol, and simple Query messages), round
 * trips (each time the client sends after the server has answered: statements sent together count once), and DDL
 * (statements whose text, as parsed, begins with CREATE, DROP, ALTER or TRUNCATE). It works on any server and version,
 * without server settings or extensions, and sees exactly what the client sends. It adds latency: time nothing
 * through it.
 */

export interface WireCounts {
  statements: number;
  ddl: number;
  /** DDL statements that changed nothing: `CREATE ... IF NOT EXISTS` of a relation that exists. */
  ddlSkipped: number;
}

export interface WireCounter {
  /** host:port to give the client instead of the server's. */
  port: number;
  /** Counts since the relay started, over every connection. */
  counts(): WireCounts;
  close(): void;
}

/** Listens on a free local port and relays every connection to `target`. */
export function startWireCounter(target: { hostname: string; port: number }): WireCounter {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const totals: WireCounts = { statements: 0, ddl: 0, ddlSkipped: 0 };
  const conns = new Set<Deno.Conn>();
  (async () => {
    for await (const client of listener) {
      const server = await Deno.connect(target).catch(() => null);
      if (server === null) {
        client.close();
        continue;
      }
      conns.add(client).add(server);
      relay(client, server, totals).finally(() => {
        for (const c of [client, server]) {
          conns.delete(c);
          try {
            c.close();
          } catch { /* already closed */ }
        }
      });
    }
  })().catch(() => {}); // the listener closed
  return {
    port: (listener.addr as Deno.NetAddr).port,
    counts: () => ({ ...totals }),
    close: () => {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* already closed */ }
      }
    },
  };
}

async function relay(client: Deno.Conn, server: Deno.Conn, totals: WireCounts): Promise<void> {
  const parser = new FrontendParser(totals);
  const notices = new BackendParser(totals);
  const up = (async () => {
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await client.read(buf);
      if (n === null) break;
      parser.push(buf.subarray(0, n));
      await writeAll(server, buf.subarray(0, n));
    }
  })();
  const down = (async () => {
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await server.read(buf);
      if (n === null) break;
      notices.push(buf.subarray(0, n), parser.sslRequested);
      await writeAll(client, buf.subarray(0, n));
    }
  })();
  await Promise.race([up, down]).catch(() => {});
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

/** Frontend messages: the untyped startup packet(s) first, then a type byte and an int32 length each. */
class FrontendParser {
  #pending = new Uint8Array(0);
  #started = false;
  /** The client asked for TLS first: the server answers with one untyped byte. */
  sslRequested = false;
  readonly #decoder = new TextDecoder();

  constructor(private readonly totals: WireCounts) {}

  push(chunk: Uint8Array): void {
    const data = new Uint8Array(this.#pending.length + chunk.length);
    data.set(this.#pending);
    data.set(chunk, this.#pending.length);
    let off = 0;
    for (;;) {
      if (!this.#started) {
        if (data.length - off < 8) break;
        const len = view(data).getInt32(off);
        if (data.length - off < len) break;
        // 80877103: SSLRequest (answered with one byte; the real startup packet follows).
        if (view(data).getInt32(off + 4) !== 80877103) this.#started = true;
        else this.sslRequested = true;
        off += len;
        continue;
      }
      if (data.length - off < 5) break;
      const len = view(data).getInt32(off + 1);
      if (data.length - off < 1 + len) break;
      this.#message(data[off]!, data.subarray(off + 5, off + 1 + len));
      off += 1 + len;
    }
    this.#pending = data.slice(off);
  }

  #message(type: number, body: Uint8Array): void {
    const kind = String.fromCharCode(type);
    if (kind === "E" || kind === "Q") this.totals.statements++;
    // Parse: statement name, NUL, query text, NUL; Query: query text, NUL.
    const text = kind === "P" ? this.#cString(body, body.indexOf(0) + 1) : kind === "Q" ? this.#cString(body, 0) : null;
    if (text !== null && /^\s*(create|drop|alter|truncate)\b/i.test(text)) this.totals.ddl++;
  }

  #cString(body: Uint8Array, from: number): string {
    const end = body.indexOf(0, from);
    return this.#decoder.decode(body.subarray(from, end < 0 ? body.length : end));
  }
}

/** Backend messages (a type byte and an int32 length each): counts the notices of skipped DDL. */
class BackendParser {
  #pending = new Uint8Array(0);
  #skippedSslAnswer = false;
  readonly #decoder = new TextDecoder();

  constructor(private readonly totals: WireCounts) {}

  push(chunk: Uint8Array, sslRequested: boolean): void {
    let data = new Uint8Array(this.#pending.length + chunk.length);
    data.set(this.#pending);
    data.set(chunk, this.#pending.length);
    if (sslRequested && !this.#skippedSslAnswer && data.length > 0) {
      data = data.subarray(1);
      this.#skippedSslAnswer = true;
    }
    let off = 0;
    while (data.length - off >= 5) {
      const len = view(data).getInt32(off + 1);
      if (data.length - off < 1 + len) break;
      if (data[off] === "N".charCodeAt(0) && this.#sqlstate(data.subarray(off + 5, off + 1 + len)) === "42P07") {
        this.totals.ddlSkipped++;
      }
      off += 1 + len;
    }
    this.#pending = data.slice(off);
  }

  /** The SQLSTATE field ('C') of an error or notice body: fields of a type byte and a NUL-terminated string. */
  #sqlstate(body: Uint8Array): string | null {
    let i = 0;
    while (i < body.length && body[i] !== 0) {
      const end = body.indexOf(0, i + 1);
      if (body[i] === "C".charCodeAt(0)) return this.#decoder.decode(body.subarray(i + 1, end));
      i = end + 1;
    }
    return null;
  }
}

function view(data: Uint8Array): DataView {
  return new DataView(data.buffer, data.byteOffset, data.byteLength);
}
