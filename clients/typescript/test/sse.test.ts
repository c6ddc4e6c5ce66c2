import { test } from "node:test";
import assert from "node:assert/strict";
import { SseParser, readSse, type SseEvent } from "@rumor/client";

function parseAll(pieces: string[]): SseEvent[] {
  const p = new SseParser();
  const out: SseEvent[] = [];
  for (const piece of pieces) out.push(...p.push(piece));
  out.push(...p.end());
  return out;
}

const stream =
  ": heartbeat\n\n" +
  'event: accepted\ndata: {"conversation":"c1","message_id":"m"}\n\n' +
  'event: chunk\ndata: {"text":"Hel"}\n\n' +
  "event: chunk\ndata: line one\ndata: line two\n\n" +
  'event: done\ndata: {"worker":"w"}\n\n';

const expected: SseEvent[] = [
  { event: "accepted", data: '{"conversation":"c1","message_id":"m"}' },
  { event: "chunk", data: '{"text":"Hel"}' },
  { event: "chunk", data: "line one\nline two" },
  { event: "done", data: '{"worker":"w"}' },
];

test("named events, comments and multi-line data", () => {
  assert.deepEqual(parseAll([stream]), expected);
});

test("any split of the stream gives the same events", () => {
  for (let i = 0; i <= stream.length; i++) {
    assert.deepEqual(parseAll([stream.slice(0, i), stream.slice(i)]), expected, `split at ${i}`);
  }
  assert.deepEqual(parseAll([...stream]), expected, "one character at a time");
});

test("CRLF and CR line endings, also split between the CR and the LF", () => {
  const crlf = stream.replaceAll("\n", "\r\n");
  assert.deepEqual(parseAll([crlf]), expected);
  for (let i = 0; i <= crlf.length; i++) {
    assert.deepEqual(parseAll([crlf.slice(0, i), crlf.slice(i)]), expected, `CRLF split at ${i}`);
  }
  assert.deepEqual(parseAll([stream.replaceAll("\n", "\r")]), expected);
});

test("fields: no space after the colon, id carried over, retry, unknown fields, default event name", () => {
  const events = parseAll(["data:a\nid: 7\nretry: 1500\nfoo: bar\n\n", "data: b\n\n", "id\ndata: c\n\n"]);
  assert.deepEqual(events, [
    { event: "message", data: "a", id: "7", retry: 1500 },
    { event: "message", data: "b", id: "7" },
    { event: "message", data: "c", id: "" },
  ]);
});

test("an event without data is not dispatched; a leading BOM is skipped", () => {
  assert.deepEqual(parseAll(["\uFEFFevent: x\n\n", "data: y\n\n"]), [{ event: "message", data: "y" }]);
  assert.deepEqual(parseAll(["data:\n\n"]), [{ event: "message", data: "" }]);
});

test("an event cut off by the end of the stream is dropped", () => {
  assert.deepEqual(parseAll(['event: chunk\ndata: {"text":"x"}\n']), []);
});

test("readSse decodes UTF-8 split across byte chunks", async () => {
  const bytes = new TextEncoder().encode("event: chunk\ndata: héllo 🙂\n\n");
  async function* body() {
    for (const b of bytes) yield new Uint8Array([b]);
  }
  const events: SseEvent[] = [];
  for await (const e of readSse(body())) events.push(e);
  assert.deepEqual(events, [{ event: "chunk", data: "héllo 🙂" }]);
});
