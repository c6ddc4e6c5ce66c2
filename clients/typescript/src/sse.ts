// A parser for server-sent events (the `text/event-stream` format of the
// HTML standard), fed text as it arrives in pieces of any size.

export interface SseEvent {
  /** The `event:` field; `message` when the event named none. */
  event: string;
  /** The `data:` lines, joined with newlines. */
  data: string;
  /** The last `id:` seen on the stream so far (it carries over), if any. */
  id?: string;
  /** A `retry:` field of this event, ms. */
  retry?: number;
}

export class SseParser {
  private buffer = "";
  private first = true;
  // A chunk ended in CR: a LF at the start of the next one belongs to it.
  private skipLf = false;
  private data: string[] = [];
  private eventType = "";
  private lastId: string | undefined;
  private retry: number | undefined;

  /** Feeds text; returns the events it completed. */
  push(text: string): SseEvent[] {
    if (this.first && text.length > 0) {
      this.first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.skipLf && text.startsWith("\n")) text = text.slice(1);
    this.skipLf = false;
    this.buffer += text;

    const out: SseEvent[] = [];
    let start = 0;
    for (;;) {
      const cr = this.buffer.indexOf("\r", start);
      const lf = this.buffer.indexOf("\n", start);
      if (cr < 0 && lf < 0) break;
      let end: number;
      let next: number;
      if (lf >= 0 && (cr < 0 || lf < cr)) {
        end = lf;
        next = lf + 1;
      } else if (cr + 1 < this.buffer.length) {
        end = cr;
        next = this.buffer.charCodeAt(cr + 1) === 0x0a ? cr + 2 : cr + 1;
      } else {
        // A CR at the very end: the line ends here, but a LF may follow in
        // the next chunk and must not count as an empty line.
        end = cr;
        next = cr + 1;
        this.skipLf = true;
      }
      const event = this.line(this.buffer.slice(start, end));
      if (event) out.push(event);
      start = next;
    }
    this.buffer = this.buffer.slice(start);
    return out;
  }

  /**
   * The stream ended. As the standard says, an event not yet terminated by
   * an empty line is dropped (a cut connection must not yield half an event).
   */
  end(): SseEvent[] {
    this.buffer = "";
    this.data = [];
    this.eventType = "";
    return [];
  }

  private line(line: string): SseEvent | undefined {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return undefined; // a comment, e.g. `: heartbeat`
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event":
        this.eventType = value;
        break;
      case "data":
        this.data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this.lastId = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
    return undefined;
  }

  private dispatch(): SseEvent | undefined {
    const data = this.data;
    const eventType = this.eventType;
    const retry = this.retry;
    this.data = [];
    this.eventType = "";
    this.retry = undefined;
    // An event without data lines is not dispatched (but its id stays).
    if (data.length === 0) return undefined;
    const event: SseEvent = { event: eventType === "" ? "message" : eventType, data: data.join("\n") };
    if (this.lastId !== undefined) event.id = this.lastId;
    if (retry !== undefined) event.retry = retry;
    return event;
  }
}

/** Reads the events of a byte stream, e.g. a fetch Response body. */
export async function* readSse(body: AsyncIterable<Uint8Array>): AsyncGenerator<SseEvent> {
  const decoder = new TextDecoder("utf-8");
  const parser = new SseParser();
  for await (const bytes of body) {
    yield* parser.push(decoder.decode(bytes, { stream: true }));
  }
  yield* parser.push(decoder.decode());
  yield* parser.end();
}
