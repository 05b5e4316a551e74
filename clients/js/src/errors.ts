/** What can go wrong, sorted into what the client does about it. */

export type Action = "retry" | "reauth" | "reject";

export class ClientError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The server answered with an error (a WebSocket ERROR frame or a REST {"error": ...}). */
export class ServerError extends ClientError {
  constructor(
    readonly code: string,
    readonly reason: string,
    readonly status?: number,
    readonly data: Record<string, any> = {},
  ) {
    super(`${code}: ${reason}`);
  }
  get action(): Action {
    return classify(this.code, this.status);
  }
}

/** The link dropped (or was not up) before an answer came: always retryable. */
export class Disconnected extends ClientError {
  readonly action: Action = "retry";
}

/** The client gave up: attempts used up, token refused, or disconnected for good by an operator. */
export class Failed extends ClientError {}

/** updateWithRetry still hit version conflicts after its last retry. */
export class Conflict extends ClientError {}

/** lock() could not acquire the lock within its timeout. */
/** A lock could not be had in time: who holds it, and until when (as the server said). */
export class LockTimeout extends ClientError {
  constructor(message: string, readonly holder: string | null = null, readonly expiresAt: string | null = null) {
    super(message);
  }
}

export function classify(code?: string | null, status?: number | null): Action {
  if (code === "unauthorized" || status === 401) return "reauth";
  if (code === "rate_limited" || code === "unavailable") return "retry";
  if (status != null && (status >= 500 || status === 408 || status === 429)) return "retry";
  return "reject";
}

export function actionOf(err: unknown): Action {
  return err instanceof ServerError ? err.action : "retry";
}
