/**
 * @switchboard-iot/device: the Switchboard device SDK for Node.js (18+).
 * See README.md, and docs/protocol.md in the Switchboard repository for
 * the protocol it speaks.
 */
export { Client, nextStep } from "./client";
export type { CommandContext, Config, DesiredHandler, Handler, NextStep } from "./client";
export {
  DeadlineExceededError,
  DialError,
  FrameError,
  NotConnectedError,
  PinMismatchError,
  ReplacedError,
  SessionClosedError,
  SessionEndedError,
  UnauthorizedError,
  // The Go SDK's names (ErrUnauthorized, ErrReplaced), for `err instanceof Unauthorized`.
  UnauthorizedError as Unauthorized,
  ReplacedError as Replaced,
} from "./errors";
export { consoleLogger, withFields } from "./logger";
export type { Level, Logger } from "./logger";
export {
  clockSkew,
  CloseCode,
  DEADLINE_PASSED,
  ErrorCode,
  MAX_FRAME,
  MAX_STATE,
  parseDuration,
  rebalanceDelay,
  retryAfter,
  SUBPROTOCOL,
  unstorable,
  validName,
} from "./protocol";
export { Backoff, ceiling, sleep } from "./backoff";
export { Dedup } from "./dedup";
export { fingerprint, normalizePin, pemFingerprint, pinMatches } from "./tls";
