export { Client, Subscription } from "./client.js";
export type { Collection } from "./documents.js";
export type { Presence, Lock } from "./helpers.js";
export type { Sessions } from "./sessions.js";
export type { Streams, Stream, StreamWatch } from "./streams.js";
export type { Devices } from "./devices.js";
export { Backoff } from "./backoff.js";
export { ServerError, Disconnected, Failed, Conflict, LockTimeout, ClientError, classify } from "./errors.js";
export type * from "./types.js";
