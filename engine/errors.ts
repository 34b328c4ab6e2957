/**
 * Every error code the service answers with: its HTTP status, a title, and a one-line meaning. A TrickleError is
 * built from a code of this table and takes its status from it; the README's Errors table is checked against it
 * (tests/error_codes_test.ts).
 */
export const ERROR_CODES = {
  BadRequest: { status: 400, title: "Bad request", meaning: "The request is malformed or contradicts itself" },
  InvalidName: {
    status: 400,
    title: "Invalid name",
    meaning: "A name is not an identifier or is in a reserved schema",
  },
  InvalidSchedule: { status: 400, title: "Invalid schedule", meaning: "A schedule is neither a duration nor a cron" },
  Unauthorized: { status: 401, title: "Unauthorized", meaning: "A bearer token is required and none was sent" },
  Forbidden: { status: 403, title: "Forbidden", meaning: "The bearer token does not allow this request" },
  NotFound: { status: 404, title: "Not found", meaning: "No such route" },
  StreamTableNotFound: { status: 404, title: "Stream table not found", meaning: "No stream table of that name" },
  DatabaseNotFound: { status: 404, title: "Database not found", meaning: "The database is not managed here" },
  SchemaNotFound: { status: 404, title: "Schema not found", meaning: "Creating in a schema that does not exist" },
  SnapshotNotFound: { status: 404, title: "Snapshot not found", meaning: "No snapshot of that name" },
  SnapshotSourceNotFound: { status: 404, title: "Snapshot source not found", meaning: "Restoring from no snapshot" },
  MethodNotAllowed: { status: 405, title: "Method not allowed", meaning: "The path exists, not with that method" },
  StreamTableAlreadyExists: { status: 409, title: "Already exists", meaning: "A relation of that name exists" },
  StreamTableHasDependents: { status: 409, title: "Has dependents", meaning: "Other stream tables read this one" },
  SourceChanged: { status: 409, title: "Source changed", meaning: "A source no longer fits the defining query" },
  RefreshInProgress: { status: 409, title: "Refresh in progress", meaning: "Another refresh holds the stream table" },
  StreamTableBusy: { status: 409, title: "Stream table busy", meaning: "A refresh held it past the wait; retry" },
  SnapshotAlreadyExists: { status: 409, title: "Snapshot exists", meaning: "The snapshot target is taken" },
  SnapshotSchemaVersionMismatch: {
    status: 409,
    title: "Snapshot schema version mismatch",
    meaning: "The snapshot was taken at another catalog schema version",
  },
  SnapshotHashMismatch: { status: 409, title: "Snapshot hash mismatch", meaning: "The snapshot's table was changed" },
  SnapshotIncompatible: { status: 409, title: "Snapshot incompatible", meaning: "The columns differ" },
  NoRecommendation: {
    status: 409,
    title: "No recommendation",
    meaning: "The planner has no recommendation to apply yet (too few refreshes: confidence 0)",
  },
  PayloadTooLarge: { status: 413, title: "Content too large", meaning: "The body is over the size limit" },
  UnsupportedMediaType: { status: 415, title: "Unsupported media type", meaning: "The body is not sent as JSON" },
  InvalidQuery: { status: 422, title: "Invalid query", meaning: "The defining query is not valid for the database" },
  RefreshFailed: { status: 422, title: "Refresh failed", meaning: "The query errors on what the sources now hold" },
  UnsupportedQuery: {
    status: 422,
    title: "Unsupported query",
    meaning: "The query cannot be refreshed differentially",
  },
  UnsupportedRefreshMode: { status: 422, title: "Unsupported refresh mode", meaning: "The mode is not available" },
  MetricsInvalid: {
    status: 500,
    title: "Metrics exposition invalid",
    meaning: "The /metrics body failed the service's own conformance check",
  },
  InternalError: { status: 500, title: "Internal error", meaning: "Anything else; the log has the detail" },
  DatabaseUnavailable: { status: 503, title: "Database unavailable", meaning: "The database cannot be reached" },
  Timeout: { status: 503, title: "Timeout", meaning: "The request ran past the time limit" },
} as const satisfies Record<string, { status: number; title: string; meaning: string }>;

/** A stable error code (a key of ERROR_CODES). */
export type ErrorCode = keyof typeof ERROR_CODES;

/** The constructor's arguments: `(code, message, extra?)`; the status comes from the table. */
type TrickleErrorArgs = {
  [C in ErrorCode]: [code: C, message: string, extra?: Record<string, unknown>];
}[ErrorCode];

/** Errors a caller is expected to catch, each with a stable `code`; the HTTP status comes from ERROR_CODES. */
export class TrickleError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly extra: Record<string, unknown>;

  constructor(...args: TrickleErrorArgs) {
    const [code, message, extra = {}] = args;
    super(message);
    this.name = code;
    this.code = code;
    this.status = ERROR_CODES[code].status;
    this.extra = extra;
  }
}

