/**
 * The client against a real TLS WebSocket server over loopback (test/harness.ts):
 * auth, commands, de-duplication on redelivery, state, close codes and
 * their waits, the watchdog, pinning and clean shutdown.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { afterEach, describe, it } from "node:test";
import {
  Client,
  type Config,
  DialError,
  FrameError,
  NotConnectedError,
  pemFingerprint,
  PinMismatchError,
  SessionEndedError,
  UnauthorizedError,
} from "../src";
import { certPEM, eventually, memoryLogger, RawTLSServer, TestNode } from "./harness";

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

async function startNode(cert: "a" | "b" = "a"): Promise<TestNode> {
  const node = await TestNode.start(cert);
  cleanups.push(() => node.close());
  return node;
}

/** A client of the node (not yet running), with small delays and a quiet logger. */
function newClient(url: string, extra: Partial<Config> = {}) {
  const mem = memoryLogger();
  const dialErrors: DialError[] = [];
  const client = new Client({
    url,
    id: "dev-1",
    secret: "s3cret",
    ca: certPEM("a"),
    minBackoff: 10,
    maxBackoff: 50,
    logger: mem.logger,
    onDialError: (err) => dialErrors.push(err),
    ...extra,
  });
  cleanups.push(() => client.stop());
  return { client, dialErrors, lines: mem.lines };
}

const command = (name: string, args: unknown = {}, id = randomUUID(), extra: object = {}) => ({ type: "command", id, name, args, ...extra });

