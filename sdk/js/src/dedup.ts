/**
 * Remembers the newest command ids and their replies. Delivery is at least
 * once: a command redelivered after a reconnect is answered from here
 * instead of being run twice (device/dedup.go in Go).
 */
export class Dedup {
  // id → reply frame; undefined while the handler runs. A Map iterates in
  // insertion order, so its first key is the oldest id remembered.
  private readonly replies = new Map<string, string | undefined>();

  constructor(readonly size = 1024) {
    if (!(size >= 1)) throw new RangeError("dedup size must be at least 1");
  }

  /**
   * Records id. fresh is false when id was seen; reply is then its answer,
   * or undefined while the first run is still going.
   */
  begin(id: string): { fresh: boolean; reply?: string } {
    if (this.replies.has(id)) {
      return { fresh: false, reply: this.replies.get(id) };
    }
    if (this.replies.size >= this.size) {
      const oldest = this.replies.keys().next().value as string;
      this.replies.delete(oldest);
    }
    this.replies.set(id, undefined);
    return { fresh: true };
  }

  /** Stores id's reply, if id is still remembered. */
  finish(id: string, reply: string): void {
    if (this.replies.has(id)) this.replies.set(id, reply);
  }

  /** Drops id, so that its next delivery runs again. */
  forget(id: string): void {
    this.replies.delete(id);
  }

  /** How many ids are remembered. */
  get length(): number {
    return this.replies.size;
  }
}