/** 400: a name that is not a plain identifier. */
export function invalidName(value: string, what = "name"): TrickleError {
  return new TrickleError(
    "InvalidName",
    `Invalid ${what} ${JSON.stringify(value)}: expected an identifier (letters, digits, "_" or "$", not starting ` +
      `with a digit, at most 63 bytes), optionally qualified as schema.table`,
  );
}

/** 400: a request that contradicts itself (e.g. two different databases named). */
export function badRequest(message: string): TrickleError {
  return new TrickleError("BadRequest", message);
}

/** 400: a name in a schema that belongs to trickle or to PostgreSQL. */
export function reservedSchema(value: string, options: { what: string; schema: string }): TrickleError {
  return new TrickleError(
    "InvalidName",
    `Invalid ${options.what} ${JSON.stringify(value)}: schema "${options.schema}" is reserved (trickle's ` +
      `pgtrickle and pgtrickle_changes, and PostgreSQL's pg_catalog, information_schema, pg_toast and every ` +
      `other pg_* schema); use a schema of your own`,
  );
}

/** 400: a schedule that is neither a duration nor a cron expression. */
export function invalidSchedule(value: string, why: string): TrickleError {
  return new TrickleError("InvalidSchedule", `Invalid schedule ${JSON.stringify(value)}: ${why}`);
}

/** 404: no such stream table in the database. */
export function streamTableNotFound(name: string, database: string): TrickleError {
  return new TrickleError("StreamTableNotFound", `Stream table "${name}" does not exist in database "${database}"`);
}

/** 404: the database is not one this service manages. */
export function databaseNotFound(name: string, managed: string[]): TrickleError {
  return new TrickleError(
    "DatabaseNotFound",
    `Database "${name}" is not managed by this service (managed: ${managed.map((d) => `"${d}"`).join(", ")})`,
  );
}

/** 404: creating in a schema that does not exist. */
export function schemaNotFound(schema: string): TrickleError {
  return new TrickleError("SchemaNotFound", `Schema "${schema}" does not exist`);
}

/** 503: a managed database cannot be reached (server down, connections refused, session ended); retry later. */
export function databaseUnavailable(name: string | undefined, reason: string): TrickleError {
  const which = name === undefined ? "The database" : `Database "${name}"`;
  return new TrickleError(
    "DatabaseUnavailable",
    `${which} is unavailable (${reason}); retry later`,
    name === undefined ? {} : { database: name },
  );
}

/** 409: a relation with that name already exists. */
export function streamTableExists(name: string): TrickleError {
  return new TrickleError("StreamTableAlreadyExists", `A table or stream table named "${name}" already exists`);
}

/** 409: other stream tables read this one, so it cannot be dropped. */
export function hasDependents(name: string, readers: string[]): TrickleError {
  return new TrickleError(
    "StreamTableHasDependents",
    `Stream table "${name}" is read by ${readers.map((r) => `"${r}"`).join(", ")}; drop those first`,
  );
}

/** 422: the defining query is not valid SQL for this database (syntax error, missing table, ...). */
export function invalidQuery(message: string, extra: Record<string, unknown> = {}): TrickleError {
  return new TrickleError("InvalidQuery", message, extra);
}

/** 422: the query cannot be maintained in the requested mode. */
export function unsupportedQuery(reason: string): TrickleError {
  return new TrickleError(
    "UnsupportedQuery",
    `The query cannot be refreshed DIFFERENTIAL: ${reason}. Use refresh_mode AUTO or FULL.`,
    { reason },
  );
}

/** 422: IMMEDIATE is refused before any work (describing or planning the query): no plan can make it available. */
export function immediateUnavailable(): TrickleError {
  return new TrickleError(
    "UnsupportedRefreshMode",
    "Refresh mode IMMEDIATE is not available yet; use AUTO, DIFFERENTIAL or FULL",
  );
}

/** 422: a refresh failed on the data (the query is valid but errors on what the sources now hold). */
export function refreshFailed(message: string, sqlstate: string): TrickleError {
  return new TrickleError("RefreshFailed", `The refresh failed: ${message}`, { sqlstate });
}

/** 409: a source of the stream table was dropped, renamed, or changed so that its defining query no longer fits. */
export function sourceChanged(message: string): TrickleError {
  return new TrickleError("SourceChanged", message);
}

/** 409: applying a recommendation the planner cannot stand behind (none yet, or confidence 0). */
export function noRecommendation(name: string, why: string): TrickleError {
  return new TrickleError(
    "NoRecommendation",
    `Stream table "${name}" has no recommendation to apply: ${why}`,
  );
}
