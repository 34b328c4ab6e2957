/**
 * A small, deterministic TPC-H data generator (all eight tables), seeded, plus random changes for the oracle. Value
 * distributions follow the TPC-H specification loosely: dates in 1992-1998, discounts 0.00-0.10, taxes 0.00-0.08,
 * quantities 1-50, the spec's segments, priorities, ship modes, part types, containers and brands, four suppliers per
 * part (the spec's formula), phones whose country code is 10 + nation, no orders for customers whose key is a
 * multiple of 3. Adaptations so that every query has rows at a small scale are listed in docs/differential.md.
 */
import type { Rng, Sql, Tx } from "./oracle.ts";

export const REGIONS = ["AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"];
const NATIONS: [string, number][] = [
  ["ALGERIA", 0],
  ["ARGENTINA", 1],
  ["BRAZIL", 1],
  ["CANADA", 1],
  ["EGYPT", 4],
  ["ETHIOPIA", 0],
  ["FRANCE", 3],
  ["GERMANY", 3],
  ["INDIA", 2],
  ["INDONESIA", 2],
  ["IRAN", 4],
  ["IRAQ", 4],
  ["JAPAN", 2],
  ["JORDAN", 4],
  ["KENYA", 0],
  ["MOROCCO", 0],
  ["MOZAMBIQUE", 0],
  ["PERU", 1],
  ["CHINA", 2],
  ["ROMANIA", 3],
  ["SAUDI ARABIA", 4],
  ["VIETNAM", 2],
  ["RUSSIA", 3],
  ["UNITED KINGDOM", 3],
  ["UNITED STATES", 1],
];
const SEGMENTS = ["AUTOMOBILE", "BUILDING", "FURNITURE", "HOUSEHOLD", "MACHINERY"];
const PRIORITIES = ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"];
const SHIPMODES = ["REG AIR", "AIR", "RAIL", "SHIP", "TRUCK", "MAIL", "FOB"];
const START = Date.UTC(1992, 0, 1);
const END = Date.UTC(1998, 7, 2);
const DAY = 86_400_000;

export interface TpchScale {
  customers: number;
  orders: number;
  suppliers: number;
  parts: number;
}

/** State the generators need: the next free order key, customers' nations, suppliers by nation. */
export interface TpchState {
  nextOrderKey: number;
  scale: TpchScale;
  customerNation: number[];
  suppliersByNation: Map<number, number[]>;
  /** The parts each supplier supplies (partsupp), so that every lineitem's (part, supplier) is in partsupp. */
  partsBySupplier: Map<number, number[]>;
}

const TYPES = [
  ["STANDARD", "SMALL", "MEDIUM", "LARGE", "ECONOMY", "PROMO"],
  ["ANODIZED", "BURNISHED", "PLATED", "POLISHED", "BRUSHED"],
  ["TIN", "NICKEL", "BRASS", "STEEL", "COPPER"],
];
const CONTAINERS = [["SM", "LG", "MED", "JUMBO", "WRAP"], ["CASE", "BOX", "BAG", "JAR", "PKG", "PACK", "CAN", "DRUM"]];
const COLORS = ["almond", "azure", "blush", "chocolate", "forest", "green", "ivory", "khaki", "lavender", "linen"]
  .concat(["maroon", "navy", "orchid", "peru", "plum", "rose", "salmon", "smoke", "tan", "violet"]);

