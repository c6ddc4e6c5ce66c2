// End-to-end tests against a real gateway: set RUMOR_EDGE_URL to its edge
// (e.g. http://127.0.0.1:8080, as `rumor up` prints it). The gateway's
// workers must run the echo processor, which answers each message with its
// own text in a few chunks. Without RUMOR_EDGE_URL every test here is
// skipped, saying why.
//
// Optional: RUMOR_EDGE_TOKEN, a credential if the edge requires one.
// RUMOR_EDGE_URL must point at this machine (loopback) unless
// RUMOR_E2E_ALLOW_REMOTE=1.

import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import WebSocket from "ws";
import OpenAI from "openai";
import {
  RumorClient,
  RumorError,
  sendHttp,
  type ReplyEvent,
  type RumorClientOptions,
  type WatchEvent,
  type WatchStream,
  type WebSocketLike,
} from "@rumor/client";

const EDGE = process.env["RUMOR_EDGE_URL"]?.replace(/\/+$/, "");
const TOKEN = process.env["RUMOR_EDGE_TOKEN"] || undefined;

function skipReason(): string | false {
  if (!EDGE) return "RUMOR_EDGE_URL is not set: the end-to-end tests need a running gateway (e.g. RUMOR_EDGE_URL=http://127.0.0.1:8080)";
  const host = new URL(EDGE).hostname;
  const loopback = host === "localhost" || host === "[::1]" || host === "::1" || /^127\./.test(host);
  if (!loopback && process.env["RUMOR_E2E_ALLOW_REMOTE"] !== "1") {
    return `RUMOR_EDGE_URL points at ${host}, not this machine; set RUMOR_E2E_ALLOW_REMOTE=1 to allow it`;
  }
  return false;
}

const skip = skipReason();
if (skip) console.log(`# e2e: skipped: ${skip}`);

/** A fresh conversation key per test and run. */
function conv(name: string): string {
  return `e2e-ts/${name}/${Date.now()}-${randomUUID().slice(0, 8)}`;
}

