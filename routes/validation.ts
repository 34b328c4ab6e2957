/** Turns request validation failures into 400 problems that name each bad field. */
import type { Hook } from "@hono/zod-openapi";
import { requestIds } from "./env.ts";
import { problem, problemResponse } from "./problem.ts";

// deno-lint-ignore no-explicit-any
export const validationHook: Hook<any, any, any, any> = (result, c) => {
  if (result.success) return;
  const issues = result.error.issues.map((i) => ({
    path: i.path.join("."),
    message: i.message,
    ...("keys" in i ? { keys: (i as { keys: string[] }).keys } : {}),
  }));
  const detail = issues.map((i) => (i.path === "" ? i.message : `${i.path}: ${i.message}`)).join("; ");
  return problemResponse(
    problem("BadRequest", `Invalid ${result.target}: ${detail}`, { issues, ...requestIds(c) }),
  );
};
