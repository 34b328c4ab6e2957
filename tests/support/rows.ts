/** Small helpers for reading query results in tests. */

/** The first row; fails the test when there is none. */
export function one<T>(rows: readonly T[]): T {
  if (rows.length === 0) throw new Error("expected a row, got none");
  return rows[0]!;
}