function client(extra: Partial<RumorClientOptions> = {}): { client: RumorClient; sockets: WebSocketLike[] } {
  const sockets: WebSocketLike[] = [];
  const c = new RumorClient({
    url: EDGE!,
    ...(TOKEN ? { token: TOKEN } : {}),
    reconnect: { initialMs: 50, maxMs: 500 },
    webSocketFactory: (url, options) => {
      const ws = new WebSocket(url, { headers: options.headers });
      sockets.push(ws);
      return ws;
    },
    ...extra,
  });
  return { client: c, sockets };
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

function chunkText(events: (ReplyEvent | WatchEvent)[], messageId?: string): string {
  return events
    .flatMap((e) => (e.type === "chunk" && (messageId === undefined || e.messageId === messageId) ? [e.text] : []))
    .join("");
}

function show(x: unknown): string {
  return JSON.stringify(x, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
}

/** Reads a watch until `pred` holds (or the time runs out). */
async function until(watch: WatchStream, pred: (e: WatchEvent) => boolean, ms = 15_000): Promise<WatchEvent[]> {
  const seen: WatchEvent[] = [];
  const it = watch[Symbol.asyncIterator]();
  const deadline = Date.now() + ms;
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const next = await Promise.race([
      it.next(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out; saw ${show(seen)}`)), Math.max(0, deadline - Date.now()));
      }),
    ]).finally(() => clearTimeout(timer));
    if (next.done) return seen;
    seen.push(next.value);
    if (pred(next.value)) return seen;
  }
}

/** Positions within an epoch are contiguous, and any jump is announced by a gap. */
function assertNoSilentHole(events: WatchEvent[]): void {
  let last: { epoch: string; seq: bigint } | undefined;
  for (const e of events) {
    if (e.type === "gap") {
      last = e.resume ? { epoch: e.resume.epoch, seq: e.resume.seq - 1n } : undefined;
      continue;
    }
    if (!e.position) continue;
    if (last && e.position.epoch === last.epoch) {
      assert.equal(e.position.seq, last.seq + 1n, `no silent hole before ${show(e)}`);
    } else if (last) {
      assert.fail(`epoch changed without a gap at ${show(e)}`);
    }
    last = e.position;
  }
}

describe("end to end against RUMOR_EDGE_URL", { skip, timeout: 120_000 }, () => {
  test("send streams the echo: accepted, chunks, done", async () => {
    const { client: c } = client();
    try {
      const text = `hello rumor ${randomUUID()} — ünïcödé 🙂`;
      const events = await collect(c.send(conv("send"), text, { timeoutMs: 30_000 }));
      assert.equal(events[0]?.type, "accepted", show(events));
      assert.equal(events.at(-1)?.type, "done", show(events.at(-1)));
      assert.ok(events.filter((e) => e.type === "chunk").length >= 1);
      assert.equal(chunkText(events), text);
      for (const e of events) if (e.type === "chunk") assert.ok(e.position, "chunks carry positions");
      assert.equal(c.welcome?.version, 1);
      assert.equal(await c.send(conv("send"), "second").text(), "second");
    } finally {
      await c.close();
    }
  });

  test("binary (protobuf) frames", async () => {
    const { client: c } = client({ binary: true });
    try {
      const text = `binary ${randomUUID()} 🙂`;
      const events = await collect(c.send(conv("binary"), text));
      assert.equal(events.at(-1)?.type, "done", show(events.at(-1)));
      assert.equal(chunkText(events), text);
    } finally {
      await c.close();
    }
  });

  test("many conversations in flight on one connection", async () => {
    const { client: c, sockets } = client();
    try {
      const keys = Array.from({ length: 8 }, (_, i) => conv(`many-${i}`));
      const sends = Array.from({ length: 24 }, async (_, i) => {
        const text = `message ${i} ${randomUUID()}`;
        assert.equal(await c.send(keys[i % keys.length]!, text).text(), text);
      });
      await Promise.all(sends);
      assert.equal(sockets.length, 1, "one connection");
    } finally {
      await c.close();
    }
  });

  test("cancel through an AbortSignal", async () => {
    const { client: a } = client();
    const { client: b } = client();
    try {
      const key = conv("cancel");
      const watch = b.watch(key);
      await watch.ready();
      const ac = new AbortController();
      const reply = a.send(key, `cancel me ${"x".repeat(4000)}`, { signal: ac.signal });
      const events: ReplyEvent[] = [];
      for await (const e of reply) {
        events.push(e);
        if (e.type === "accepted") ac.abort();
      }
      const last = events.at(-1)!;
      assert.equal(last.type === "error" && last.code, "CANCELLED", show(last));
      await assert.rejects(reply.text(), (e: unknown) => e instanceof RumorError && e.code === "CANCELLED");
      // The watcher sees the message end; if the cancel arrived before the
      // echo finished, it ended with CANCELLED.
      const seen = await until(watch, (e) => e.type === "end" && e.messageId === reply.messageId);
      const end = seen.at(-1)!;
      if (end.type === "end" && end.error) assert.equal(end.error.code, "CANCELLED");
      else console.log("# e2e: the echo finished before the cancel arrived (not an error)");
      watch.close();
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("a second connection watching sees the first one's message and reply", async () => {
    const { client: a } = client();
    const { client: b } = client({ binary: true });
    try {
      const key = conv("watch");
      const watch = b.watch(key);
      await watch.ready();
      const text = `watched ${randomUUID()}`;
      const reply = a.send(key, text);
      const replyText = await reply.text();
      const seen = await until(watch, (e) => e.type === "end" && e.messageId === reply.messageId);
      assert.equal(replyText, text);
      const message = seen.find((e) => e.type === "message" && e.messageId === reply.messageId);
      assert.ok(message && message.type === "message", show(seen));
      assert.equal(message.text, text);
      assert.equal(chunkText(seen, reply.messageId), text);
      assertNoSilentHole(seen);
      watch.close();
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("a watch resumes from its last position after a dropped connection", async () => {
    const { client: a } = client();
    const { client: b, sockets } = client();
    try {
      const key = conv("resume-watch");
      const watch = b.watch(key);
      await watch.ready();
      const first = a.send(key, "before the drop");
      await first.text();
      const before = await until(watch, (e) => e.type === "end" && e.messageId === first.messageId);
      sockets[0]!.terminate();
      const second = a.send(key, "while the watcher was away");
      await second.text();
      const afterDrop = await until(watch, (e) => e.type === "end" && e.messageId === second.messageId);
      assert.ok(sockets.length >= 2, "the watcher reconnected");
      assertNoSilentHole([...before, ...afterDrop]);
      const gap = afterDrop.find((e) => e.type === "gap");
      if (!gap) assert.equal(chunkText(afterDrop, second.messageId), "while the watcher was away");
      watch.close();
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("an in-flight send resumes after a dropped connection", async () => {
    const { client: c, sockets } = client();
    try {
      const key = conv("resume-send");
      await c.send(key, "a first message, so a position is known").text();
      const text = `resumed ${"y".repeat(2000)} ${randomUUID()}`;
      const reply = c.send(key, text);
      const events: ReplyEvent[] = [];
      for await (const e of reply) {
        events.push(e);
        if (e.type === "accepted") sockets[0]!.terminate();
      }
      assert.equal(events.at(-1)?.type, "done", show(events.at(-1)));
      assert.equal(chunkText(events), text);
      assert.ok(sockets.length >= 2, "reconnected");
    } finally {
      await c.close();
    }
  });

  test("HTTP: JSON and server-sent events", async () => {
    const key = conv("http");
    const text = `over http ${randomUUID()}`;
    const reply = await sendHttp(EDGE!, key, text, { ...(TOKEN ? { token: TOKEN } : {}), clientId: "http-1" });
    assert.equal(reply.text, text);
    assert.equal(reply.clientId, "http-1");
    assert.ok(reply.messageId.length > 0);

    const stream = sendHttp(EDGE!, key, `${text} (sse)`, { ...(TOKEN ? { token: TOKEN } : {}), stream: true });
    const events = await collect(stream);
    assert.equal(events[0]?.type, "accepted", show(events));
    assert.equal(events.at(-1)?.type, "done", show(events.at(-1)));
    assert.equal(chunkText(events), `${text} (sse)`);
  });

  describe("the official openai package", () => {
    let openai: OpenAI;
    let model = "default";
    before(async () => {
      openai = new OpenAI({ baseURL: `${EDGE}/v1`, apiKey: TOKEN ?? "rumor-e2e", maxRetries: 0, timeout: 60_000 });
      try {
        const models = await openai.models.list();
        model = models.data[0]?.id ?? model;
      } catch (e) {
        console.log(`# e2e: GET /v1/models failed (${String(e)}); using model "${model}"`);
      }
    });

    test("chat.completions.create, not streaming", async () => {
      const prompt = `openai plain ${randomUUID()}`;
      const completion = await openai.chat.completions.create({
        model,
        messages: [{ role: "user", content: prompt }],
        prompt_cache_key: conv("openai-plain"),
      });
      assert.equal(completion.object, "chat.completion");
      const content = completion.choices[0]?.message.content ?? "";
      assert.ok(content.includes(prompt), `the echo holds the prompt: ${content}`);
    });

    test("chat.completions.create, streaming", async () => {
      const prompt = `openai stream ${randomUUID()}`;
      const stream = await openai.chat.completions.create({
        model,
        messages: [{ role: "user", content: prompt }],
        prompt_cache_key: conv("openai-stream"),
        stream: true,
      });
      let content = "";
      let chunks = 0;
      let finish: string | null | undefined;
      for await (const chunk of stream) {
        chunks += 1;
        assert.equal(chunk.object, "chat.completion.chunk");
        content += chunk.choices[0]?.delta.content ?? "";
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      assert.ok(chunks >= 2, `${chunks} chunks`);
      assert.ok(content.includes(prompt), `the echo holds the prompt: ${content}`);
      assert.equal(finish, "stop");
    });
  });
});
