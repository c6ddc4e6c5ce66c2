// The object a send returns: an async iterable of the reply's events that
// also gathers the whole reply, for callers that only want the text.

import { RumorError } from "./errors.js";
import { AsyncQueue } from "./queue.js";
import type { ReplyEvent, Usage } from "./types.js";

/** The whole reply, once it ended well. */
export interface ReplyResult {
  conversation: string;
  clientId: string;
  messageId: string;
  text: string;
  worker: string;
  replayed: boolean;
  usage?: Usage;
}

/**
 * A reply in progress. Iterate it for `accepted`, `chunk`, then `done` or
 * `error` (always the last event; iteration then ends without throwing), or
 * await `text()` / `result()`, which reject with the RumorError instead.
 */
export interface ReplyStream extends AsyncIterable<ReplyEvent> {
  readonly conversation: string;
  readonly clientId: string;
  /** The gateway's id of the message, once accepted. */
  readonly messageId: string | undefined;
  /** Whether the reply ended (well or not). */
  readonly finished: boolean;
  /** The whole reply text; rejects with a RumorError if the reply failed. */
  text(): Promise<string>;
  /** The whole reply with its metadata; rejects with a RumorError if the reply failed. */
  result(): Promise<ReplyResult>;
  /** Stops the message (as aborting its signal does): the reply ends with `CANCELLED`. */
  cancel(): void;
}

/** The producer's side of a ReplyStream. */
export class ReplySink implements ReplyStream {
  private readonly queue = new AsyncQueue<ReplyEvent>();
  private readonly parts: string[] = [];
  private readonly settled: Promise<ReplyResult>;
  private resolve!: (r: ReplyResult) => void;
  private reject!: (e: RumorError) => void;
  private _messageId: string | undefined;
  private _finished = false;

  constructor(
    readonly conversation: string,
    readonly clientId: string,
    private readonly onCancel: (sink: ReplySink) => void,
  ) {
    this.settled = new Promise<ReplyResult>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    // Nobody may ever ask for the result; that must not be an unhandled rejection.
    this.settled.catch(() => undefined);
  }

  get messageId(): string | undefined {
    return this._messageId;
  }

  get finished(): boolean {
    return this._finished;
  }

  /** The text received so far. */
  get received(): string {
    return this.parts.join("");
  }

  accepted(messageId: string): void {
    if (this._finished) return;
    this._messageId = messageId;
    this.queue.push({ type: "accepted", conversation: this.conversation, clientId: this.clientId, messageId });
  }

  chunk(event: Extract<ReplyEvent, { type: "chunk" }>): void {
    if (this._finished) return;
    this.parts.push(event.text);
    this.queue.push(event);
  }

  done(event: Extract<ReplyEvent, { type: "done" }>): void {
    if (this._finished) return;
    this._finished = true;
    this.queue.push(event);
    this.queue.end();
    const result: ReplyResult = {
      conversation: this.conversation,
      clientId: this.clientId,
      messageId: event.messageId,
      text: this.received,
      worker: event.worker,
      replayed: event.replayed,
    };
    if (event.usage) result.usage = event.usage;
    this.resolve(result);
  }

  fail(error: RumorError): void {
    if (this._finished) return;
    this._finished = true;
    const messageId = error.messageId ?? this._messageId;
    this.queue.push({
      type: "error",
      conversation: this.conversation,
      clientId: this.clientId,
      ...(messageId === undefined ? {} : { messageId }),
      code: error.code,
      message: error.message,
      error,
    });
    this.queue.end();
    this.reject(error);
  }

  text(): Promise<string> {
    return this.settled.then((r) => r.text);
  }

  result(): Promise<ReplyResult> {
    return this.settled;
  }

  cancel(): void {
    if (!this._finished) this.onCancel(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<ReplyEvent> {
    return this.queue[Symbol.asyncIterator]();
  }
}