const SCHEMA = `
  CREATE TABLE region (r_regionkey int PRIMARY KEY, r_name char(25) NOT NULL, r_comment varchar(152));
  CREATE TABLE nation (n_nationkey int PRIMARY KEY, n_name char(25) NOT NULL, n_regionkey int NOT NULL,
    n_comment varchar(152));
  CREATE TABLE supplier (s_suppkey int PRIMARY KEY, s_name char(25) NOT NULL, s_address varchar(40) NOT NULL,
    s_nationkey int NOT NULL, s_phone char(15) NOT NULL, s_acctbal numeric(15,2) NOT NULL, s_comment varchar(101));
  CREATE TABLE customer (c_custkey int PRIMARY KEY, c_name varchar(25) NOT NULL, c_address varchar(40) NOT NULL,
    c_nationkey int NOT NULL, c_phone char(15) NOT NULL, c_acctbal numeric(15,2) NOT NULL,
    c_mktsegment char(10) NOT NULL, c_comment varchar(117));
  CREATE TABLE orders (o_orderkey int PRIMARY KEY, o_custkey int NOT NULL, o_orderstatus char(1) NOT NULL,
    o_totalprice numeric(15,2) NOT NULL, o_orderdate date NOT NULL, o_orderpriority char(15) NOT NULL,
    o_clerk char(15) NOT NULL, o_shippriority int NOT NULL, o_comment varchar(79));
  CREATE TABLE lineitem (l_orderkey int NOT NULL, l_partkey int NOT NULL, l_suppkey int NOT NULL,
    l_linenumber int NOT NULL, l_quantity numeric(15,2) NOT NULL, l_extendedprice numeric(15,2) NOT NULL,
    l_discount numeric(15,2) NOT NULL, l_tax numeric(15,2) NOT NULL, l_returnflag char(1) NOT NULL,
    l_linestatus char(1) NOT NULL, l_shipdate date NOT NULL, l_commitdate date NOT NULL, l_receiptdate date NOT NULL,
    l_shipinstruct char(25) NOT NULL, l_shipmode char(10) NOT NULL, l_comment varchar(44),
    PRIMARY KEY (l_orderkey, l_linenumber));
  CREATE TABLE part (p_partkey int PRIMARY KEY, p_name varchar(55) NOT NULL, p_mfgr char(25) NOT NULL,
    p_brand char(10) NOT NULL, p_type varchar(25) NOT NULL, p_size int NOT NULL, p_container char(10) NOT NULL,
    p_retailprice numeric(15,2) NOT NULL, p_comment varchar(23));
  CREATE TABLE partsupp (ps_partkey int NOT NULL, ps_suppkey int NOT NULL, ps_availqty int NOT NULL,
    ps_supplycost numeric(15,2) NOT NULL, ps_comment varchar(199), PRIMARY KEY (ps_partkey, ps_suppkey));
  CREATE INDEX ON lineitem (l_suppkey);
  CREATE INDEX ON lineitem (l_partkey, l_suppkey);
  CREATE INDEX ON partsupp (ps_suppkey);
  CREATE INDEX ON orders (o_custkey);`;

