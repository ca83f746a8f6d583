/**
 * The device client: it connects a device to a Switchboard connection node,
 * answers commands with registered handlers, sends events, takes desired
 * state and reports state, and reconnects with jittered exponential
 * backoff. The Go SDK (device/device.go) is the model: same names, same
 * semantics, as far as JavaScript allows.
 *
 *   const client = new Client({ url, id, secret, caFile });
 *   client.handle("reboot", async (args, { signal }) => { ... });
 *   await client.run(); // until stop(), or the credentials are refused
 */
import { readFileSync } from "node:fs";
import type * as tls from "node:tls";
import WebSocket from "ws";
import { Backoff, sleep } from "./backoff";
import { Dedup } from "./dedup";
import {
  DeadlineExceededError,
  DialError,
  FrameError,
  NotConnectedError,
  ReplacedError,
  SessionClosedError,
  SessionEndedError,
  UnauthorizedError,
} from "./errors";
import { consoleLogger, type Level, type Logger, withFields } from "./logger";
import {
  clockSkew,
  CloseCode,
  type CommandFrame,
  DEADLINE_PASSED,
  ErrorCode,
  isObject,
  MAX_FRAME,
  MAX_STATE,
  rebalanceDelay,
  retryAfter,
  SUBPROTOCOL,
  unstorable,
  validName,
} from "./protocol";
import { makeCreateConnection, normalizePin } from "./tls";

/** What a command handler is given besides the command's args. */
export interface CommandContext {
  /** The command's id (the same on a redelivery). */
  id: string;
  /** The command's name. */
  name: string;
  /**
   * Aborts when the command's deadline passes (reason: a
   * DeadlineExceededError), when the session that delivered it ends or the
   * client stops (reason: a SessionEndedError). A handler that gives up
   * when its session ends (throws once the signal aborted) is forgotten,
   * so that the redelivery on the next session runs it again; its other
   * errors become replies with ok false.
   */
  signal: AbortSignal;
  /** When the sender stops waiting, if the node said (the frame's `deadline`). */
  deadline?: Date;
}

/**
 * Answers one command: the value it returns (or resolves to) becomes the
 * reply's result, encoded as JSON; an error it throws (or rejects with)
 * becomes a reply with ok false and the error's message. Handlers may be
 * sync or async; several run at once.
 */
export type Handler = (args: any, ctx: CommandContext) => unknown;

/** Called with the device's desired state: the whole document and its version. */
export type DesiredHandler = (desired: Record<string, any>, version: number) => void | Promise<void>;

/** Says where and as whom to connect. Durations are in milliseconds. */
export interface Config {
  /** wss://host:8443/v1/connect */
  url: string;
  id: string;
  secret: string;
  /** Trusted CA certificates (PEM text): instead of the system roots. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** A PEM file of trusted CA certificates, read once by the constructor (when ca is not given). */
  caFile?: string;
  /**
   * The node certificate's SHA-256 fingerprint (`AB:CD:…`, colons optional,
   * any case), as the Go SDK's Config.Pin: the SDK then accepts that
   * certificate only, whoever issued it (its chain and names are not
   * checked: a self-signed node's, say), and refuses any other before
   * sending the credentials (a PinMismatchError).
   */
  pin?: string;
  /** More options for tls.connect (a client certificate, say). */
  tls?: tls.ConnectionOptions;
  /** Where the SDK logs; default consoleLogger(SWITCHBOARD_LOG_LEVEL or "info"), which writes to stderr. */
  logger?: Logger;

  /** 500: the first reconnect delay's cap. */
  minBackoff?: number;
  /** 30000: the largest reconnect delay's cap. */
  maxBackoff?: number;
  /**
   * 60000: the longest wait after another session of this device replaced
   * ours (4008); the wait is random between half of it and all of it, so
   * that two copies of one device do not trade places in step.
   */
  replacedDelay?: number;
  /** 60000: a node silent this long (no frame, no ping) is given up. */
  readTimeout?: number;
  /** 1024: recent command ids remembered, to answer a redelivery without re-running it. */
  dedup?: number;
  /** 10000: how long TCP, TLS and the upgrade may take. */
  handshakeTimeout?: number;

