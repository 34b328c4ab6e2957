/**
 * What the listener says about a request it cannot parse (routes/listener.ts): the words for each kind of malformed
 * head, and a client too slow to send its headers answered 408 and disconnected while others are served. The
 * end-to-end checks against the running service are in listeners_test.ts.
 */
import assert from "node:assert/strict";
import { Hono } from "hono";
import { silentLogger } from "../log.ts";
import { describeMalformedRequest, listen, malformedRequestAnswer } from "../routes/listener.ts";

const bytes = (s: string) => new Uint8Array([...s].map((c) => c.charCodeAt(0)));

Deno.test("each kind of malformed request head is named", () => {
  const cases: [string, RegExp][] = [
    [
      "\x00\x01\x02\r\n\r\n",
      /^the request is not HTTP: byte 0x00 at offset 0 of the request line "\\u0000\\u0001\\u0002"$/,
    ],
    ["GET /\xff HTTP/1.1\r\n\r\n", /byte 0xff at offset 5/],
    ["\r\n\r\n", /^the request line is empty$/],
    ["GET /\r\n\r\n", /^bad request line "GET \/": expected "METHOD target HTTP\/1\.1"/],
    ["GET  / HTTP/1.1\r\n\r\n", /^bad request line "GET {2}\/ HTTP\/1\.1"/],
    ["G(T / HTTP/1.1\r\n\r\n", /^bad method "G\(T"/],
    ["GET / HTTP/2.0\r\n\r\n", /^unsupported HTTP version "HTTP\/2\.0"/],
    ["GET / HTTP/1.1\r\nHost: x\r\nbroken\r\n\r\n", /^header line 2 has no colon: "broken"/],
    ["GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", /^header line 1 has an invalid name "Bad Name"/],
    ["GET / HTTP/1.1\r\nX-A: a\x01b\r\n\r\n", /^header "X-A" has a control character in its value$/],
    [
      "GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
      /could not be parsed as HTTP\/1\.1 \(its head is well formed/,
    ],
  ];
  for (const [raw, says] of cases) assert.match(describeMalformedRequest(bytes(raw)), says, JSON.stringify(raw));
  const long = describeMalformedRequest(bytes(`GET /${"a".repeat(200)} HTTP/1.1 x\r\n\r\n`));
  assert.ok(long.length < 200, "a long line is cut in the answer");
});

Deno.test("the answer is a complete HTTP/1.1 response with a plain-text body and its length", () => {
  const a = malformedRequestAnswer({ code: "HPE_INVALID_METHOD", rawPacket: bytes("G(T / HTTP/1.1\r\n\r\n") });
  assert.equal(a.status, 400);
  const [head, body] = a.raw.split("\r\n\r\n") as [string, string];
  assert.match(head, /^HTTP\/1\.1 400 Bad Request\r\n/);
  assert.match(head, /\r\ncontent-type: text\/plain; charset=utf-8\r\n/);
  assert.match(head, /\r\nconnection: close$/);
  assert.equal(Number(/content-length: (\d+)/.exec(head)![1]), new TextEncoder().encode(body).length);
  assert.equal(body, 'Bad Request: bad method "G(T" in the request line\n');
  assert.equal(malformedRequestAnswer({ code: "HPE_HEADER_OVERFLOW" }).status, 431);
});

Deno.test({
  name: "a client too slow to send its headers gets 408 and is disconnected; others are served meanwhile",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const app = new Hono();
    app.get("/", (c) => c.text("ok"));
    const l = await listen(app, {
      hostname: "127.0.0.1",
      port: 0,
      setting: "-",
      log: silentLogger,
      name: "test",
      headersTimeoutMs: 400,
    });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: l.port });
    try {
      await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n")); // and nothing more
      const t0 = performance.now();
      const other = await fetch(`http://127.0.0.1:${l.port}/`);
      assert.equal(await other.text(), "ok");
      let text = "";
      const buf = new Uint8Array(4096);
      const guard = setTimeout(() => conn.close(), 5000);
      try {
        for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
          text += new TextDecoder().decode(buf.subarray(0, n));
        }
      } finally {
        clearTimeout(guard);
      }
      const ms = performance.now() - t0;
      assert.match(text, /^HTTP\/1\.1 408 Request Timeout\r\n/);
      assert.match(text, /Request Timeout: the request was not received in time\n$/);
      assert.ok(ms >= 300 && ms < 3000, `answered after ${ms} ms`);
    } finally {
      try {
        conn.close();
      } catch {
        // closed by the server
      }
      await l.shutdown();
    }
  },
});