describe("a session", () => {
  it("connects with Basic auth and switchboard.v1, answers commands sync and async, sends events, closes with 1000", async () => {
    const node = await startNode();
    const { client } = newClient(node.url);
    client.handle("echo", (args) => ({ echo: args }));
    client.handle("fail", () => {
      throw new Error("asked to fail");
    });
    client.handle("later", async (_args, { id }) => {
      await new Promise((r) => setTimeout(r, 20));
      client.event("did", { command: id });
      return { done: true };
    });
    assert.throws(() => client.event("early", {}), NotConnectedError);
    const run = client.run();
    const s = await node.next();
    assert.equal(s.req.headers.authorization, "Basic " + Buffer.from("dev-1:s3cret").toString("base64"));
    assert.equal(s.ws.protocol, "switchboard.v1");

    const echo = command("echo", { x: [1, "two"] });
    s.send(echo);
    assert.deepEqual(await s.next("reply"), { type: "reply", id: echo.id, ok: true, result: { echo: { x: [1, "two"] } } });
    const fail = command("fail");
    s.send(fail);
    assert.deepEqual(await s.next("reply"), { type: "reply", id: fail.id, ok: false, error: "asked to fail" });
    const unknown = command("nope");
    s.send(unknown);
    assert.deepEqual(await s.next("reply"), { type: "reply", id: unknown.id, ok: false, error: "unknown command nope" });
    const later = command("later");
    s.send(later);
    assert.deepEqual(await s.next(), { type: "event", name: "did", data: { command: later.id } });
    assert.deepEqual(await s.next(), { type: "reply", id: later.id, ok: true, result: { done: true } });

    // What it does not know it drops, and the session stays up: frames
    // of a newer protocol, fields it does not know, error frames, garbage.
    s.send("not json");
    s.send({ type: "error", error: "event: name must match", frame: "event" });
    s.send({ type: "from-the-future", x: 1 });
    const withDeadline = command("echo", {}, randomUUID(), { deadline: new Date(Date.now() + 60_000).toISOString(), priority: 3 });
    s.send(withDeadline);
    assert.equal((await s.next("reply")).id, withDeadline.id);
    s.send({ type: "ping" });
    assert.deepEqual(await s.next(), { type: "pong" });

    await client.stop();
    assert.deepEqual(await s.closed, { code: 1000, reason: "" });
    await run; // resolves: stopped
    assert.equal(node.requests.length, 1);
  });

  it("passes the deadline to the handler as an AbortSignal, and leaves a handler that gave up then unanswered", async () => {
    const node = await startNode();
    const { client } = newClient(node.url);
    let seen: Date | undefined;
    let gaveUp!: () => void;
    const gaveUpNow = new Promise<void>((resolve) => (gaveUp = resolve));
    client.handle("wait", (_args, { signal, deadline }) => {
      seen = deadline;
      return new Promise((_, reject) => signal.addEventListener("abort", () => { gaveUp(); reject(new Error("aborted")); }));
    });
    client.handle("echo", (args) => ({ echo: args }));
    void client.run();
    const s = await node.next();
    const deadline = new Date(Date.now() + 150);
    const cmd = command("wait", {}, randomUUID(), { deadline: deadline.toISOString() });
    s.send(cmd);
    await gaveUpNow;
    // The node fails the command at its deadline: the next reply is the next command's.
    const next = command("echo", { n: 1 }, randomUUID());
    s.send(next);
    assert.deepEqual(await s.next("reply"), { type: "reply", id: next.id, ok: true, result: { echo: { n: 1 } } });
    assert.equal(seen?.getTime(), deadline.getTime());
  });

  it("answers a command past its deadline without running it, by the node's clock", async () => {
    const node = await startNode();
    const nodeClock = -3_600_000; // the node's clock is an hour behind the device's
    node.headers = (headers) => headers.push(`Date: ${new Date(Date.now() + nodeClock).toUTCString()}`);
    const { client } = newClient(node.url);
    let runs = 0;
    client.handle("act", () => ++runs);
    void client.run();
    const s = await node.next();
    // Due in 5 s by the node's clock: by the device's it came an hour
    // early, not an hour late.
    const onTime = command("act", {}, randomUUID(), { deadline: new Date(Date.now() + nodeClock + 5000).toISOString() });
    s.send(onTime);
    assert.deepEqual(await s.next("reply"), { type: "reply", id: onTime.id, ok: true, result: 1 });
    const late = command("act", {}, randomUUID(), { deadline: new Date(Date.now() + nodeClock - 5000).toISOString() });
    s.send(late);
    assert.deepEqual(await s.next("reply"), { type: "reply", id: late.id, ok: false, error: "deadline passed" });
    s.send(late); // again: the same answer
    assert.deepEqual(await s.next("reply"), { type: "reply", id: late.id, ok: false, error: "deadline passed" });
    assert.equal(runs, 1);
  });

  it("refuses events the node would refuse, and reports the node's error frames", async () => {
    const node = await startNode();
    const refused: FrameError[] = [];
    const { client } = newClient(node.url, { onError: (err) => refused.push(err) });
    void client.run();
    const s = await node.next();
    assert.throws(() => client.event("bad name", {}), (err: FrameError) => err.code === "invalid-event-name");
    assert.throws(() => client.event("nul", { s: "a\u0000b" }), (err: FrameError) => err.code === "invalid-event-data");
    assert.throws(() => client.event("surrogate", { s: "\ud800" }), (err: FrameError) => err.code === "invalid-event-data");
    await eventually(() => client.connected, 5000, "the client to see its session open");
    client.event("fine", { s: "a\\u0000 written out, 😀" });
    assert.deepEqual(await s.next(), { type: "event", name: "fine", data: { s: "a\\u0000 written out, 😀" } });
    s.send({ type: "error", error: "invalid-event-name", message: "event: name must match", name: "x y" });
    await eventually(() => refused.length === 1, 5000, "the error frame");
    assert.equal(refused[0].code, "invalid-event-name");
    assert.equal(refused[0].eventName, "x y");
  });

  it("applies newer desired state only, and reports", async () => {
    const node = await startNode();
    const { client } = newClient(node.url);
    const applied: Array<[unknown, number]> = [];
    client.onDesired((desired, version) => {
      applied.push([desired, version]);
      client.report(desired);
    });
    assert.throws(() => client.report([1] as any), TypeError);
    assert.throws(() => client.report({ big: "x".repeat(33 << 10) }), RangeError);
    void client.run();
    const s = await node.next();
    s.send({ type: "state", desired: { target_celsius: 21 }, version: 2 });
    assert.deepEqual(await s.next(), { type: "report", reported: { target_celsius: 21 } });
    s.send({ type: "state", desired: { target_celsius: 5 }, version: 1 }); // older
    s.send({ type: "state", desired: { target_celsius: 5 }, version: 2 }); // the same again
    s.send({ type: "state", desired: [1], version: 9 }); // not an object
    s.send({ type: "state", desired: { mode: "cool" }, version: 3 });
    assert.deepEqual(await s.next(), { type: "report", reported: { mode: "cool" } });
    assert.deepEqual(applied, [
      [{ target_celsius: 21 }, 2],
      [{ mode: "cool" }, 3],
    ]);

    // On a new session the same version comes again: it is not applied twice.
    s.close(1001);
    const s2 = await node.next();
    s2.send({ type: "state", desired: { mode: "cool" }, version: 3 });
    s2.send({ type: "state", desired: { mode: "off" }, version: 4 });
    assert.deepEqual(await s2.next(), { type: "report", reported: { mode: "off" } });
    assert.equal(applied.length, 3);
  });
});