  /** Told of each session as it starts. */
  onConnect?: () => void;
  /** Told of each session as it ends: a SessionClosedError (code and reason), a ReplacedError, … */
  onDisconnect?: (err: Error) => void;
  /** Told of each attempt to connect that failed, before the wait that follows. */
  onDialError?: (err: DialError) => void;
  /** Told of each error frame the node sends (the SDK also logs them). */
  onError?: (err: FrameError) => void;
}

/** Replies and reports kept while there is no session; past it the oldest is dropped. */
const MAX_OUTBOX = 1024;

/** How long a clean shutdown waits for the node to answer its close frame. */
const CLOSE_GRACE = 2000;

/** How one session ended, for run() to choose the wait that follows. */
interface SessionEnd {
  /** The session was upgraded (else the attempt failed: dialErr). */
  opened: boolean;
  code: number;
  reason: string;
  /** Data frames read (a session that got frames was healthy). */
  frames: number;
  dialErr?: DialError;
  /** The watchdog gave the session up. */
  silent: boolean;
  err?: Error;
}

interface Running {
  controller: AbortController;
  sessionId: number;
  done: Promise<void>;
}

/** The wait run() chooses after a session, and whether to stop. */
export interface NextStep {
  stop?: Error;
  delay: number;
  why: string;
}

/**
 * nextStep chooses what run() does after a session ended: stop (401, or a
 * 1008 saying the device was disabled or deleted) or wait, and how long.
 * Exported for the tests.
 */
export function nextStep(
  end: { opened: boolean; code: number; reason: string; frames: number; dialErr?: DialError },
  lastedMs: number,
  retry: Backoff,
  replacedDelay: number,
  random: () => number = Math.random,
): NextStep {
  if (end.dialErr?.cause instanceof UnauthorizedError) {
    return { stop: end.dialErr.cause, delay: 0, why: "credentials refused (401)" };
  }
  if (
    end.opened &&
    end.code === CloseCode.BadMessage &&
    /\bdevice (disabled|deleted)\b/.test(end.reason)
  ) {
    return { stop: new UnauthorizedError(end.reason), delay: 0, why: end.reason };
  }
  const rateLimited = end.opened && end.code === CloseCode.RateLimited;
  // A session that lasted, or that the node spoke on, was healthy: the
  // next failure starts small again. Not after a 4029, however long it lasted.
  if (end.opened && !rateLimited && (lastedMs >= retry.max || end.frames > 0)) retry.reset();
  if (rateLimited) {
    // The device sent faster than its rate: never straight back, and later
    // with each 4029 in a row (the attempts are not reset).
    return { delay: Math.max(retry.next(), 2 * retry.min), why: "rate limited (4029)" };
  }
  if (end.opened) {
    switch (end.code) {
      case CloseCode.Replaced:
        return { delay: replacedDelay / 2 + Math.floor(random() * (replacedDelay / 2 + 1)), why: "replaced (4008)" };
      case CloseCode.Rebalance:
        return { delay: rebalanceDelay(end.reason), why: "rebalance (1012)" };
    }
  }
  const retryAfterMs = end.dialErr?.retryAfterMs ?? 0;
  if (retryAfterMs > 0) {
    // A node that turned us away (full, draining, throttling) said when
    // to come back: not before, and later still if it keeps refusing.
    return { delay: Math.max(retryAfterMs, retry.next()), why: `refused (HTTP ${end.dialErr?.statusCode}), Retry-After` };
  }
  return { delay: retry.next(), why: "backoff" };
}

/** One device's connection. Register handlers before run(). */
export class Client {
  private readonly cfg: Required<
    Pick<Config, "url" | "id" | "secret" | "minBackoff" | "maxBackoff" | "replacedDelay" | "readTimeout" | "dedup" | "handshakeTimeout">
  > &
    Config;
  private readonly log: Logger;
  private readonly handlers = new Map<string, Handler>();
  private readonly dedupIds: Dedup;
  private readonly ca?: string | Buffer | Array<string | Buffer>;
  private readonly pin?: string;
  private desiredHandler?: DesiredHandler;
  private desiredVersion = 0;

