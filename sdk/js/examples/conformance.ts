/**
 * The conformance device (the contract all SDKs share: see
 * `switchboard conformance`): a device written with this SDK that the
 * suite drives through its scenarios. It reads the environment of
 * examples/env.ts, logs to stderr (one line per connect, disconnect with
 * its close code, and command), exits 3 when the node refuses it
 * (401, or 1008 device disabled / deleted), and 0 on SIGTERM.
 *
 *   node sdk/js/dist/examples/conformance.js
 */
import { setTimeout as delay } from "node:timers/promises";
import { Client, consoleLogger, type Level, UnauthorizedError } from "../src";
import { configFromEnv } from "./env";

const log = consoleLogger((process.env.SWITCHBOARD_LOG_LEVEL as Level | undefined) ?? "debug");
const client = new Client({ ...configFromEnv(), logger: log });

client.handle("echo", (args) => ({ echo: args }));

client.handle("fail", () => {
  throw new Error("asked to fail");
});

// An async handler whose effect (an event) shows how many times it ran: a
// redelivered command must not run it again. It gives up if its session
// ends (the signal aborts), before its effect: the redelivery runs it.
client.handle("work", async (args, { id, signal }) => {
  const ms = Number(args?.ms ?? 0);
  await delay(Number.isFinite(ms) && ms > 0 ? ms : 0, undefined, { signal });
  client.event("effect", { command: id });
  return { done: true };
});

client.handle("emit", (args) => {
  if (typeof args?.name !== "string") throw new Error('want args {"name": "...", "data": {...}}');
  client.event(args.name, args.data ?? {});
  return null;
});

// Apply the desired document (here: take it as it is) and report it, so
// that the delta becomes empty.
client.onDesired((desired, version) => {
  log.info("desired state", { version, desired });
  client.report(desired);
});

let stopping = false;
const stop = (signal: string) => {
  if (stopping) return;
  stopping = true;
  log.info("stopping", { signal });
  // Exit within 5 s whatever a handler does.
  setTimeout(() => process.exit(0), 4000).unref();
  void client.stop();
};
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));

client.run().then(
  () => process.exit(0),
  (err) => {
    log.error("stopped", { err });
    process.exit(err instanceof UnauthorizedError ? 3 : 1);
  },
);