describe("redelivery", () => {
  it("does not run again a command still running, and answers a finished one with the same reply", async () => {
    const node = await startNode();
    const { client } = newClient(node.url);
    let runs = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    client.handle("slow", async () => {
      runs++;
      await gate; // ignores its signal: it outlives its session
      return { runs };
    });
    client.handle("echo", (args) => ({ echo: args }));
    void client.run();
    const cmd = command("slow");
    const s1 = await node.next();
    s1.send(cmd);
    await eventually(() => runs === 1, 5000, "the handler to start");
    s1.close(1011, "database unavailable");

    const s2 = await node.next();
    s2.send(cmd); // redelivered while the first run goes on
    const probe = command("echo");
    s2.send(probe); // frames are read in order: once this is answered, the redelivery was seen
    assert.equal((await s2.next("reply")).id, probe.id);
    assert.equal(runs, 1);

    release();
    assert.deepEqual(await s2.next("reply"), { type: "reply", id: cmd.id, ok: true, result: { runs: 1 } });
    s2.send(cmd); // redelivered once finished
    assert.deepEqual(await s2.next("reply"), { type: "reply", id: cmd.id, ok: true, result: { runs: 1 } });
    assert.equal(runs, 1);
  });

  it("runs again a command whose handler gave up when its session ended", async () => {
    const node = await startNode();
    const { client } = newClient(node.url);
    let runs = 0;
    const reasons: unknown[] = [];
    client.handle("abortable", async (_args, { signal }) => {
      runs++;
      if (runs === 1) {
        await new Promise((_, reject) =>
          signal.addEventListener("abort", () => {
            reasons.push(signal.reason);
            reject(signal.reason);
          }),
        );
      }
      return { runs };
    });
    void client.run();
    const cmd = command("abortable");
    const s1 = await node.next();
    s1.send(cmd);
    await eventually(() => runs === 1, 5000, "the handler to start");
    s1.close(1001, "draining");
    const s2 = await node.next();
    s2.send(cmd);
    assert.deepEqual(await s2.next("reply"), { type: "reply", id: cmd.id, ok: true, result: { runs: 2 } });
    assert.ok(reasons[0] instanceof SessionEndedError);
  });

  it("keeps a reply finished between sessions, and reports, for the next session", async () => {
    const node = await startNode();
    const { client, dialErrors } = newClient(node.url);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    client.handle("slow", async () => {
      await gate;
      return "finished";
    });
    void client.run();
    const cmd = command("slow");
    const s1 = await node.next();
    s1.send(cmd);
    let refusing = true;
    node.refuse = () => (refusing ? { status: 503 } : undefined);
    s1.close(1011);
    await eventually(() => dialErrors.length >= 1, 5000, "a refused connect");
    release();
    client.report({ celsius: 20.5 });
    const seen = dialErrors.length;
    await eventually(() => dialErrors.length > seen, 5000, "another refused connect"); // the reply is queued by now
    assert.equal(dialErrors[0].statusCode, 503);
    refusing = false;
    const s2 = await node.next();
    // (the report was queued first: the handler went on after release() returned)
    const frames = [await s2.next(), await s2.next()].sort((a, b) => a.type.localeCompare(b.type));
    assert.deepEqual(frames, [
      { type: "reply", id: cmd.id, ok: true, result: "finished" },
      { type: "report", reported: { celsius: 20.5 } },
    ]);
  });
});

