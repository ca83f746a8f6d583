/**
 * The device wire protocol (docs/protocol.md; device/protocol in Go): one
 * JSON object per WebSocket text frame, told apart by its "type" field.
 */

/** Offered by devices and accepted by the connection nodes. */
export const SUBPROTOCOL = "switchboard.v1";

/** Close codes the nodes send, and 1000, which a device sends on a clean shutdown. */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001, // node draining: reconnect (to any node)
  BadMessage: 1008, // a frame that broke the protocol, or the device was disabled or deleted (the reason says which)
  TooBig: 1009, // frame larger than the node's limit
  InternalError: 1011, // the node cannot serve the session now: reconnect later
  Rebalance: 1012, // reconnect after the delay given in the reason ("30s")
  TryAgainLater: 1013, // the device did not read its frames fast enough
  Replaced: 4008, // a newer session of the same device took over: wait long
  RateLimited: 4029, // the device sent faster than its rate for too long: reconnect later, slower
} as const;

/** Frames are at most 64 KiB; desired and reported documents at most 32 KiB. */
export const MAX_FRAME = 64 << 10;
export const MAX_STATE = 32 << 10;

const namePattern = /^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$/;

/** Whether s can name a command or an event. */
export function validName(s: unknown): s is string {
  return typeof s === "string" && namePattern.test(s);
}

/** Error codes of error frames: why the node refused a frame without closing the session. */
export const ErrorCode = {
  InvalidEventName: "invalid-event-name",
  InvalidEventData: "invalid-event-data",
  UnknownType: "unknown-type",
} as const;

/** The error of the reply to a command that came after its deadline: its handler was not run. */
export const DEADLINE_PASSED = "deadline passed";

/**
 * Why PostgreSQL could not store JSON text that JSON.stringify wrote, or
 * undefined: the escape \u0000, or a lone surrogate (which JSON.stringify
 * writes as an escape; a pair it writes as is). The node refuses such a
 * frame: an event with an error frame, a reply or a report with 1008.
 */
export function unstorable(json: string): string | undefined {
  // an escape preceded by an even number of backslashes (none, or escaped ones)
  const m = /(?<!\\)(?:\\\\)*\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})/.exec(json);
  if (!m) return undefined;
  return m[1] === "0000" ? "\\u0000 cannot be stored: remove NUL characters" : "a lone surrogate cannot be stored";
}

/**
 * How far the node's clock (its Date header, read at local time now) is
 * ahead of the device's, in ms, or 0 when they agree within 2 s (a Date is
 * whole seconds) or there is no date. A command's deadline, by the node's
 * clock, less the skew is its deadline by the device's.
 */
export function clockSkew(date: string | undefined, now = Date.now()): number {
  if (!date) return 0;
  const at = Date.parse(date);
  if (Number.isNaN(at)) return 0;
  const skew = at - now;
  return Math.abs(skew) < 2000 ? 0 : skew;
}

/** Whether v is a JSON object (not an array, not null). */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The longest wait a Retry-After may ask for: a wrong header must not park a device for hours. */
export const MAX_RETRY_AFTER = 5 * 60_000;

/** Reads a Retry-After header (whole seconds, or an HTTP date) as ms, at most 5 minutes; 0 when absent. */
export function retryAfter(header: string | string[] | undefined, now = Date.now()): number {
  const v = (Array.isArray(header) ? header[0] : header)?.trim();
  if (!v) return 0;
  let ms = 0;
  if (/^\d+$/.test(v)) {
    ms = Number(v) * 1000;
  } else {
    const at = Date.parse(v);
    if (!Number.isNaN(at)) ms = at - now;
  }
  return Math.min(Math.max(ms, 0), MAX_RETRY_AFTER);
}

/** The longest delay a 1012 may ask for: a typo in a node ("30h" for "30m") must not park its devices for a day. */
export const MAX_REBALANCE_DELAY = 10 * 60_000;

const units: Record<string, number> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, "μs": 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses a Go duration ("30s", "1m30s", "1.5s", "250ms") into ms, or undefined. */
export function parseDuration(s: string): number | undefined {
  const m = /^([-+]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)$/.exec(s);
  if (!m) return s === "0" ? 0 : undefined;
  let total = 0;
  for (const part of m[2].matchAll(/(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)/g)) {
    total += Number(part[1]) * units[part[2]];
  }
  return m[1] === "-" ? -total : total;
}

/**
 * The delay a node gave with close code 1012, such as "30s" or "reconnect
 * in 30s", in ms, at most 10 minutes; absent or unreadable, a second.
 */
export function rebalanceDelay(reason: string): number {
  for (const field of reason.split(/\s+/)) {
    const d = parseDuration(field);
    if (d !== undefined && d > 0) return Math.min(d, MAX_REBALANCE_DELAY);
  }
  return 1000;
}

/** A command frame, as the SDK reads it. */
export interface CommandFrame {
  type: "command";
  id: string;
  name: string;
  args: unknown;
  /** When the sender stops waiting (RFC 3339), if the node said. */
  deadline?: string;
}

/** A state frame: the whole desired document and its version. */
export interface StateFrame {
  type: "state";
  desired: Record<string, unknown>;
  version: number;
}
