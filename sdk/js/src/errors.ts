/**
 * The errors of the SDK. Their names mirror the Go SDK's (device/):
 * ErrUnauthorized is UnauthorizedError (also exported as Unauthorized),
 * ErrReplaced is ReplacedError (Replaced), ErrNotConnected NotConnectedError.
 */

/**
 * Ends run(): the node refused the credentials (HTTP 401), or closed the
 * session because the device was disabled or deleted (1008 with reason
 * `device disabled` / `device deleted`). Retrying with the same
 * credentials would not help.
 */
export class UnauthorizedError extends Error {
  override name = "UnauthorizedError";
  constructor(message = "device credentials refused") {
    super(message);
  }
}

/**
 * Ends a session that a newer session of the same device replaced (close
 * code 4008): run() waits replacedDelay, jittered, and tries again, in case
 * the other session was a ghost of this device's own past.
 */
export class ReplacedError extends Error {
  override name = "ReplacedError";
  constructor(message = "replaced by a newer session of the same device") {
    super(message);
  }
}

/** Thrown by event() while the device has no session. */
export class NotConnectedError extends Error {
  override name = "NotConnectedError";
  constructor(message = "not connected") {
    super(message);
  }
}

/**
 * An attempt to connect that failed. statusCode is the node's HTTP status
 * when it answered without upgrading (401, 429, 503), else 0; retryAfterMs
 * is how long its 429 or 503 asked the device to wait (its Retry-After, at
 * most 5 minutes), else 0; cause says why (an UnauthorizedError for a 401).
 */
export class DialError extends Error {
  override name = "DialError";
  readonly url: string;
  readonly statusCode: number;
  readonly retryAfterMs: number;
  override readonly cause: Error;
  constructor(url: string, cause: Error, statusCode = 0, retryAfterMs = 0) {
    super(statusCode ? `dial ${url}: HTTP ${statusCode}: ${cause.message}` : `dial ${url}: ${cause.message}`);
    this.url = url;
    this.cause = cause;
    this.statusCode = statusCode;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * How a session ended: the close code and reason the node sent (1006 when
 * the socket dropped without a close frame), and the error, if any, that
 * ended it.
 */
export class SessionClosedError extends Error {
  override name = "SessionClosedError";
  readonly code: number;
  readonly reason: string;
  constructor(code: number, reason: string, message?: string) {
    super(message ?? `session closed: ${code}${reason ? " " + reason : ""}`);
    this.code = code;
    this.reason = reason;
  }
}

/** A pinned certificate did not match: the credentials were not sent. */
export class PinMismatchError extends Error {
  override name = "PinMismatchError";
  readonly got: string;
  constructor(got: string) {
    super(`node certificate SHA-256 ${got} does not match the pin: credentials not sent`);
    this.got = got;
  }
}

/**
 * A frame of this device's that the node refused with an error frame,
 * keeping the session (`{"type":"error","error":"invalid-event-name",
 * "message":"…","name":"…"}`): an event it cannot take, or a frame type it
 * does not know. code is the frame's "error" (invalid-event-name,
 * invalid-event-data, unknown-type), name the refused event's name.
 * event() throws one, before sending, for an event the node would refuse.
 */
export class FrameError extends Error {
  override name = "FrameError";
  readonly code: string;
  readonly eventName?: string;
  constructor(code: string, message: string, eventName?: string) {
    super(eventName ? `${code} (event ${JSON.stringify(eventName)}): ${message}` : `${code}: ${message}`);
    this.code = code;
    this.eventName = eventName;
  }
}

/** The reason a command's AbortSignal fires when its deadline passes. */
export class DeadlineExceededError extends Error {
  override name = "DeadlineExceededError";
  constructor(message = "command deadline exceeded") {
    super(message);
  }
}

/** The reason a command's AbortSignal fires when its session ends or the client stops. */
export class SessionEndedError extends Error {
  override name = "SessionEndedError";
  constructor(message = "session ended") {
    super(message);
  }
}