describe("close codes and refusals", () => {
  it("stops with UnauthorizedError on 1008 device disabled, and on 401", async () => {
    for (const reason of ["device disabled", "device deleted"]) {
      const node = await startNode();
      const { client } = newClient(node.url);
      const run = client.run();
      (await node.next()).close(1008, reason);
      await assert.rejects(run, (err: Error) => err instanceof UnauthorizedError && err.message === reason);
      assert.equal(node.requests.length, 1, "no reconnect");
    }
    const node = await startNode();
    node.refuse = () => ({ status: 401 });
    const { client, dialErrors } = newClient(node.url);
    await assert.rejects(client.run(), UnauthorizedError);
    assert.equal(node.requests.length, 1, "no retry");
    assert.equal(dialErrors[0].statusCode, 401);
  });

  it("reconnects with backoff after 1001, 1008 (bad message), 1009, 1011, 1013, a dropped socket", async () => {
    const node = await startNode();
    const { client } = newClient(node.url, { minBackoff: 10, maxBackoff: 50 });
    void client.run();
    let s = await node.next();
    for (const code of [1001, 1008, 1009, 1011, 1013, 0]) {
      const t0 = Date.now();
      if (code === 0) s.ws.terminate();
      else s.close(code, code === 1008 ? "event: name must match" : "");
      s = await node.next();
      // backoff caps at 50 ms here; the rest is slack for a loaded machine
      assert.ok(s.openedAt - t0 < 3000, `after ${code}: reconnected in ${s.openedAt - t0} ms`);
    }
  });

  it("waits the delay a 1012 gives", async () => {
    const node = await startNode();
    const { client } = newClient(node.url);
    void client.run();
    const s = await node.next();
    const t0 = Date.now();
    s.close(1012, "600ms");
    const gap = (await node.next()).openedAt - t0;
    assert.ok(gap >= 600 && gap < 3000, `reconnected ${gap} ms after a 1012 "600ms"`);
  });

  it("waits replacedDelay/2 to replacedDelay after 4008", async () => {
    const node = await startNode();
    const disconnects: Error[] = [];
    const { client } = newClient(node.url, { replacedDelay: 800, onDisconnect: (err) => disconnects.push(err) });
    void client.run();
    const s = await node.next();
    const t0 = Date.now();
    s.close(4008, "replaced");
    const gap = (await node.next()).openedAt - t0;
    assert.ok(gap >= 400 && gap < 3000, `reconnected ${gap} ms after a 4008`);
    assert.equal(disconnects[0]?.name, "ReplacedError");
  });

  it("backs off at least 2·minBackoff after 4029", async () => {
    const node = await startNode();
    const { client } = newClient(node.url, { minBackoff: 300, maxBackoff: 2000 });
    void client.run();
    const s = await node.next();
    const t0 = Date.now();
    s.close(4029, "rate limited");
    const gap = (await node.next(5000)).openedAt - t0;
    assert.ok(gap >= 600, `reconnected ${gap} ms after a 4029`);
  });

  it("waits at least the Retry-After of a 429 or 503", async () => {
    for (const status of [429, 503]) {
      const node = await startNode();
      node.refuse = (n) => (n === 0 ? { status, headers: { "Retry-After": "1" } } : undefined);
      const { client, dialErrors } = newClient(node.url);
      void client.run();
      await node.next();
      const gap = node.requests[1].at - node.requests[0].at;
      assert.ok(gap >= 1000 && gap < 4000, `HTTP ${status}: retried after ${gap} ms`);
      assert.equal(dialErrors[0].retryAfterMs, 1000);
      await client.stop();
    }
  });
});