function isoDate(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

function phone(rng: Rng, nation: number): string {
  return `${10 + nation}-${rng.int(100, 999)}-${rng.int(100, 999)}-${rng.int(1000, 9999)}`;
}

function money(rng: Rng, lo: number, hi: number): string {
  return (rng.int(lo * 100, hi * 100) / 100).toFixed(2);
}

type Row = Record<string, string | number | null>;

/** An order and its 1-7 lineitems, as rows. */
function makeOrder(rng: Rng, key: number, state: TpchState): { order: Row; lines: Row[] } {
  const scale = state.scale;
  let customer = rng.int(1, scale.customers);
  if (customer % 3 === 0) customer = customer === scale.customers ? 1 : customer + 1; // the spec: no orders
  // A third of the lines come from a supplier of the customer's own nation, so Q5 (local suppliers) has rows to
  // maintain at this small scale.
  const local = state.suppliersByNation.get(state.customerNation[customer]!) ?? [];
  const orderDate = START + rng.int(0, Math.floor((END - START) / DAY) - 151) * DAY;
  const lines: Row[] = [];
  let total = 0;
  const n = rng.int(1, 7);
  for (let ln = 1; ln <= n; ln++) {
    const quantity = rng.int(1, 50);
    const price = quantity * rng.int(900, 2000);
    const discount = rng.int(0, 10) / 100;
    const tax = rng.int(0, 8) / 100;
    const ship = orderDate + rng.int(1, 121) * DAY;
    const commit = orderDate + rng.int(30, 90) * DAY;
    const receipt = ship + rng.int(1, 30) * DAY;
    const shipped = ship <= Date.UTC(1995, 5, 17);
    total += price * (1 + tax) * (1 - discount);
    const supplier = local.length > 0 && rng.chance(0.33) ? rng.pick(local) : rng.int(1, scale.suppliers);
    lines.push({
      l_orderkey: key,
      l_partkey: rng.pick(state.partsBySupplier.get(supplier)!),
      l_suppkey: supplier,
      l_linenumber: ln,
      l_quantity: quantity.toFixed(2),
      l_extendedprice: price.toFixed(2),
      l_discount: discount.toFixed(2),
      l_tax: tax.toFixed(2),
      l_returnflag: receipt <= Date.UTC(1995, 5, 17) ? rng.pick(["R", "A"]) : "N",
      l_linestatus: shipped ? "F" : "O",
      l_shipdate: isoDate(ship),
      l_commitdate: isoDate(commit),
      l_receiptdate: isoDate(receipt),
      l_shipinstruct: rng.pick(["DELIVER IN PERSON", "COLLECT COD", "NONE", "TAKE BACK RETURN"]),
      l_shipmode: rng.pick(SHIPMODES),
      l_comment: `line ${ln} of ${key}`,
    });
  }
  const order: Row = {
    o_orderkey: key,
    o_custkey: customer,
    o_orderstatus: lines.every((l) => l["l_linestatus"] === "F") ? "F" : "O",
    o_totalprice: total.toFixed(2),
    o_orderdate: isoDate(orderDate),
    o_orderpriority: rng.pick(PRIORITIES),
    o_clerk: `Clerk#${String(rng.int(1, 1000)).padStart(9, "0")}`,
    o_shippriority: 0,
    // Q13 leaves out orders whose comment mentions special requests.
    o_comment: rng.chance(0.1) ? `special packages requests ${key}` : `order ${key}`,
  };
  return { order, lines };
}

async function insertRows(sql: Sql | Tx, table: string, rows: Row[]): Promise<void> {
  for (let i = 0; i < rows.length; i += 1000) {
    const chunk = rows.slice(i, i + 1000);
    await sql`INSERT INTO ${sql(table)} ${sql(chunk as never)}`;
  }
}

/**
 * Parts and partsupp: four suppliers per part by the spec's formula. Some parts get the values single queries select
 * (a 1/150 or 1/1000 share would leave them empty at this scale): key % 25 = 0 is Brand#23 MED BOX (Q17, Q19),
 * 1 a size-15 BRASS part (Q2), 2 ECONOMY ANODIZED STEEL (Q8), 3 a name starting with "forest" (Q20).
 */
async function insertParts(sql: Sql, rng: Rng, state: TpchState): Promise<void> {
  const parts: Row[] = [];
  const partsupp: Row[] = [];
  const s = state.scale.suppliers;
  for (let p = 1; p <= state.scale.parts; p++) {
    let name = Array.from({ length: 5 }, () => rng.pick(COLORS)).join(" ");
    const m = rng.int(1, 5);
    let brand = `Brand#${m}${rng.int(1, 5)}`;
    let type = TYPES.map((syllables) => rng.pick(syllables)).join(" ");
    let size = rng.int(1, 50);
    let container = CONTAINERS.map((words) => rng.pick(words)).join(" ");
    if (p % 25 === 0) [brand, container, size] = ["Brand#23", "MED BOX", rng.int(1, 10)];
    if (p % 25 === 1) [type, size] = [`${rng.pick(TYPES[0]!)} ${rng.pick(TYPES[1]!)} BRASS`, 15];
    if (p % 25 === 2) type = "ECONOMY ANODIZED STEEL";
    if (p % 25 === 3) name = `forest ${name}`;
    parts.push({
      p_partkey: p,
      p_name: name,
      p_mfgr: `Manufacturer#${m}`,
      p_brand: brand,
      p_type: type,
      p_size: size,
      p_container: container,
      p_retailprice: ((90000 + ((p / 10) % 20001) + 100 * (p % 1000)) / 100).toFixed(2),
      p_comment: null,
    });
    const chosen = new Set<number>();
    for (let i = 0; i < 4; i++) {
      const supplier = ((p + i * (Math.floor(s / 4) + Math.floor((p - 1) / s))) % s) + 1;
      if (chosen.has(supplier)) continue;
      chosen.add(supplier);
      const list = state.partsBySupplier.get(supplier) ?? [];
      list.push(p);
      state.partsBySupplier.set(supplier, list);
      partsupp.push({
        ps_partkey: p,
        ps_suppkey: supplier,
        ps_availqty: rng.int(1, 9999),
        ps_supplycost: money(rng, 1, 1000),
        ps_comment: null,
      });
    }
  }
  await insertRows(sql, "part", parts);
  await insertRows(sql, "partsupp", partsupp);
}

/** Creates and fills the TPC-H tables deterministically from `rng`. */
export async function createTpch(sql: Sql, rng: Rng, scale: TpchScale): Promise<TpchState> {
  await sql.unsafe(SCHEMA);
  await insertRows(sql, "region", REGIONS.map((r, i) => ({ r_regionkey: i, r_name: r, r_comment: null })));
  await insertRows(
    sql,
    "nation",
    NATIONS.map(([n, r], i) => ({ n_nationkey: i, n_name: n, n_regionkey: r, n_comment: null })),
  );
  const state: TpchState = {
    nextOrderKey: scale.orders + 1,
    scale,
    customerNation: [],
    suppliersByNation: new Map(),
    partsBySupplier: new Map(),
  };
  const suppliers: Row[] = [];
  for (let s = 1; s <= scale.suppliers; s++) {
    // Round robin rather than random: every nation a query names has a supplier at a small scale.
    const nation = (s - 1) % 25;
    state.suppliersByNation.set(nation, (state.suppliersByNation.get(nation) ?? []).concat(s));
    suppliers.push({
      s_suppkey: s,
      s_name: `Supplier#${String(s).padStart(9, "0")}`,
      s_address: `addr ${rng.int(1, 99999)}`,
      s_nationkey: nation,
      s_phone: phone(rng, nation),
      s_acctbal: money(rng, -999, 9999),
      // Q16 leaves out suppliers with complaints.
      s_comment: s % 7 === 0 ? "Customer noted Complaints" : "reliable supplier",
    });
  }
  await insertRows(sql, "supplier", suppliers);
  await insertParts(sql, rng, state);
  const customers: Row[] = [];
  for (let c = 1; c <= scale.customers; c++) {
    const nation = rng.int(0, 24);
    state.customerNation[c] = nation;
    customers.push({
      c_custkey: c,
      c_name: `Customer#${String(c).padStart(9, "0")}`,
      c_address: `street ${rng.int(1, 99999)}`,
      c_nationkey: nation,
      c_phone: phone(rng, nation),
      c_acctbal: money(rng, -999, 9999),
      c_mktsegment: rng.pick(SEGMENTS),
      c_comment: rng.chance(0.5) ? "regular" : "special requests",
    });
  }
  await insertRows(sql, "customer", customers);
  const orders: Row[] = [];
  const lines: Row[] = [];
  for (let o = 1; o <= scale.orders; o++) {
    const made = makeOrder(rng, o, state);
    orders.push(made.order);
    lines.push(...made.lines);
  }
  await insertRows(sql, "orders", orders);
  await insertRows(sql, "lineitem", lines);
  await sql`ANALYZE`;
  return state;
}

/** One random change to orders and lineitems (new orders, edits of prices, dates, flags, keys, deletions). */
export async function randomTpchChange(sql: Sql | Tx, rng: Rng, state: TpchState): Promise<void> {
  const key = rng.int(1, state.nextOrderKey - 1);
  switch (rng.int(0, 14)) {
    case 0:
    case 1: {
      const made = makeOrder(rng, state.nextOrderKey++, state);
      await insertRows(sql, "orders", [made.order]);
      await insertRows(sql, "lineitem", made.lines);
      return;
    }
    case 2:
      await sql`UPDATE lineitem SET l_quantity = ${rng.int(1, 50)}, l_discount = ${rng.int(0, 10) / 100},
        l_extendedprice = l_extendedprice + ${rng.int(-500, 500)} WHERE l_orderkey = ${key}`;
      return;
    case 3:
      await sql`UPDATE lineitem SET l_shipdate = l_shipdate + ${rng.int(-200, 200)}::int,
        l_returnflag = ${rng.pick(["R", "A", "N"])}, l_shipmode = ${rng.pick(SHIPMODES)}
        WHERE l_orderkey = ${key} AND l_linenumber = ${rng.int(1, 3)}`;
      return;
    case 4:
      await sql`UPDATE orders SET o_orderdate = o_orderdate + ${rng.int(-365, 365)}::int,
        o_orderpriority = ${rng.pick(PRIORITIES)} WHERE o_orderkey = ${key}`;
      return;
    case 5: // a join key
      await sql`UPDATE orders SET o_custkey = ${rng.int(1, state.scale.customers)} WHERE o_orderkey = ${key}`;
      await sql`UPDATE lineitem SET l_suppkey = ${rng.int(1, state.scale.suppliers)}
        WHERE l_orderkey = ${rng.int(1, state.nextOrderKey - 1)}`;
      return;
    case 6:
      await sql`DELETE FROM lineitem WHERE l_orderkey = ${key}`;
      await sql`DELETE FROM orders WHERE o_orderkey = ${key}`;
      return;
    case 7: {
      const part = rng.int(1, state.scale.parts);
      await sql`UPDATE partsupp SET ps_supplycost = ${money(rng, 1, 1000)}, ps_availqty = ${rng.int(1, 9999)}
        WHERE ps_partkey = ${part}`;
      return;
    }
    case 8:
      await sql`UPDATE part SET p_size = ${rng.int(1, 50)}, p_type = ${TYPES.map((x) => rng.pick(x)).join(" ")}
        WHERE p_partkey = ${rng.int(1, state.scale.parts)}`;
      return;
    case 9: // an air delivery in person of a Brand#23 MED BOX part (insertParts), which Q19 selects
      await sql`UPDATE lineitem SET l_shipmode = 'AIR', l_shipinstruct = 'DELIVER IN PERSON', l_quantity = ${
        rng.int(5, 25)
      } WHERE l_partkey % 25 = 0 AND l_orderkey = (SELECT min(l_orderkey) FROM lineitem
        WHERE l_orderkey >= ${key} AND l_partkey % 25 = 0)`;
      return;
    case 10: // a price change on a shipment from France to Germany, which Q7 selects
      await sql`UPDATE lineitem SET l_extendedprice = l_extendedprice + ${rng.int(1, 100)}
        WHERE (l_orderkey, l_linenumber) = (SELECT l_orderkey, l_linenumber
          FROM lineitem JOIN supplier ON s_suppkey = l_suppkey JOIN nation n1 ON n1.n_nationkey = s_nationkey
            JOIN orders ON o_orderkey = l_orderkey JOIN customer ON c_custkey = o_custkey
            JOIN nation n2 ON n2.n_nationkey = c_nationkey
          WHERE n1.n_name = 'FRANCE' AND n2.n_name = 'GERMANY' AND l_orderkey >= ${key}
          ORDER BY l_orderkey, l_linenumber LIMIT 1)`;
      return;
    case 11: // a supplier moves out of its nation and back: Q20 lists Canada's suppliers of forest parts, Q21 Saudi
    case 12: { // Arabia's who kept orders waiting, Q2 Europe's cheapest (ARGENTINA, where they go, is in none of these)
      const name = rng.pick(["CANADA", "SAUDI ARABIA", "FRANCE", "GERMANY", "ROMANIA", "RUSSIA", "UNITED KINGDOM"]);
      const nation = NATIONS.findIndex(([n]) => n === name);
      const supplier = state.suppliersByNation.get(nation)?.[0];
      if (supplier === undefined) return;
      await sql`UPDATE supplier SET s_nationkey = CASE WHEN s_nationkey = ${nation}::int THEN 1 ELSE ${nation}::int END
        WHERE s_suppkey = ${supplier}`;
      return;
    }
    case 13: // an order of six or seven lines gets 50 of each: Q18 lists orders of more than 250 items
      await sql`UPDATE lineitem SET l_quantity = 50 WHERE l_orderkey = (SELECT l_orderkey FROM lineitem
        WHERE l_orderkey >= ${key} GROUP BY l_orderkey HAVING count(*) >= 6 ORDER BY 1 LIMIT 1)`;
      return;
    default: {
      const customer = rng.int(1, state.scale.customers);
      const nation = rng.int(0, 24);
      state.customerNation[customer] = nation;
      await sql`UPDATE customer SET c_mktsegment = ${rng.pick(SEGMENTS)}, c_nationkey = ${nation},
        c_acctbal = ${money(rng, -999, 9999)}, c_phone = ${phone(rng, nation)} WHERE c_custkey = ${customer}`;
    }
  }
}
