/** Tests that need no server: backoff, de-duplication, pins, delays. */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { describe, it } from "node:test";
import {
  Backoff,
  ceiling,
  Client,
  clockSkew,
  CloseCode,
  Dedup,
  DialError,
  fingerprint,
  nextStep,
  normalizePin,
  parseDuration,
  pemFingerprint,
  pinMatches,
  rebalanceDelay,
  retryAfter,
  UnauthorizedError,
  Unauthorized,
  unstorable,
} from "../src";
import { certPEM } from "./harness";

describe("backoff", () => {
  it("stays within [1, min(max, min·2^attempt)] and grows to max", () => {
    for (const [min, max] of [
      [10, 100],
      [500, 30_000], // the defaults
      [1, 3_600_000],
      [20_000, 300_000], // a large base must not overflow
    ]) {
      const b = new Backoff(min, max);
      for (let attempt = 0; attempt < 80; attempt++) {
        const c = ceiling(min, max, attempt);
        assert.ok(c >= min && c <= max, `ceiling(${min}, ${max}, ${attempt}) = ${c}`);
        const d = b.next();
        assert.ok(d >= 1 && d <= c, `attempt ${attempt}: ${d} outside [1, ${c}]`);
      }
      assert.equal(ceiling(min, max, 79), max);
    }
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6].map((a) => ceiling(500, 30_000, a)),
      [500, 1000, 2000, 4000, 8000, 16_000, 30_000],
    );
  });

  it("jitters fully: waits spread over the whole range", () => {
    const waits: number[] = [];
    for (let i = 0; i < 2000; i++) {
      const b = new Backoff(100, 2000);
      for (let a = 0; a < 5; a++) b.next();
      waits.push(b.next()); // attempt 5: ceiling 2000
    }
    waits.sort((x, y) => x - y);
    assert.ok(waits[0] < 100, `shortest wait ${waits[0]}: not full jitter`);
    assert.ok(waits[waits.length - 1] > 1900, `longest wait ${waits[waits.length - 1]}`);
    const median = waits[1000];
    assert.ok(median > 800 && median < 1200, `median ${median}: not uniform`);
  });

  it("starts small again after reset", () => {
    const b = new Backoff(100, 10_000, () => 0.999999);
    for (let i = 0; i < 10; i++) b.next();
    assert.equal(b.attempts(), 10);
    b.reset();
    assert.equal(b.next(), 100);
  });
});

describe("dedup", () => {
  it("remembers running and finished commands, and forgets on request", () => {
    const d = new Dedup(8);
    assert.deepEqual(d.begin("a"), { fresh: true });
    assert.deepEqual(d.begin("a"), { fresh: false, reply: undefined }, "a repeat while running is not fresh");
    d.finish("a", "reply-a");
    assert.deepEqual(d.begin("a"), { fresh: false, reply: "reply-a" }, "a repeat of a finished one gets its reply");
    d.begin("b");
    d.forget("b");
    assert.deepEqual(d.begin("b"), { fresh: true }, "a forgotten id runs again");
  });

  it("is bounded: the oldest id is forgotten first", () => {
    const d = new Dedup(2);
    d.begin("a");
    d.finish("a", "ra");
    d.begin("b");
    d.begin("c"); // evicts a
    assert.equal(d.length, 2);
    assert.deepEqual(d.begin("a"), { fresh: true });
    assert.deepEqual(d.begin("c"), { fresh: false, reply: undefined });
    d.finish("b", "rb"); // b was evicted by a: nothing to store
    assert.deepEqual(d.begin("b"), { fresh: true });
  });
});

describe("pin", () => {
  // As openssl x509 -noout -fingerprint -sha256 prints it: "8A:EF:…".
  const pinA = new X509Certificate(certPEM("a")).fingerprint256;

  it("reads fingerprints with or without colons, in any case", () => {
    const want = pinA.replace(/:/g, "");
    assert.equal(normalizePin(pinA), want);
    assert.equal(normalizePin(pinA.toLowerCase()), want);
    assert.equal(normalizePin(want.toLowerCase()), want);
    assert.throws(() => normalizePin("AB:CD"), RangeError);
    assert.throws(() => normalizePin("ZZ" + pinA.slice(2)), RangeError);
    assert.throws(() => new Client({ url: "wss://x/v1/connect", id: "d", secret: "s", pin: "nope" }), RangeError);
    assert.throws(() => new Client({ url: "ws://x/v1/connect", id: "d", secret: "s", pin: pinA }), TypeError);
  });

  it("matches the certificate's DER and only it", async () => {
    const { X509Certificate } = await import("node:crypto");
    const a = new X509Certificate(certPEM("a")).raw;
    const b = new X509Certificate(certPEM("b")).raw;
    assert.equal(fingerprint(a), pinA);
    assert.equal(pemFingerprint(certPEM("a")), pinA);
    assert.ok(pinMatches(a, normalizePin(pinA)));
    assert.ok(!pinMatches(b, normalizePin(pinA)));
  });
});

