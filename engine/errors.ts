/**
 * Errors a caller is expected to catch, each with a stable `code` and the HTTP status it maps to.
 * The README lists every code; keep the two in step.
 */
export class TrickleError extends Error {
  readonly code: string;
  readonly status: number;
  readonly extra: Record<string, unknown>;

  constructor(code: string, status: number, message: string, extra: Record<string, unknown> = {}) {
    super(message);
    this.name = code;
    this.code = code;
    this.status = status;
    this.extra = extra;
  }
}

/** 400: a name that is not a plain identifier. */
export function invalidName(value: string, what = "name"): TrickleError {
  return new TrickleError(
    "InvalidName",
    400,
    `Invalid ${what} ${JSON.stringify(value)}: expected an identifier (letters, digits, "_" or "$", not starting ` +
      `with a digit, at most 63 bytes), optionally qualified as schema.table`,
  );
}

/** 400: a request that contradicts itself (e.g. two different databases named). */
export function badRequest(message: string): TrickleError {
  return new TrickleError("BadRequest", 400, message);
}

/** 400: a name in a schema that belongs to trickle or to PostgreSQL. */
export function reservedSchema(value: string, options: { what: string; schema: string }): TrickleError {
  return new TrickleError(
    "InvalidName",
    400,
    `Invalid ${options.what} ${JSON.stringify(value)}: schema "${options.schema}" is reserved (trickle's ` +
      `pgtrickle and pgtrickle_changes, and PostgreSQL's pg_catalog, information_schema, pg_toast and every ` +
      `other pg_* schema); use a schema of your own`,
  );
}

/** 400: a schedule that is neither a duration nor a cron expression. */
export function invalidSchedule(value: string, why: string): TrickleError {
  return new TrickleError("InvalidSchedule", 400, `Invalid schedule ${JSON.stringify(value)}: ${why}`);
}

/** 404: no such stream table in the database. */
export function streamTableNotFound(name: string, database: string): TrickleError {
  return new TrickleError(
    "StreamTableNotFound",
    404,
    `Stream table "${name}" does not exist in database "${database}"`,
  );
}

/** 404: the database is not one this service manages. */
export function databaseNotFound(name: string, managed: string[]): TrickleError {
  return new TrickleError(
    "DatabaseNotFound",
    404,
    `Database "${name}" is not managed by this service (managed: ${managed.map((d) => `"${d}"`).join(", ")})`,
  );
}

/** 503: a managed database cannot be reached (server down, connections refused, session ended); retry later. */
export function databaseUnavailable(name: string | undefined, reason: string): TrickleError {
  const which = name === undefined ? "The database" : `Database "${name}"`;
  return new TrickleError(
    "DatabaseUnavailable",
    503,
    `${which} is unavailable (${reason}); retry later`,
    name === undefined ? {} : { database: name },
  );
}

/** 409: a relation with that name already exists. */
export function streamTableExists(name: string): TrickleError {
  return new TrickleError("StreamTableAlreadyExists", 409, `A table or stream table named "${name}" already exists`);
}

/** 422: the defining query is not valid SQL for this database (syntax error, missing table, ...). */
export function invalidQuery(message: string, extra: Record<string, unknown> = {}): TrickleError {
  return new TrickleError("InvalidQuery", 422, message, extra);
}

/** 422: the query cannot be maintained in the requested mode. */
export function unsupportedQuery(reason: string): TrickleError {
  return new TrickleError(
    "UnsupportedQuery",
    422,
    `The query cannot be refreshed DIFFERENTIAL: ${reason}. Use refresh_mode AUTO or FULL.`,
    { reason },
  );
}

/** 422: a refresh failed on the data (the query is valid but errors on what the sources now hold). */
export function refreshFailed(message: string, sqlstate: string): TrickleError {
  return new TrickleError("RefreshFailed", 422, `The refresh failed: ${message}`, { sqlstate });
}

/** 409: a source of the stream table was dropped, renamed, or changed so that its defining query no longer fits. */
export function sourceChanged(message: string): TrickleError {
  return new TrickleError("SourceChanged", 409, message);
}

/** 409: the operation conflicts with the current state (a dependent stream table, a refresh in progress). */
export function conflict(code: string, message: string): TrickleError {
  return new TrickleError(code, 409, message);
}
