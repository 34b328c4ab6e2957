/** Unit tests of engine/names.ts and db/identifiers.ts: names from requests are parsed strictly and quoted for generated DDL. */
import assert from "node:assert/strict";
import { displayName, isIdentifier, quoteIdent, quoteLiteral, quoteQualified } from "../db/identifiers.ts";
import { TrickleError } from "../engine/errors.ts";
import { parseQualifiedName } from "../engine/names.ts";

function assertInvalidName(input: string): void {
  assert.throws(
    () => parseQualifiedName(input),
    (e: unknown) => {
      assert.ok(e instanceof TrickleError, `expected a TrickleError for ${JSON.stringify(input)}`);
      assert.equal(e.code, "InvalidName");
      assert.equal(e.status, 400);
      // The message quotes the value as JSON so a reader sees exactly what was refused.
      assert.ok(e.message.includes(JSON.stringify(input)), e.message);
      return true;
    },
  );
}

Deno.test("parseQualifiedName: a bare table is in schema public", () => {
  assert.deepEqual(parseQualifiedName("order_totals"), { schema: "public", name: "order_totals" });
});

Deno.test("parseQualifiedName: schema.table", () => {
  assert.deepEqual(parseQualifiedName("analytics.daily"), { schema: "analytics", name: "daily" });
});

Deno.test("parseQualifiedName: case is kept (names are case-sensitive), _ and $ allowed", () => {
  assert.deepEqual(parseQualifiedName("Sales.Totals"), { schema: "Sales", name: "Totals" });
  assert.deepEqual(parseQualifiedName("_t$1"), { schema: "public", name: "_t$1" });
});

Deno.test("parseQualifiedName: exactly 63 bytes is accepted, 64 refused", () => {
  const n63 = "a".repeat(63);
  assert.deepEqual(parseQualifiedName(n63), { schema: "public", name: n63 });
  assert.deepEqual(parseQualifiedName(`${n63}.${n63}`), { schema: n63, name: n63 });
  assertInvalidName("a".repeat(64));
  assertInvalidName(`s.${"b".repeat(64)}`);
});

Deno.test("parseQualifiedName: refuses what is not an identifier", () => {
  for (
    const bad of [
      "",
      "1abc",
      "a.b.c",
      ".t",
      "t.",
      "a b",
      "a-b",
      'x"; drop table y; --',
      "t; drop table y",
      "t'--",
      '"quoted"',
      "ünïcode",
      "tab\tname",
      "name\n",
    ]
  ) {
    assertInvalidName(bad);
  }
});

Deno.test("parseQualifiedName: the error names what was being parsed", () => {
  assert.throws(() => parseQualifiedName("1x", "source table"), /Invalid source table "1x"/);
});

Deno.test("isIdentifier: ASCII identifiers of 1 to 63 bytes", () => {
  assert.equal(isIdentifier("abc"), true);
  assert.equal(isIdentifier("a".repeat(63)), true);
  assert.equal(isIdentifier("a".repeat(64)), false);
  assert.equal(isIdentifier(""), false);
});

Deno.test("quoteIdent doubles embedded quotes so the result is one identifier", () => {
  assert.equal(quoteIdent("plain"), '"plain"');
  assert.equal(quoteIdent("MixedCase"), '"MixedCase"');
  assert.equal(quoteIdent('x"; drop table y; --'), '"x""; drop table y; --"');
  assert.equal(quoteIdent('""'), '""""""');
  assert.equal(quoteIdent(""), '""');
});

Deno.test("quoteQualified quotes both parts separately", () => {
  assert.equal(quoteQualified({ schema: "s", name: "t" }), '"s"."t"');
  assert.equal(quoteQualified({ schema: 'a"b', name: "c.d" }), '"a""b"."c.d"');
});

Deno.test("quoteLiteral doubles single quotes", () => {
  assert.equal(quoteLiteral("it's"), "'it''s'");
  assert.equal(quoteLiteral("'; drop table y; --"), "'''; drop table y; --'");
});

Deno.test("displayName omits the public schema only", () => {
  assert.equal(displayName({ schema: "public", name: "t" }), "t");
  assert.equal(displayName({ schema: "s", name: "t" }), "s.t");
});

Deno.test("parseQualifiedName: trickle's and PostgreSQL's schemas are reserved", () => {
  for (
    const schema of [
      "pgtrickle",
      "pgtrickle_changes",
      "pg_catalog",
      "information_schema",
      "pg_toast",
      "pg_temp",
      "pg_temp_3",
      "pg_toast_temp_12",
    ]
  ) {
    assert.throws(
      () => parseQualifiedName(`${schema}.t`),
      (e) =>
        e instanceof TrickleError && e.code === "InvalidName" && e.status === 400 &&
        e.message.includes(`schema "${schema}" is reserved`),
      schema,
    );
  }
  // Case matters, as in PostgreSQL: these are ordinary schemas.
  assert.deepEqual(parseQualifiedName("PgTrickle.t"), { schema: "PgTrickle", name: "t" });
  assert.deepEqual(parseQualifiedName("pgtrickle_x.t"), { schema: "pgtrickle_x", name: "t" });
  // A table may be named like a schema; only the schema is checked.
  assert.deepEqual(parseQualifiedName("pg_catalog"), { schema: "public", name: "pg_catalog" });
});
