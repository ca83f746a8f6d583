/**
 * TLS to the node: trust a CA file instead of the system roots, and pin the
 * node certificate's SHA-256. The pin is checked on the TLS socket before
 * the HTTP upgrade request (which carries the Authorization header) is
 * written: the socket is handed to the request only once it is verified.
 */
import { createHash, X509Certificate } from "node:crypto";
import * as net from "node:net";
import * as tls from "node:tls";
import { PinMismatchError } from "./errors";

/**
 * normalizePin turns a SHA-256 fingerprint as people write it (`AB:CD:…`,
 * colons optional, any case) into 64 upper-case hex digits, or throws.
 */
export function normalizePin(pin: string): string {
  const hex = pin.replace(/[:\s]/g, "").toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) {
    throw new RangeError(`pin ${JSON.stringify(pin)} is not a SHA-256 fingerprint (64 hex digits, colons optional)`);
  }
  return hex;
}

/** The SHA-256 of a certificate's DER, as `AB:CD:…` (the form nodes log). */
export function fingerprint(der: Buffer): string {
  return createHash("sha256")
    .update(der)
    .digest("hex")
    .toUpperCase()
    .replace(/(..)(?!$)/g, "$1:");
}

/** Whether a certificate's DER matches a pin given to normalizePin. */
export function pinMatches(der: Buffer, normalizedPin: string): boolean {
  return fingerprint(der).replace(/:/g, "") === normalizedPin;
}

/** The SHA-256 fingerprint of the first certificate in a PEM text. */
export function pemFingerprint(pem: string | Buffer): string {
  return fingerprint(new X509Certificate(pem).raw);
}

export interface ConnectOptions {
  /** Trusted CAs (PEM); undefined trusts the system roots. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** normalizePin's form, or undefined for no pin. */
  pin?: string;
  /** More TLS options (a client certificate, say); they override ours. */
  tls?: tls.ConnectionOptions;
  /** How long TCP and TLS may take, in ms. */
  timeoutMs: number;
  /** Told of each TLS socket while it is being verified, so a stop can destroy it. */
  track?: (socket: tls.TLSSocket | undefined) => void;
}

type Callback = (err: Error | null, socket?: net.Socket) => void;

/**
 * makeCreateConnection returns a `createConnection` for ws (and so for
 * http.request): it opens the TLS connection itself, verifies the chain
 * (Node's, against ca) and the host name, or with a pin the certificate's
 * SHA-256 alone, and only then gives the socket to the request, through
 * the callback. A certificate that fails never sees a byte of HTTP, so
 * not the credentials either.
 */
export function makeCreateConnection(opts: ConnectOptions) {
  return (reqOpts: tls.ConnectionOptions & { path?: string | null }, cb: Callback): undefined => {
    const host = (reqOpts.host ?? "localhost").replace(/^\[|\]$/g, "");
    const checkPin = (cert: { raw?: Buffer } | undefined): Error | undefined => {
      if (opts.pin === undefined) return undefined;
      if (!cert?.raw) return new PinMismatchError("(no certificate)");
      if (!pinMatches(cert.raw, opts.pin)) return new PinMismatchError(fingerprint(cert.raw));
      return undefined;
    };
    const socket = tls.connect({
      host,
      port: Number(reqOpts.port),
      // SNI only for names: a node dialled by address gets none (as ws does).
      servername: net.isIP(host) ? "" : host,
      ca: opts.ca,
      ALPNProtocols: ["http/1.1"],
      // The pin is checked here too, during the handshake; the check on
      // secureConnect below also covers a resumed session, which skips this.
      checkServerIdentity: (hostname, cert) => (opts.pin !== undefined ? checkPin(cert) : tls.checkServerIdentity(hostname, cert)),
      ...opts.tls,
      // With a pin, the pinned certificate is trusted whoever issued it
      // (as the Go SDK's Config.Pin): the chain is not what counts.
      rejectUnauthorized: opts.pin === undefined && (opts.tls?.rejectUnauthorized ?? true),
    });
    opts.track?.(socket);
    let settled = false;
    const settle = (err: Error | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.removeListener("error", onError);
      opts.track?.(undefined);
      if (err) {
        socket.destroy();
        cb(err);
      } else {
        cb(null, socket);
      }
    };
    const onError = (err: Error) => settle(err);
    const timer = setTimeout(() => settle(new Error(`TLS connection to ${host}:${reqOpts.port} timed out`)), opts.timeoutMs);
    socket.on("error", onError);
    socket.once("secureConnect", () => {
      if (!socket.authorized && opts.pin === undefined && (opts.tls?.rejectUnauthorized ?? true)) {
        settle(new Error(`node certificate not trusted: ${socket.authorizationError}`));
        return;
      }
      settle(checkPin(socket.getPeerCertificate()) ?? null);
    });
    socket.once("close", () => settle(new Error("connection closed during the TLS handshake")));
    return undefined;
  };
}
