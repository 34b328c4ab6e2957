/**
 * Pruning change buffers after refreshes (docs/architecture.md, frontiers): off the refresh's critical path.
 */
import { pruneBuffer } from "../cdc.ts";
import type { DatabaseContext } from "../context.ts";

/** How long after a refresh its prune starts: the refreshes of one source meanwhile share it. */
const PRUNE_DELAY_MS = 100;

/** Per database context: the prune running or due for each source relid. */
const pruning = new WeakMap<DatabaseContext, Map<number, { again: boolean; done: Promise<void> }>>();

/**
 * Buffer rows every consumer has passed are deleted after a refresh commits, off its critical path: the caller (an
 * HTTP request, a scheduler worker) does not wait. Per database, one prune per source runs at a time, shortly after
 * it is asked for (PRUNE_DELAY_MS), so that the refreshes of many stream tables over one source in a tick share one
 * prune; a request while one runs makes it run once more after, so the last refresh's frontier is always honoured.
 */
export function schedulePrune(ctx: DatabaseContext, sources: number[]): void {
  let running = pruning.get(ctx);
  if (running === undefined) pruning.set(ctx, running = new Map());
  const byRelid = running;
  for (const relid of sources) {
    const current = byRelid.get(relid);
    if (current !== undefined) {
      current.again = true;
      continue;
    }
    const state = { again: true, done: Promise.resolve() };
    state.done = (async () => {
      while (state.again) {
        await new Promise((r) => setTimeout(r, PRUNE_DELAY_MS));
        state.again = false;
        try {
          await ctx.sql.begin((tx) => pruneBuffer(tx, relid, ctx.settings));
        } catch (e) {
          ctx.log.warn("buffer prune failed", { source_relid: relid, error: e });
        }
      }
      byRelid.delete(relid);
    })();
    byRelid.set(relid, state);
  }
}

/** Resolves when no buffer prune is running or due in this database (the engine waits for it before closing). */
export async function prunesSettled(ctx: DatabaseContext): Promise<void> {
  const running = pruning.get(ctx);
  while (running !== undefined && running.size > 0) await Promise.all([...running.values()].map((s) => s.done));
}
