/**
 * A small, deterministic TPC-H data generator (the tables Q1, Q3, Q5, Q6, Q10 and Q12 read), seeded, plus random
 * order and lineitem changes for the oracle. Value distributions follow the TPC-H specification loosely: dates in
 * 1992-1998, discounts 0.00-0.10, taxes 0.00-0.08, quantities 1-50, the spec's segments, priorities and ship modes.
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
}

/** State the generators need: the next free order key, customers' nations, suppliers by nation. */
export interface TpchState {
  nextOrderKey: number;
  scale: TpchScale;
  customerNation: number[];
  suppliersByNation: Map<number, number[]>;
}

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
  CREATE INDEX ON lineitem (l_suppkey);
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
  const customer = rng.int(1, scale.customers);
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
    lines.push({
      l_orderkey: key,
      l_partkey: rng.int(1, 2000),
      l_suppkey: local.length > 0 && rng.chance(0.33) ? rng.pick(local) : rng.int(1, scale.suppliers),
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
    o_comment: `order ${key}`,
  };
  return { order, lines };
}

async function insertRows(sql: Sql | Tx, table: string, rows: Row[]): Promise<void> {
  for (let i = 0; i < rows.length; i += 1000) {
    const chunk = rows.slice(i, i + 1000);
    await sql`INSERT INTO ${sql(table)} ${sql(chunk as never)}`;
  }
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
  const state: TpchState = { nextOrderKey: scale.orders + 1, scale, customerNation: [], suppliersByNation: new Map() };
  const suppliers: Row[] = [];
  for (let s = 1; s <= scale.suppliers; s++) {
    const nation = rng.int(0, 24);
    state.suppliersByNation.set(nation, [...(state.suppliersByNation.get(nation) ?? []), s]);
    suppliers.push({
      s_suppkey: s,
      s_name: `Supplier#${String(s).padStart(9, "0")}`,
      s_address: `addr ${rng.int(1, 99999)}`,
      s_nationkey: nation,
      s_phone: phone(rng, nation),
      s_acctbal: money(rng, -999, 9999),
      s_comment: null,
    });
  }
  await insertRows(sql, "supplier", suppliers);
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
  switch (rng.int(0, 7)) {
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
    default: {
      const customer = rng.int(1, state.scale.customers);
      const nation = rng.int(0, 24);
      state.customerNation[customer] = nation;
      await sql`UPDATE customer SET c_mktsegment = ${rng.pick(SEGMENTS)}, c_nationkey = ${nation}
        WHERE c_custkey = ${customer}`;
    }
  }
}

/**
 * The queries, adapted only where the differential class requires: ORDER BY dropped (a table has no order) and
 * LIMIT dropped (Q3 and Q10 keep every group instead of the top 10/20). See docs/differential.md.
 */
export const TPCH_QUERIES: Record<string, string> = {
  q1: `SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base_price,
      sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
      sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
      avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price, avg(l_discount) AS avg_disc,
      count(*) AS count_order
    FROM lineitem
    WHERE l_shipdate <= date '1998-12-01' - interval '90 day'
    GROUP BY l_returnflag, l_linestatus`,
  q3: `SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, o_orderdate, o_shippriority
    FROM customer, orders, lineitem
    WHERE c_mktsegment = 'BUILDING' AND c_custkey = o_custkey AND l_orderkey = o_orderkey
      AND o_orderdate < date '1995-03-15' AND l_shipdate > date '1995-03-15'
    GROUP BY l_orderkey, o_orderdate, o_shippriority`,
  q5: `SELECT n_name, sum(l_extendedprice * (1 - l_discount)) AS revenue
    FROM customer, orders, lineitem, supplier, nation, region
    WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND l_suppkey = s_suppkey
      AND c_nationkey = s_nationkey AND s_nationkey = n_nationkey AND n_regionkey = r_regionkey
      AND r_name = 'ASIA' AND o_orderdate >= date '1994-01-01' AND o_orderdate < date '1994-01-01' + interval '1 year'
    GROUP BY n_name`,
  q6: `SELECT sum(l_extendedprice * l_discount) AS revenue
    FROM lineitem
    WHERE l_shipdate >= date '1994-01-01' AND l_shipdate < date '1994-01-01' + interval '1 year'
      AND l_discount BETWEEN 0.06 - 0.01 AND 0.06 + 0.01 AND l_quantity < 24`,
  q10: `SELECT c_custkey, c_name, sum(l_extendedprice * (1 - l_discount)) AS revenue, c_acctbal, n_name,
      c_address, c_phone, c_comment
    FROM customer, orders, lineitem, nation
    WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND o_orderdate >= date '1993-10-01'
      AND o_orderdate < date '1993-10-01' + interval '3 month' AND l_returnflag = 'R' AND c_nationkey = n_nationkey
    GROUP BY c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment`,
  q12: `SELECT l_shipmode,
      sum(CASE WHEN o_orderpriority = '1-URGENT' OR o_orderpriority = '2-HIGH' THEN 1 ELSE 0 END) AS high_line_count,
      sum(CASE WHEN o_orderpriority <> '1-URGENT' AND o_orderpriority <> '2-HIGH' THEN 1 ELSE 0 END)
        AS low_line_count
    FROM orders, lineitem
    WHERE o_orderkey = l_orderkey AND l_shipmode IN ('MAIL', 'SHIP') AND l_commitdate < l_receiptdate
      AND l_shipdate < l_commitdate AND l_receiptdate >= date '1994-01-01'
      AND l_receiptdate < date '1994-01-01' + interval '1 year'
    GROUP BY l_shipmode`,
};