  /** Replies and reports not yet written, whichever session ran them. */
  private outbox: string[] = [];
  /** The current session's socket, once open; undefined between sessions. */
  private ws?: WebSocket;
  private sessionId = 0;
  /** The current session's clock skew (clockSkew), in ms. */
  private skew = 0;
  /** Command handlers running, by command id. A handler outlives the session that started it. */
  private readonly running = new Map<string, Running>();
  /** The commands delivered again while their first run went on, kept to be run if that run is interrupted. */
  private readonly pendingRedelivery = new Map<string, CommandFrame>();

  private runPromise?: Promise<void>;
  private stopController?: AbortController;
  /** The socket being connected, for stop() to drop. */
  private connecting?: WebSocket;
  private tlsSocket?: tls.TLSSocket;

  constructor(cfg: Config) {
    if (!cfg.url || !cfg.id) throw new TypeError("Config needs url and id");
    this.cfg = {
      ...cfg,
      minBackoff: cfg.minBackoff || 500,
      maxBackoff: cfg.maxBackoff || 30_000,
      replacedDelay: cfg.replacedDelay || 60_000,
      readTimeout: cfg.readTimeout || 60_000,
      dedup: cfg.dedup || 1024,
      handshakeTimeout: cfg.handshakeTimeout || 10_000,
    };
    if (this.cfg.maxBackoff < this.cfg.minBackoff) this.cfg.maxBackoff = this.cfg.minBackoff;
    this.ca = cfg.ca ?? (cfg.caFile ? readFileSync(cfg.caFile) : undefined);
    this.pin = cfg.pin ? normalizePin(cfg.pin) : undefined;
    if (this.pin && !cfg.url.startsWith("wss:")) throw new TypeError("a pin needs a wss:// url");
    const base = cfg.logger ?? consoleLogger((process.env.SWITCHBOARD_LOG_LEVEL as Level | undefined) ?? "info");
    this.log = withFields(base, { device: cfg.id });
    this.dedupIds = new Dedup(this.cfg.dedup);
  }

  /** Registers the handler for commands called name (replacing any). */
  handle(name: string, handler: Handler): this {
    if (!validName(name)) throw new RangeError(`command name ${JSON.stringify(name)} is not valid`);
    this.handlers.set(name, handler);
    return this;
  }

  /**
   * Registers the function called with the device's desired state: the
   * whole document and its version, on connect and on each change. Versions
   * come in increasing order; one not newer than the last is not passed
   * again, so the function may treat each call as "apply this". It runs as
   * the frame is read (a slow synchronous one delays commands).
   */
  onDesired(fn: DesiredHandler): this {
    this.desiredHandler = fn;
    return this;
  }

  /** Whether a session is open now. */
  get connected(): boolean {
    return this.ws !== undefined;
  }

  /**
   * Sends a JSON merge patch (RFC 7396) of the device's reported state:
   * {celsius: 20.5, old_key: null}. Like a reply it is kept until a session
   * writes it, whichever session that is, and the node stores it however
   * busy the database is. Throws if patch is not an object, is over 32 KiB,
   * or holds what PostgreSQL cannot store (\u0000, a lone surrogate): the
   * node would close the session.
   */
  report(patch: Record<string, unknown>): void {
    if (!isObject(patch)) throw new TypeError("report: the patch must be a JSON object");
    const reported = JSON.stringify(patch);
    if (Buffer.byteLength(reported) > MAX_STATE) throw new RangeError(`report: the patch is over ${MAX_STATE >> 10} KiB`);
    const why = unstorable(reported);
    if (why) throw new RangeError(`report: ${why}`);
    this.queue(`{"type":"report","reported":${reported}}`);
  }

