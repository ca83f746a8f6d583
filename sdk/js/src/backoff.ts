/**
 * Exponential backoff with full jitter, as internal/backoff in Go: a random
 * wait up to min(max, min·2^attempt), so that a fleet of devices that lost
 * the same node spreads out instead of coming back in step.
 */

/** The longest wait after `attempt` failures: min(max, base·2^attempt), in ms. */
export function ceiling(base: number, max: number, attempt: number): number {
  if (attempt < 62 && base * 2 ** attempt <= max) {
    return base * 2 ** attempt;
  }
  return max;
}

/** Counts failed attempts and says how long to wait after each. */
export class Backoff {
  private attempt = 0;
  constructor(
    readonly min: number,
    readonly max: number,
    private readonly random: () => number = Math.random,
  ) {}

  /** The wait before the next attempt, in ms (1 to the ceiling); counts one failure. */
  next(): number {
    const d = Math.floor(this.random() * ceiling(this.min, this.max, this.attempt)) + 1;
    this.attempt++;
    return d;
  }

  /** Starts again from min, after a success. */
  reset(): void {
    this.attempt = 0;
  }

  /** The failures counted since the last reset. */
  attempts(): number {
    return this.attempt;
  }
}

/** Resolves true after ms, or false as soon as signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve(false);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve(true);
    }, Math.min(Math.max(ms, 0), 2 ** 31 - 1));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
