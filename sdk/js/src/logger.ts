/**
 * Logging. Node has no standard logging module, so the SDK logs through
 * this small interface, which console, pino, winston and bunyan loggers
 * satisfy (for pino, whose methods take the fields first, wrap it). Each
 * call has a message and, optionally, fields (device, code, reason, …).
 */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export type Level = "debug" | "info" | "warn" | "error";
const levels: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

function formatFields(fields?: Record<string, unknown>): string {
  if (!fields) return "";
  let out = "";
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    let s: string;
    if (v instanceof Error) s = v.message;
    else if (typeof v === "string") s = v;
    else s = JSON.stringify(v) ?? String(v);
    out += ` ${k}=${/^[^\s"=]+$/.test(s) ? s : JSON.stringify(s)}`;
  }
  return out;
}

/**
 * consoleLogger writes one line per call to stderr through console.error
 * (as Go's slog default writes to stderr): `time LEVEL msg key=value …`.
 * Calls below level are dropped. The SDK's default is
 * consoleLogger(process.env.SWITCHBOARD_LOG_LEVEL ?? "info").
 */
export function consoleLogger(level: Level = "info", fields?: Record<string, unknown>): Logger {
  const min = levels[level] ?? levels.info;
  const line = (lv: Level) => (msg: string, f?: Record<string, unknown>) => {
    if (levels[lv] < min) return;
    console.error(`${new Date().toISOString()} ${lv.toUpperCase()} ${msg}${formatFields(fields)}${formatFields(f)}`);
  };
  return { debug: line("debug"), info: line("info"), warn: line("warn"), error: line("error") };
}

/** withFields adds fields (device=…) to each line a logger writes. */
export function withFields(log: Logger, fields: Record<string, unknown>): Logger {
  const wrap = (fn: (msg: string, f?: Record<string, unknown>) => void) => (msg: string, f?: Record<string, unknown>) =>
    fn.call(log, msg, { ...fields, ...f });
  return { debug: wrap(log.debug), info: wrap(log.info), warn: wrap(log.warn), error: wrap(log.error) };
}
