/**
 * The one place the version is read from (deno.json), and the one table relating releases to the catalog: each
 * release and the last migration its catalog has. A database's catalog is at the release of its newest migration.
 * `deno task check-version-sync` checks both against the rest of the repository (docs/RELEASING.md).
 */
import meta from "./deno.json" with { type: "json" };

export const VERSION: string = meta.version;

export interface Release {
  version: string;
  /** The newest migration (sql/migrations/NNNN_*.sql) of this release's catalog. */
  lastMigration: number;
}

/** Every release, oldest first; the last one is VERSION and ends at the newest migration file. */
export const RELEASES: readonly Release[] = [
  { version: "0.1.0", lastMigration: 3 },
  { version: "0.2.0", lastMigration: 7 },
];

/** The release that shipped migration `n`: the first whose catalog reaches it (VERSION for one not released yet). */
export function releaseOfMigration(n: number): string {
  return RELEASES.find((r) => r.lastMigration >= n)?.version ?? VERSION;
}
