/**
 * A stand-in connection node for the tests: a real TLS WebSocket server
 * (ws, over loopback) with two self-signed test certificates made when
 * the tests start (openssl, into a temporary folder: no key is kept in the
 * repository), which
 * records each upgrade request and session and lets a test answer a
 * connect with an HTTP status, send frames, and close with any code.
 */
import { once } from "node:events";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import * as os from "node:os";
import * as https from "node:https";
import type { IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import * as tls from "node:tls";
import { WebSocket, WebSocketServer } from "ws";

// Two certificates for localhost and 127.0.0.1, "a" and "b": the node's,
// and an impostor's for the pinning tests.
const fixtures = mkdtempSync(path.join(os.tmpdir(), "switchboard-sdk-js-"));
process.on("exit", () => rmSync(fixtures, { recursive: true, force: true }));
for (const name of ["a", "b"]) {
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
    "-subj", `/CN=switchboard-sdk-test-${name}`, "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-keyout", path.join(fixtures, `${name}-key.pem`), "-out", path.join(fixtures, `${name}-cert.pem`)], { stdio: "ignore" });
}
export const certPEM = (name: "a" | "b") => readFileSync(path.join(fixtures, `${name}-cert.pem`));
export const keyPEM = (name: "a" | "b") => readFileSync(path.join(fixtures, `${name}-key.pem`));

/** A queue whose shift() waits, up to a deadline, for the next item. */
export class Queue<T> {
  private items: T[] = [];
  private waiters: Array<(v: T) => void> = [];
  push(v: T): void {
    const w = this.waiters.shift();
    if (w) w(v);
    else this.items.push(v);
  }
  get length(): number {
    return this.items.length;
  }
  shift(timeoutMs = 5000, what = "an item"): Promise<T> {
    if (this.items.length > 0) return Promise.resolve(this.items.shift()!);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const waiter = (v: T) => {
        clearTimeout(timer);
        resolve(v);
      };
      this.waiters.push(waiter);
    });
  }
}

/** One upgraded session, seen from the node. */
export class Session {
  readonly frames = new Queue<any>();
  readonly closed: Promise<{ code: number; reason: string }>;
  readonly openedAt = Date.now();
  closedAt = 0;
  constructor(
    readonly ws: WebSocket,
    readonly req: IncomingMessage,
  ) {
    ws.on("message", (data) => this.frames.push(JSON.parse(data.toString())));
    this.closed = new Promise((resolve) =>
      ws.on("close", (code, reason) => {
        this.closedAt = Date.now();
        resolve({ code, reason: reason.toString() });
      }),
    );
  }
  send(frame: unknown): void {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }
  /** The next frame the device sent (of type, if given; others are dropped). */
  async next(type?: string, timeoutMs = 5000): Promise<any> {
    for (;;) {
      const f = await this.frames.shift(timeoutMs, `a ${type ?? "frame"} from the device`);
      if (!type || f.type === type) return f;
    }
  }
  close(code: number, reason = ""): void {
    this.ws.close(code, reason);
  }
}

/** What the node answers an upgrade request with, instead of upgrading. */
export type Refusal = { status: number; headers?: Record<string, string> } | undefined;

export class TestNode {
  readonly sessions = new Queue<Session>();
  /** Every upgrade request, with the time it came. */
  readonly requests: Array<{ req: IncomingMessage; at: number }> = [];
  /** Adds headers to each upgrade's 101 response. */
  headers: (headers: string[]) => void = () => undefined;
  /** Decides, per request (numbered from 0), whether to refuse it. */
  refuse: (n: number, req: IncomingMessage) => Refusal = () => undefined;
  private readonly wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    handleProtocols: (protocols) => (protocols.has("switchboard.v1") ? "switchboard.v1" : false),
  });

  private constructor(
    private readonly server: https.Server,
    readonly url: string,
  ) {
    this.wss.on("headers", (headers) => this.headers(headers));
    server.on("upgrade", (req: IncomingMessage, socket, head) => {
      const n = this.requests.length;
      this.requests.push({ req, at: Date.now() });
      const refusal = this.refuse(n, req);
      if (refusal) {
        const headers = Object.entries(refusal.headers ?? {})
          .map(([k, v]) => `${k}: ${v}\r\n`)
          .join("");
        socket.end(`HTTP/1.1 ${refusal.status} Refused\r\n${headers}Content-Length: 0\r\nConnection: close\r\n\r\n`);
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.sessions.push(new Session(ws, req)));
    });
  }

  static async start(cert: "a" | "b" = "a"): Promise<TestNode> {
    const server = https.createServer({ cert: certPEM(cert), key: keyPEM(cert) });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    return new TestNode(server, `wss://127.0.0.1:${port}/v1/connect`);
  }

  /** The next session the device opens. */
  next(timeoutMs = 5000): Promise<Session> {
    return this.sessions.shift(timeoutMs, "the device to connect");
  }

  async close(): Promise<void> {
    for (const ws of this.wss.clients) ws.terminate();
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

/**
 * A bare TLS server (no HTTP): it records every byte a client sends once
 * the handshake is done, to prove that a client refusing the certificate
 * sent nothing, not even its request line.
 */
export class RawTLSServer {
  received = Buffer.alloc(0);
  connections = 0;
  private constructor(
    private readonly server: tls.Server,
    readonly url: string,
  ) {}
  static async start(cert: "a" | "b"): Promise<RawTLSServer> {
    const server = tls.createServer({ cert: certPEM(cert), key: keyPEM(cert) });
    let self: RawTLSServer | undefined;
    server.on("connection", () => self && self.connections++);
    server.on("secureConnection", (socket) => {
      socket.on("data", (b: Buffer) => {
        if (self) self.received = Buffer.concat([self.received, b]);
      });
      socket.on("error", () => undefined);
    });
    server.on("tlsClientError", () => undefined);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    self = new RawTLSServer(server, `wss://127.0.0.1:${port}/v1/connect`);
    return self;
  }
  async close(): Promise<void> {
    await new Promise((resolve) => {
      this.server.close(resolve);
      // open sockets are the client's to drop; do not wait for them long
      setTimeout(resolve, 200).unref();
    });
  }
}

/** Resolves when cond() holds, polling every 10 ms; rejects after timeoutMs. */
export async function eventually(cond: () => boolean, timeoutMs = 5000, what = "a condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A logger that keeps its lines, for tests that look at what was logged (and keeps the output quiet). */
export function memoryLogger() {
  const lines: string[] = [];
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
    lines.push(`${level} ${msg} ${JSON.stringify(fields ?? {})}`);
  };
  return { lines, logger: { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") } };
}
