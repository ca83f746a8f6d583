/**
 * The environment the examples read (the conformance contract's names):
 * SWITCHBOARD_URL, SWITCHBOARD_DEVICE_ID, SWITCHBOARD_DEVICE_SECRET,
 * SWITCHBOARD_CA (a PEM file to trust instead of the system roots),
 * SWITCHBOARD_PIN (the node certificate's SHA-256), and the timings
 * SWITCHBOARD_MIN_BACKOFF_MS, SWITCHBOARD_MAX_BACKOFF_MS,
 * SWITCHBOARD_REPLACED_DELAY_MS, SWITCHBOARD_READ_TIMEOUT_MS.
 */
import type { Config } from "../src";

function need(name: string): string {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return v;
}

function ms(name: string): number | undefined {
  const v = process.env[name];
  if (!v) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) {
    console.error(`${name}=${v}: want a positive number of milliseconds`);
    process.exit(2);
  }
  return n;
}

/** The client's Config from the environment; exits with status 2 when something is missing. */
export function configFromEnv(): Config {
  return {
    url: need("SWITCHBOARD_URL"),
    id: need("SWITCHBOARD_DEVICE_ID"),
    secret: need("SWITCHBOARD_DEVICE_SECRET"),
    caFile: process.env.SWITCHBOARD_CA || undefined,
    pin: process.env.SWITCHBOARD_PIN || undefined,
    minBackoff: ms("SWITCHBOARD_MIN_BACKOFF_MS"),
    maxBackoff: ms("SWITCHBOARD_MAX_BACKOFF_MS"),
    replacedDelay: ms("SWITCHBOARD_REPLACED_DELAY_MS"),
    readTimeout: ms("SWITCHBOARD_READ_TIMEOUT_MS"),
  };
}
