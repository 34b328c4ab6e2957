/**
 * Creations interrupted by a crash. A creation holds a session advisory lock keyed by its stream table's id, on a
 * connection of its own, from before its catalog row is visible until it answers. An INITIALIZING stream table whose
 * lock is free was left by a creator that is gone (killed, crashed, lost its connection): its client never got a 201,
 * so the leader of the database removes it (storage, catalog row, capture no other stream table needs), and the same
 * name can be created again.
 */
import { connect, type Sql } from "../db/pool.ts";
import { displayName, quoteQualified } from "../db/identifiers.ts";
import { isPgError, LOCK_NOT_AVAILABLE } from "../db/errors.ts";
import { lockStreamTable } from "./catalog.ts";
import { removeCaptureIfUnused } from "./cdc.ts";
import type { DatabaseContext } from "./context.ts";

/** Advisory lock class of creations: (CREATION_LOCK, id) is held by the session creating stream table `id`. */
const CREATION_LOCK = 7_417_004;

/** A stream table id reserved for a creation, locked as "being created" until disposed. */
export interface Creation extends AsyncDisposable {
  pgtId: number;
}

/**
 * Reserves the next stream table id and takes its creation lock on a session of its own, held until the creation
 * is disposed (answered, failed or not). The id is taken before the catalog row exists, so the row is never visible
 * without its lock. The session is a one-connection client, not a connection reserved from the pool: postgres.js
 * 3.4.9 can strand a queued `reserve()` for ever when a pool connection closes meanwhile (porsager/postgres#1195),
 * which hung concurrent creations.
 */
export async function beginCreation(ctx: DatabaseContext): Promise<Creation> {
  const releaseSlot = await creationSlot(ctx.sql);
  const session = connect(ctx.url, { max: 1 });
  const close = async () => {
    await session.end({ timeout: 1 }).catch(() => {});
    releaseSlot();
  };
  try {
    const [row] = await session<{ id: number }[]>`
      SELECT nextval(pg_get_serial_sequence('pgtrickle.pgt_stream_tables', 'pgt_id'))::int8 AS id`;
    const pgtId = row!.id;
    await session`SELECT pg_advisory_lock(${CREATION_LOCK}, ${lockKey(pgtId)})`;
    // Closing the session releases the lock with it.
    return { pgtId, [Symbol.asyncDispose]: close };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Free creation slots of each pool, and the creations waiting for one. */
const slots = new WeakMap<Sql, { free: number; waiting: (() => void)[] }>();

/**
 * Waits until fewer creations than the pool has connections are in flight; returns the slot's release. Each
 * creation holds a session of its own beside its pool work: this bounds those extra connections.
 */
async function creationSlot(sql: Sql): Promise<() => void> {
  let s = slots.get(sql);
  if (s === undefined) {
    s = { free: Math.max(1, (sql.options.max ?? 10) - 1), waiting: [] };
    slots.set(sql, s);
  }
  const slot = s;
  if (slot.free > 0) slot.free--;
  else await new Promise<void>((resolve) => slot.waiting.push(resolve));
  let released = false;
  return () => {
    if (released) return;
    released = true;
    const next = slot.waiting.shift();
    if (next === undefined) slot.free++;
    else next();
  };
}

/** The int4 half of the two-key advisory lock; wrapping past 2^31 ids only risks a needless wait. */
function lockKey(pgtId: number): number {
  return pgtId % 2_147_483_647;
}

/**
 * Removes stream table `pgtId` when it is INITIALIZING and its creator is gone; returns whether it did. A query of
 * the dead creator may still be writing the storage (the server notices a vanished client only when it next
 * writes to it), so that backend is terminated first. When a lock cannot be had within a few seconds, nothing
 * changes and the next call tries again.
 */
export async function removeAbandonedCreation(ctx: DatabaseContext, pgtId: number): Promise<boolean> {
  let removed: { name: string; sources: number[] } | null;
  try {
    removed = await ctx.sql.begin(async (tx) => {
      const [free] = await tx<{ ok: boolean }[]>`
        SELECT pg_try_advisory_xact_lock(${CREATION_LOCK}, ${lockKey(pgtId)}) AS ok`;
      if (free?.ok !== true) return null; // its creator is still at work
      const [found] = await tx<{ relid: number; status: string }[]>`
        SELECT pgt_relid::int8 AS relid, status FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${pgtId}`;
      if (found === undefined || found.status !== "INITIALIZING") return null;
      await tx`SET LOCAL lock_timeout = '3s'`;
      // Only the service's own sessions (application_name trickle:<pid>) holding the storage are ended: with the
      // creator gone, they are its orphaned refresh. A user's session reading the empty table is waited for.
      await tx`
        SELECT pg_terminate_backend(l.pid, 3000) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.relation = ${found.relid} AND l.pid <> pg_backend_pid() AND a.application_name LIKE 'trickle:%'
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`;
      const st = await lockStreamTable(tx, pgtId);
      if (st === undefined || st.status !== "INITIALIZING") return null;
      const deps = await tx<{ relid: number }[]>`
        SELECT source_relid::int8 AS relid FROM pgtrickle.pgt_dependencies WHERE pgt_id = ${pgtId}`;
      await tx`DELETE FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${pgtId}`;
      await removeCaptureIfUnused(tx, st.pgt_relid);
      const name = { schema: st.pgt_schema, name: st.pgt_name };
      // The name comes from the catalog, quoted.
      await tx.unsafe(`DROP TABLE IF EXISTS ${quoteQualified(name)}`);
      return { name: displayName(name), sources: deps.map((d) => d.relid) };
    });
  } catch (e) {
    if (isPgError(e) && e.code === LOCK_NOT_AVAILABLE) {
      ctx.log.info("an interrupted creation is still locked; removing it at the next tick", { pgt_id: pgtId });
      return false;
    }
    throw e;
  }
  if (removed === null) return false;
  for (const relid of removed.sources) await ctx.sql.begin((tx) => removeCaptureIfUnused(tx, relid));
  ctx.log.warn("removed a stream table whose creation was interrupted", {
    stream_table: removed.name,
    pgt_id: pgtId,
    reason: "the service instance creating it stopped before the creation finished; it can be created again",
  });
  return true;
}
