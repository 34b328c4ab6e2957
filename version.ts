/** The one place the version is read from: deno.json. */
import meta from "./deno.json" with { type: "json" };

export const VERSION: string = meta.version;