  /**
   * Sends an event on the current session. Events are at most once: with
   * no session it throws NotConnectedError, and one written as the session
   * ends is lost (late telemetry is worth little; replies, which are kept,
   * are another matter). An event the node would refuse (a bad name, data
   * PostgreSQL cannot store) is not sent: it throws the FrameError the node
   * would have answered; over 64 KiB, a RangeError.
   */
  event(name: string, data?: unknown): void {
    if (!validName(name)) {
      throw new FrameError(ErrorCode.InvalidEventName, "event: name must be 1-128 letters, digits and _.:/-, starting with a letter or digit", String(name));
    }
    const frame = JSON.stringify({ type: "event", name, data: data === undefined ? null : data });
    const why = unstorable(frame);
    if (why) throw new FrameError(ErrorCode.InvalidEventData, `event ${name}: ${why}`, name);
    if (Buffer.byteLength(frame) > MAX_FRAME) throw new RangeError(`event ${name}: frame over ${MAX_FRAME >> 10} KiB`);
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) throw new NotConnectedError();
    ws.send(frame);
  }

  /**
   * Keeps the device connected until stop() (or signal) ends it, then
   * resolves; rejects with UnauthorizedError when the credentials are
   * refused (401) or the device was disabled or deleted. Between sessions
   * it waits with exponential backoff and full jitter (a random delay up
   * to min(maxBackoff, minBackoff·2^attempt)); after a 1012 the delay the
   * node gave; after a 4008 between replacedDelay/2 and replacedDelay;
   * after a 4029 at least 2·minBackoff (more with each in a row); after a
   * 429 or 503 at least its Retry-After. It settles once the command
   * handlers have.
   */
  run(signal?: AbortSignal): Promise<void> {
    if (this.runPromise) throw new Error("run: already running");
    this.stopController = new AbortController();
    if (signal) {
      if (signal.aborted) this.stopController.abort();
      else signal.addEventListener("abort", () => void this.stop(), { once: true });
    }
    this.runPromise = this.loop(this.stopController.signal).finally(() => {
      this.runPromise = undefined;
    });
    return this.runPromise;
  }

  /**
   * Clean shutdown: closes the session with 1000 (the node then removes
   * the device's presence at once), aborts the running handlers' signals,
   * and resolves once run() has ended (never rejects).
   */
  async stop(): Promise<void> {
    const run = this.runPromise;
    if (!this.stopController || this.stopController.signal.aborted) {
      await run?.catch(() => undefined);
      return;
    }
    this.stopController.abort();
    this.connecting?.terminate();
    this.tlsSocket?.destroy();
    const ws = this.ws;
    if (ws) {
      ws.close(CloseCode.Normal, "");
      // A node that does not answer the close frame is not waited for long.
      setTimeout(() => ws.terminate(), CLOSE_GRACE).unref();
    }
    await run?.catch(() => undefined);
  }

  private async loop(stop: AbortSignal): Promise<void> {
    const retry = new Backoff(this.cfg.minBackoff, this.cfg.maxBackoff);
    try {
      while (!stop.aborted) {
        const start = Date.now();
        const end = await this.session(stop);
        if (stop.aborted) {
          if (end.opened) this.log.info("disconnected", { code: end.code, reason: end.reason || undefined, why: "stopped" });
          break;
        }
        const step = nextStep(end, Date.now() - start, retry, this.cfg.replacedDelay);
        if (end.opened) {
          this.log.info("disconnected", {
            code: end.code,
            reason: end.reason || undefined,
            err: end.silent ? `no frame and no ping for ${this.cfg.readTimeout} ms` : undefined,
            reconnect_in_ms: step.stop ? undefined : step.delay,
            why: step.why,
          });
        } else {
          this.log.warn("connect failed", {
            err: end.dialErr?.cause.message,
            status: end.dialErr?.statusCode || undefined,
            retry_after_ms: end.dialErr?.retryAfterMs || undefined,
            reconnect_in_ms: step.stop ? undefined : step.delay,
          });
        }
        if (step.stop) {
          this.log.error("stopping: the node refused this device", { err: step.stop.message });
          throw step.stop;
        }
        if (!(await sleep(step.delay, stop))) break;
      }
    } finally {
      this.stopController?.abort();
      for (const r of this.running.values()) r.controller.abort(new SessionEndedError("client stopped"));
      await Promise.allSettled([...this.running.values()].map((r) => r.done));
    }
  }

  /** Runs one connection attempt and, if it is upgraded, the session. */
  private session(stop: AbortSignal): Promise<SessionEnd> {
    return new Promise<SessionEnd>((resolve) => {
      const url = this.cfg.url;
      const end: SessionEnd = { opened: false, code: 0, reason: "", frames: 0, silent: false };
      let status = 0;
      let retryAfterMs = 0;
      let skew = 0;
      const ws = new WebSocket(url, SUBPROTOCOL, {
        headers: { Authorization: "Basic " + Buffer.from(`${this.cfg.id}:${this.cfg.secret}`).toString("base64") },
        handshakeTimeout: this.cfg.handshakeTimeout,
        perMessageDeflate: false,
        maxPayload: 1 << 20,
        followRedirects: false,
        // For wss: the SDK opens TLS itself and checks the pin before the
        // request (and its Authorization header) is written.
        ...(url.startsWith("wss:")
          ? {
              createConnection: makeCreateConnection({
                ca: this.ca,
                pin: this.pin,
                tls: this.cfg.tls,
                timeoutMs: this.cfg.handshakeTimeout,
                track: (s) => (this.tlsSocket = s),
              }) as any,
            }
          : {}),
      });
      this.connecting = ws;
      const sessionId = ++this.sessionId;
      let watchdog: NodeJS.Timeout | undefined;
      const alive = () => watchdog?.refresh();

      ws.on("unexpected-response", (_req, res) => {
        // The node answered without upgrading: 401, 429, 503.
        status = res.statusCode ?? 0;
        if (status === 429 || status === 503) retryAfterMs = retryAfter(res.headers["retry-after"]);
        res.resume();
        ws.terminate();
      });
      ws.on("upgrade", (res) => {
        skew = clockSkew(res.headers.date);
      });
      ws.on("error", (err) => {
        end.err ??= err;
      });
      ws.on("open", () => {
        this.connecting = undefined;
        if (stop.aborted) {
          ws.close(CloseCode.Normal, "");
          return;
        }
        end.opened = true;
        this.ws = ws;
        this.skew = skew;
        this.log.info("connected", { url });
        watchdog = setTimeout(() => {
          end.silent = true;
          this.log.warn("the node is silent: giving the session up", { read_timeout_ms: this.cfg.readTimeout });
          ws.terminate();
        }, this.cfg.readTimeout);
        this.hook("onConnect", () => this.cfg.onConnect?.());
        this.flush();
      });
      ws.on("ping", alive);
      ws.on("pong", alive);
      ws.on("message", (data, isBinary) => {
        alive();
        end.frames++;
        this.onFrame(ws, sessionId, skew, data, isBinary);
      });
      ws.on("close", (code, reason) => {
        clearTimeout(watchdog);
        if (this.connecting === ws) this.connecting = undefined;
        if (this.ws === ws) this.ws = undefined;
        end.code = code;
        end.reason = reason.toString();
        // The handlers this session started are told it ended; one that
        // gives up is run again when the command is redelivered.
        for (const r of this.running.values()) {
          if (r.sessionId === sessionId) r.controller.abort(new SessionEndedError());
        }
        if (!end.opened) {
          let cause = end.err ?? new Error("connection closed before the upgrade");
          if (status === 401) cause = new UnauthorizedError();
          else if (status) cause = new Error(`HTTP ${status}`);
          end.dialErr = new DialError(url, cause, status, retryAfterMs);
          const dialErr = end.dialErr;
          if (!stop.aborted) this.hook("onDialError", () => this.cfg.onDialError?.(dialErr));
        } else {
          let err: Error = new SessionClosedError(end.code, end.reason);
          if (code === CloseCode.Replaced) err = new ReplacedError();
          this.hook("onDisconnect", () => this.cfg.onDisconnect?.(err));
        }
        resolve(end);
      });
    });
  }

  /** Calls a hook of the Config: one that throws is logged, not let loose on the socket's events. */
  private hook(name: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error(`${name} threw`, { err: err as Error });
    }
  }

  /** Handles one frame from the node. Frames it does not know are logged and dropped. */
  private onFrame(ws: WebSocket, sessionId: number, skew: number, data: WebSocket.RawData, isBinary: boolean): void {
    if (isBinary) {
      this.log.warn("ignoring a binary frame");
      return;
    }
    let msg: any;
    try {
      msg = JSON.parse(data.toString());
    } catch {
      this.log.warn("ignoring a frame that is not JSON");
      return;
    }
    if (!isObject(msg)) {
      this.log.warn("ignoring a frame that is not a JSON object");
      return;
    }
    switch (msg.type) {
      case "command":
        if (typeof msg.id !== "string" || msg.id === "" || !validName(msg.name)) {
          this.log.warn("ignoring a command without an id or a name");
          return;
        }
        this.dispatch(
          { type: "command", id: msg.id, name: msg.name, args: msg.args ?? {}, deadline: typeof msg.deadline === "string" ? msg.deadline : undefined },
          sessionId,
          skew,
        );
        return;
      case "state":
        this.onState(msg);
        return;
      case "ping":
        if (ws.readyState === WebSocket.OPEN) ws.send('{"type":"pong"}');
        return;
      case "pong":
        return;
      case "error": {
        // The node refused a frame of ours but kept the session.
        const fe = new FrameError(String(msg.error ?? ""), String(msg.message ?? ""), typeof msg.name === "string" ? msg.name : undefined);
        this.log.warn("the node refused a frame", { error: fe.code, message: msg.message, name: fe.eventName });
        this.hook("onError", () => this.cfg.onError?.(fe));
        return;
      }
      default:
        // A newer node's frame: v1 devices ignore what they do not know.
        this.log.debug("ignoring a frame of a type this SDK does not know", { type: msg.type });
    }
  }

  private onState(msg: Record<string, unknown>): void {
    const { desired, version } = msg;
    if (!isObject(desired) || typeof version !== "number" || !Number.isSafeInteger(version) || version < 1) {
      this.log.warn("ignoring a state frame without a desired object and a version");
      return;
    }
    if (!this.desiredHandler || version <= this.desiredVersion) return;
    this.desiredVersion = version;
    try {
      const p = this.desiredHandler(desired, version);
      if (p && typeof (p as Promise<void>).catch === "function") {
        (p as Promise<void>).catch((err) => this.log.error("onDesired failed", { version, err }));
      }
    } catch (err) {
      this.log.error("onDesired failed", { version, err: err as Error });
    }
  }

  /** Runs a command, unless its id was seen: then answers from memory, or lets the first run answer. */
  private dispatch(cmd: CommandFrame, sessionId: number, skew: number): void {
    const seen = this.dedupIds.begin(cmd.id);
    if (!seen.fresh) {
      if (seen.reply !== undefined) {
        this.log.info("command redelivered: answering again without running it", { command: cmd.name, id: cmd.id });
        this.queue(seen.reply);
      } else {
        this.log.info("command redelivered while it runs: not running it again", { command: cmd.name, id: cmd.id });
        this.pendingRedelivery.set(cmd.id, cmd);
      }
      return;
    }
    // The deadline by the device's clock: a device whose clock is off (no
    // RTC, no NTP yet) neither drops every command as late nor waits on
    // ones long given up.
    const at = cmd.deadline ? Date.parse(cmd.deadline) - skew : NaN;
    if (!Number.isNaN(at) && Date.now() >= at) {
      // The node has stopped waiting (the frame sat unread, or the device
      // was busy): running it would act for nobody. The reply says why,
      // should the node still take it.
      this.log.warn("command came after its deadline: not run", { command: cmd.name, id: cmd.id, deadline: cmd.deadline });
      const reply = replyFrame(cmd.id, false, undefined, DEADLINE_PASSED);
      this.dedupIds.finish(cmd.id, reply);
      this.queue(reply);
      return;
    }
    this.log.debug("command", { command: cmd.name, id: cmd.id });
    const controller = new AbortController();
    let deadline: Date | undefined;
    let deadlineTimer: NodeJS.Timeout | undefined;
    if (!Number.isNaN(at)) {
      deadline = new Date(at);
      deadlineTimer = setTimeout(() => controller.abort(new DeadlineExceededError()), Math.min(at - Date.now(), 2 ** 31 - 1));
    }
    const ctx: CommandContext = { id: cmd.id, name: cmd.name, signal: controller.signal, deadline };
    const done = this.runHandler(cmd, ctx).then(
      (reply) => {
        clearTimeout(deadlineTimer);
        this.running.delete(cmd.id);
        if (reply === undefined) {
          // The session ended under the handler: let the redelivery run
          // it again rather than replay a cancellation.
          this.dedupIds.forget(cmd.id);
          const again = this.pendingRedelivery.get(cmd.id);
          this.pendingRedelivery.delete(cmd.id);
          // A redelivery came while it ran, on a session still open: run that one.
          if (again && this.ws && !this.stopController?.signal.aborted) this.dispatch(again, this.sessionId, this.skew);
          return;
        }
        this.pendingRedelivery.delete(cmd.id);
        // null: it gave up at its deadline, when the node fails the
        // command by itself; a reply now would only race that. Its id
        // stays remembered as answered by nothing: not run again.
        if (reply === null) return;
        this.dedupIds.finish(cmd.id, reply);
        this.queue(reply);
      },
    );
    this.running.set(cmd.id, { controller, sessionId, done });
  }

  /**
   * Calls the command's handler; resolves with its reply frame, undefined
   * when the session ended under it, or null when it gave up at its
   * deadline (not answered: the node fails the command then, as the Go SDK
   * leaves it to).
   */
  private async runHandler(cmd: CommandFrame, ctx: CommandContext): Promise<string | undefined | null> {
    const h = this.handlers.get(cmd.name);
    if (!h) return replyFrame(cmd.id, false, undefined, `unknown command ${cmd.name}`);
    let result: unknown;
    try {
      result = await h(cmd.args, ctx);
    } catch (err) {
      if (ctx.signal.aborted && ctx.signal.reason instanceof SessionEndedError) return undefined;
      if (ctx.signal.aborted && ctx.signal.reason instanceof DeadlineExceededError) {
        this.log.info("command gave up at its deadline: not answered", { command: cmd.name, id: cmd.id });
        return null;
      }
      const message = err instanceof Error ? err.message : String(err);
      this.log.debug("command failed", { command: cmd.name, id: cmd.id, err: message });
      return replyFrame(cmd.id, false, undefined, message || "handler failed");
    }
    let frame: string;
    try {
      frame = replyFrame(cmd.id, true, result);
    } catch (err) {
      return replyFrame(cmd.id, false, undefined, `result is not JSON: ${(err as Error).message}`);
    }
    const why = unstorable(frame);
    if (why) return replyFrame(cmd.id, false, undefined, `result cannot be stored: ${why}`);
    if (Buffer.byteLength(frame) > MAX_FRAME) {
      return replyFrame(cmd.id, false, undefined, `result is too large: frames are at most ${MAX_FRAME >> 10} KiB`);
    }
    return frame;
  }

  /**
   * Puts a reply or a report in the outbox for whichever session writes
   * next: the node takes the answer to a command it delivered on any
   * session of the device, so a reply finished after its session ended is
   * not lost.
   */
  private queue(frame: string): void {
    if (this.outbox.length >= MAX_OUTBOX) {
      this.outbox.shift();
      this.log.warn("outbox full: dropping the oldest reply or report");
    }
    this.outbox.push(frame);
    this.flush();
  }

  /** Writes the outbox on the current session; a frame whose write fails goes back for the next. */
  private flush(): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.outbox.length === 0) return;
    const frames = this.outbox;
    this.outbox = [];
    const failed: string[] = [];
    frames.forEach((frame, i) => {
      ws.send(frame, (err) => {
        if (err) failed.push(frame);
        // The callbacks come in order: at the last, put back what failed,
        // ahead of what was queued since.
        if (i === frames.length - 1 && failed.length > 0) {
          this.outbox = failed.concat(this.outbox).slice(-MAX_OUTBOX);
          this.flush();
        }
      });
    });
  }
}

/** A reply frame's JSON text; throws when result cannot be encoded. */
function replyFrame(id: string, ok: boolean, result?: unknown, error?: string): string {
  if (!ok) return JSON.stringify({ type: "reply", id, ok: false, error });
  const encoded = JSON.stringify(result === undefined ? null : result);
  if (encoded === undefined) throw new TypeError("the result encodes to nothing");
  return `{"type":"reply","id":${JSON.stringify(id)},"ok":true,"result":${encoded}}`;
}
