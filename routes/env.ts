/** The context variables every route and middleware of the app may read. */
import type { Context } from "hono";
import type { RequestIdVariables } from "hono/request-id";

export interface AppEnv {
  Variables: RequestIdVariables & {
    /** The managed database the request works on, once a route has chosen it (named in 503 DatabaseUnavailable). */
    database?: string;
  };
}

/** The request id for a problem body: every problem names its request, as the x-request-id header does. */
export function requestIds(c: Context<AppEnv>): { request_id?: string } {
  const id = c.get("requestId");
  return id === undefined ? {} : { request_id: id };
}