describe("delays", () => {
  it("reads Retry-After as seconds or a date, within 5 minutes", () => {
    const now = Date.parse("2026-01-01T00:00:00Z");
    assert.equal(retryAfter("3", now), 3000);
    assert.equal(retryAfter(undefined, now), 0);
    assert.equal(retryAfter("soon", now), 0);
    assert.equal(retryAfter("99999999999999999999", now), 5 * 60_000);
    assert.equal(retryAfter("Thu, 01 Jan 2026 00:00:07 GMT", now), 7000);
    assert.equal(retryAfter("Wed, 31 Dec 2025 00:00:07 GMT", now), 0);
  });

  it("finds what PostgreSQL cannot store in JSON.stringify's output", () => {
    assert.match(unstorable(JSON.stringify({ s: "a\u0000" }))!, /u0000/);
    assert.match(unstorable(JSON.stringify({ s: "\udc00" }))!, /surrogate/);
    assert.equal(unstorable(JSON.stringify({ s: "😀 \\u0000 \\ud800" })), undefined);
    assert.match(unstorable(JSON.stringify({ s: "\\\u0000" }))!, /u0000/);
  });

  it("takes the node's clock from its Date header when off by 2 s or more", () => {
    const now = Date.parse("2026-01-01T00:00:00Z");
    assert.equal(clockSkew(undefined, now), 0);
    assert.equal(clockSkew("Thu, 01 Jan 2026 00:00:01 GMT", now), 0);
    assert.equal(clockSkew("Thu, 01 Jan 2026 01:00:00 GMT", now), 3_600_000);
    assert.equal(clockSkew("Wed, 31 Dec 2025 23:59:50 GMT", now), -10_000);
  });

  it("reads the delay of a 1012's reason, within 10 minutes", () => {
    assert.equal(rebalanceDelay("30s"), 30_000);
    assert.equal(rebalanceDelay("reconnect in 1m30s"), 90_000);
    assert.equal(rebalanceDelay("250ms"), 250);
    assert.equal(rebalanceDelay("30h"), 10 * 60_000);
    assert.equal(rebalanceDelay(""), 1000);
    assert.equal(rebalanceDelay("rebalance"), 1000);
    assert.equal(parseDuration("1.5s"), 1500);
    assert.equal(parseDuration("-2s"), -2000);
    assert.equal(parseDuration("2"), undefined);
  });
});

describe("nextStep", () => {
  const opened = (code: number, reason = "", frames = 0) => ({ opened: true, code, reason, frames });
  const fresh = () => new Backoff(100, 2000, () => 0.5);

  it("stops on 401 and on 1008 device disabled or deleted, not on another 1008", () => {
    const refused = { opened: false, code: 1006, reason: "", frames: 0, dialErr: new DialError("u", new UnauthorizedError(), 401) };
    assert.ok(nextStep(refused, 0, fresh(), 60_000).stop instanceof Unauthorized);
    assert.ok(nextStep(opened(1008, "device disabled"), 0, fresh(), 60_000).stop instanceof UnauthorizedError);
    assert.ok(nextStep(opened(1008, "device deleted"), 0, fresh(), 60_000).stop instanceof UnauthorizedError);
    const bad = nextStep(opened(1008, "event: name must match"), 0, fresh(), 60_000);
    assert.equal(bad.stop, undefined);
    assert.equal(bad.why, "backoff");
  });

  it("waits the 1012's delay, and replacedDelay/2 to replacedDelay after 4008", () => {
    assert.equal(nextStep(opened(CloseCode.Rebalance, "30s"), 0, fresh(), 60_000).delay, 30_000);
    for (const r of [0, 0.5, 0.999999]) {
      const d = nextStep(opened(CloseCode.Replaced), 0, fresh(), 60_000, () => r).delay;
      assert.ok(d >= 30_000 && d <= 60_000, `4008: ${d}`);
    }
  });

  it("after 4029 waits at least 2·min, more as it repeats, however long the session lasted", () => {
    const b = new Backoff(100, 100_000, () => 0);
    assert.ok(nextStep(opened(CloseCode.RateLimited, "", 5), 0, b, 60_000).delay >= 200);
    const high = new Backoff(100, 100_000, () => 0.999999);
    const waits = [1, 2, 3, 4].map(() => nextStep(opened(CloseCode.RateLimited, "", 5), 200_000, high, 60_000).delay);
    assert.deepEqual(waits, [200, 200, 400, 800]);
  });

  it("honours Retry-After, backs off for everything else, and resets after a healthy session", () => {
    const busy = { opened: false, code: 1006, reason: "", frames: 0, dialErr: new DialError("u", new Error("HTTP 429"), 429, 3000) };
    assert.ok(nextStep(busy, 0, fresh(), 60_000).delay >= 3000);
    for (const code of [1001, 1006, 1009, 1011, 1013, 4000]) {
      const d = nextStep(opened(code), 0, fresh(), 60_000).delay;
      assert.ok(d >= 1 && d <= 100, `${code}: ${d}`);
    }
    const b = new Backoff(100, 2000, () => 0.999999);
    for (let i = 0; i < 5; i++) nextStep(opened(1006), 0, b, 60_000);
    assert.equal(b.attempts(), 5);
    nextStep(opened(1006, "", 3), 0, b, 60_000); // it got frames: reset, then one more
    assert.equal(b.attempts(), 1);
    nextStep(opened(1006), 2000, b, 60_000); // it lasted maxBackoff
    assert.equal(b.attempts(), 1);
  });
});
