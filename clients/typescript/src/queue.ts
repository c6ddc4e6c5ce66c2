// A single-consumer async queue: the producer (frames arriving on a socket)
// pushes without waiting; the consumer pulls with `for await`.

export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  private ended = false;
  private failure: { error: unknown } | undefined;
  private returned = false;

  /**
   * @param onReturn called once when the consumer stops early (`break` out of
   *   `for await`), so the producer can stop too.
   */
  constructor(private readonly onReturn?: () => void) {}

  /** Whether the queue still takes items. */
  get open(): boolean {
    return !this.ended && !this.returned;
  }

  push(item: T): void {
    if (!this.open) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w.resolve({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  /** Ends the iteration after the queued items. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.waiting && this.items.length === 0) {
      const w = this.waiting;
      this.waiting = undefined;
      w.resolve({ value: undefined, done: true });
    }
  }

  /** Ends the iteration with an error, thrown after the queued items. */
  fail(error: unknown): void {
    if (this.ended) return;
    this.failure = { error };
    this.end();
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w.reject(error);
    }
  }

  /** Drops what is queued and takes nothing more (nobody will read it). */
  discard(): void {
    this.items = [];
    this.returned = true;
  }

  // Like an async generator, the stream is its own iterator: iterating it
  // again continues where the last loop stopped (but a loop left with
  // `break` has stopped the stream).
  [Symbol.asyncIterator](): AsyncIterator<T> {
    return this.iterator;
  }

  private readonly iterator: AsyncIterator<T> = {
    next: () => {
      const item = this.items.shift();
      if (item !== undefined) return Promise.resolve({ value: item, done: false });
      if (this.ended || this.returned) {
        if (this.failure) {
          const { error } = this.failure;
          this.failure = undefined;
          return Promise.reject(error);
        }
        return Promise.resolve({ value: undefined, done: true });
      }
      return new Promise((resolve, reject) => {
        this.waiting = { resolve, reject };
      });
    },
    return: () => {
      if (!this.returned && !this.ended) {
        this.returned = true;
        this.items = [];
        this.onReturn?.();
      }
      this.returned = true;
      return Promise.resolve({ value: undefined, done: true });
    },
  };
}