describe("the watchdog", () => {
  it("gives up a silent session and reconnects; pings keep a session alive", async () => {
    const node = await startNode();
    const { client } = newClient(node.url, { readTimeout: 1000 });
    void client.run();
    const s1 = await node.next();
    const t0 = Date.now();
    const closed = await s1.closed;
    assert.equal(closed.code, 1006, "dropped, not closed");
    assert.ok(Date.now() - t0 >= 900, `given up after ${Date.now() - t0} ms`);
    const s2 = await node.next();
    // Pinged every 100 ms, it stays for three read timeouts.
    const pinger = setInterval(() => s2.ws.ping(), 100);
    try {
      await new Promise((r) => setTimeout(r, 3000));
      assert.equal(s2.closedAt, 0, "a pinged session was given up");
    } finally {
      clearInterval(pinger);
    }
    await s2.closed;
  });
});

describe("TLS and pinning", () => {
  const pinA = pemFingerprint(certPEM("a"));
  const pinB = pemFingerprint(certPEM("b"));

  it("connects to the pinned certificate", async () => {
    const node = await startNode("a");
    const { client } = newClient(node.url, { pin: pinA.toLowerCase() });
    void client.run();
    await node.next();
  });

  it("sends nothing, not the credentials either, to a certificate other than the pinned one", async () => {
    const raw = await RawTLSServer.start("a");
    cleanups.push(() => raw.close());
    const { client, dialErrors } = newClient(raw.url, { pin: pinB });
    void client.run();
    await eventually(() => dialErrors.length >= 2, 5000, "two refused connects");
    await client.stop();
    assert.ok(dialErrors[0].cause instanceof PinMismatchError, String(dialErrors[0].cause));
    assert.ok(raw.connections >= 2);
    assert.equal(raw.received.length, 0, `sent ${JSON.stringify(raw.received.toString())}`);

    // The control: pinned right, the same server gets the request and its credentials.
    const right = newClient(raw.url, { pin: pinA, handshakeTimeout: 300 });
    void right.client.run();
    await eventually(() => raw.received.toString().includes("Authorization: Basic "), 5000, "the request");
  });

  it("refuses a certificate its CA does not vouch for; pinned, trusts that certificate whoever issued it", async () => {
    const node = await startNode("b");
    const untrusted = newClient(node.url); // trusts a, not b
    void untrusted.client.run();
    await eventually(() => untrusted.dialErrors.length >= 2, 5000, "two refused connects");
    await untrusted.client.stop();
    assert.match(untrusted.dialErrors[0].message, /self.signed|not trusted|unable to verify/i);
    assert.equal(node.requests.length, 0);

    const wrongPin = newClient(node.url, { pin: pinA });
    void wrongPin.client.run();
    await eventually(() => wrongPin.dialErrors.length >= 2, 5000, "two refused connects");
    await wrongPin.client.stop();
    assert.ok(wrongPin.dialErrors[0].cause instanceof PinMismatchError);
    assert.equal(node.requests.length, 0);

    // b's certificate, which the CA (a) does not vouch for, but pinned.
    const pinned = newClient(node.url, { pin: pinB });
    void pinned.client.run();
    await node.next();
  });
});

describe("stop", () => {
  it("ends a wait at once", async () => {
    const node = await startNode();
    node.refuse = () => ({ status: 503, headers: { "Retry-After": "60" } });
    const { client, dialErrors } = newClient(node.url);
    const run = client.run();
    await eventually(() => dialErrors.length === 1, 5000, "a refused connect");
    const t0 = Date.now();
    await client.stop();
    await run;
    assert.ok(Date.now() - t0 < 2000, `stopped in ${Date.now() - t0} ms (the wait was 60 s)`);
  });
});
