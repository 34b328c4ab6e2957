/** A query's plan as the planner makes it at creation, for tests of what is maintained and how. */
import { describeQuery } from "../../engine/query.ts";
import { planQuery } from "../../engine/refresh/differential/differential.ts";
import type { QueryPlan } from "../../engine/plan.ts";
import type { Sql } from "./oracle.ts";

/** Describes and plans `query` against the database, as creating a stream table does. */
export async function plan(sql: Sql, query: string): Promise<QueryPlan> {
  const description = await describeQuery(sql as never, query);
  return await planQuery(sql as never, { query, description });
}

/** The strategy of each block of a differential plan, in order. */
export function strategies(p: { differential: unknown }): string[] {
  return (p.differential as { blocks: { strategy: string }[] }).blocks.map((b) => b.strategy);
}
