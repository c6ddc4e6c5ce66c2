// RumorClient against the in-process fake gateway (test/support): the
// client's own logic (matching, cancel, watch, reconnect, resume, errors),
// runnable now. The same scenarios run against a real gateway in
// e2e.test.ts when RUMOR_EDGE_URL is set.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import WebSocket from "ws";
import {
  RumorClient,
  RumorError,
  type ReplyEvent,
  type RumorClientOptions,
  type WatchEvent,
  type WatchStream,
  type WebSocketLike,
} from "@rumor/client";
import { FakeGateway } from "./support/fake-gateway.js";

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** Reads a watch until `pred` holds for an event (or the time runs out). */
async function until(watch: WatchStream, pred: (e: WatchEvent, seen: WatchEvent[]) => boolean, ms = 5000): Promise<WatchEvent[]> {
  const seen: WatchEvent[] = [];
  const it = watch[Symbol.asyncIterator]();
  const deadline = Date.now() + ms;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out; saw ${JSON.stringify(seen.map((e) => e.type))}`);
    let timer: NodeJS.Timeout | undefined;
    const next = await Promise.race([
      it.next(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out; saw ${JSON.stringify(seen.map((e) => e.type))}`)), left);
      }),
    ]).finally(() => clearTimeout(timer));
    if (next.done) return seen;
    seen.push(next.value);
    if (pred(next.value, seen)) return seen;
  }
}

/** JSON for assertion messages (positions hold bigints). */
function show(x: unknown): string {
  return JSON.stringify(x, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A client whose sockets the test can reach, to drop them. */
function client(gw: FakeGateway, extra: Partial<RumorClientOptions> = {}): { client: RumorClient; sockets: WebSocketLike[] } {
  const sockets: WebSocketLike[] = [];
  const c = new RumorClient({
    url: gw.wsUrl,
    reconnect: { initialMs: 20, maxMs: 100 },
    webSocketFactory: (url, options) => {
      const ws = new WebSocket(url, { headers: options.headers });
      sockets.push(ws);
      return ws;
    },
    ...extra,
  });
  return { client: c, sockets };
}

function chunkTexts(events: ReplyEvent[]): string[] {
  return events.flatMap((e) => (e.type === "chunk" ? [e.text] : []));
}

describe("RumorClient with the fake gateway", () => {
  let gw: FakeGateway;
  before(async () => {
    gw = await FakeGateway.start();
  });
  after(async () => {
    await gw.close();
  });

  test("send streams accepted, chunks in order, done", async () => {
    const { client: c } = client(gw);
    try {
      const events = await collect(c.send("conv-basic", "Hello, rumor!"));
      assert.deepEqual(
        events.map((e) => e.type),
        ["accepted", "chunk", "chunk", "chunk", "done"],
      );
      assert.equal(chunkTexts(events).join(""), "Hello, rumor!");
      const seqs = events.flatMap((e) => (e.type === "chunk" ? [e.position!.seq] : []));
      assert.deepEqual(seqs, [...seqs].sort((a, b) => (a < b ? -1 : 1)));
      const done = events.at(-1)!;
      assert.equal(done.type === "done" && done.usage?.backend, "echo");
      assert.equal(c.welcome?.gateway, "fake-gateway");
      // A trace context given rides on the send frame.
      const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
      await c.send("conv-traced", "traced", { clientId: "traced", traceparent }).text();
      const sent = gw.received.find((r) => r.frame.frame.case === "send" && r.frame.frame.value.clientId === "traced");
      assert.equal(sent?.frame.frame.case === "send" && sent.frame.frame.value.traceparent, traceparent);
      const hello = gw.received.find((r) => r.frame.frame.case === "hello");
      assert.deepEqual(hello?.frame.frame.case === "hello" && hello.frame.frame.value.versions, [1]);
      // text() and result() work on the same reply.
      const r = c.send("conv-basic", "second");
      assert.equal(await r.text(), "second");
      assert.equal((await r.result()).messageId.length, 26);
    } finally {
      await c.close();
    }
  });

  test("binary frames", async () => {
    const { client: c } = client(gw, { binary: true });
    try {
      const before = gw.received.length;
      assert.equal(await c.send("conv-binary", "über binary 🙂").text(), "über binary 🙂");
      const mine = gw.received.slice(before);
      assert.ok(mine.length >= 2 && mine.every((r) => r.binary), "every frame was protobuf");
    } finally {
      await c.close();
    }
  });

  test("many conversations in flight on one connection", async () => {
    const { client: c, sockets } = client(gw);
    try {
      const sends = [];
      for (let i = 0; i < 40; i++) {
        const text = `message ${i} ${"x".repeat(i)}`;
        sends.push(c.send(`conv-many-${i % 8}`, text).text().then((t) => assert.equal(t, text)));
      }
      await Promise.all(sends);
      assert.equal(sockets.length, 1);
    } finally {
      await c.close();
    }
  });

  test("a client id already in flight is refused", async () => {
    const { client: c } = client(gw);
    try {
      const first = c.send("conv-dup", "one", { clientId: "same" });
      assert.throws(() => c.send("conv-dup", "two", { clientId: "same" }), (e: unknown) => e instanceof RumorError && e.code === "INVALID_ARGUMENT");
      await first.text();
      // Once finished, the id may be used again.
      assert.equal(await c.send("conv-dup", "three", { clientId: "same" }).text(), "three");
    } finally {
      await c.close();
    }
  });

  test("aborting the signal cancels the message", async () => {
    gw.chunkDelayMs = 200;
    const { client: c } = client(gw);
    try {
      const ac = new AbortController();
      const reply = c.send("conv-cancel", "a long answer to cancel", { signal: ac.signal });
      const events: ReplyEvent[] = [];
      for await (const e of reply) {
        events.push(e);
        if (e.type === "accepted") ac.abort();
      }
      assert.deepEqual(events.map((e) => e.type), ["accepted", "error"]);
      const last = events.at(-1)!;
      assert.equal(last.type === "error" && last.code, "CANCELLED");
      await assert.rejects(reply.text(), (e: unknown) => e instanceof RumorError && e.code === "CANCELLED");
      await sleep(50);
      const cancel = gw.received.find((r) => r.frame.frame.case === "cancel");
      assert.ok(cancel && cancel.frame.frame.case === "cancel");
      assert.equal(cancel.frame.frame.value.messageId, reply.messageId);
    } finally {
      gw.chunkDelayMs = 5;
      await c.close();
    }
  });

  test("an already aborted signal never sends", async () => {
    const { client: c } = client(gw);
    try {
      const ac = new AbortController();
      ac.abort();
      const events = await collect(c.send("conv-pre-abort", "x", { signal: ac.signal, clientId: "pre-abort" }));
      assert.deepEqual(events.map((e) => e.type), ["error"]);
      assert.ok(!gw.received.some((r) => r.frame.frame.case === "send" && r.frame.frame.value.clientId === "pre-abort"));
    } finally {
      await c.close();
    }
  });

  test("a second client watching sees the first client's message and reply", async () => {
    const { client: a } = client(gw);
    const { client: b } = client(gw, { binary: true });
    try {
      const watch = b.watch("conv-watch");
      await watch.ready();
      const reply = a.send("conv-watch", "watch me");
      const seen = await until(watch, (e) => e.type === "end");
      assert.equal(await reply.text(), "watch me");
      assert.deepEqual(seen.map((e) => e.type), ["message", "chunk", "chunk", "chunk", "end"]);
      const msg = seen[0]!;
      assert.equal(msg.type === "message" && msg.text, "watch me");
      assert.equal(msg.type === "message" && msg.messageId, reply.messageId);
      assert.equal(seen.flatMap((e) => (e.type === "chunk" ? [e.text] : [])).join(""), "watch me");
      assert.equal(watch.position?.seq, seen.at(-1)!.type === "end" ? (seen.at(-1) as { position: { seq: bigint } }).position.seq : 0n);
      watch.close();
      await sleep(30);
      assert.ok(gw.received.some((r) => r.frame.frame.case === "unwatch"));
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("watch({after}) replays what came after a position", async () => {
    const { client: c } = client(gw);
    try {
      await c.send("conv-after", "first").text();
      const w1 = c.watch("conv-after");
      await w1.ready();
      const mark = w1.position!;
      w1.close();
      await c.send("conv-after", "second").text();
      const w2 = c.watch("conv-after", { after: mark });
      const seen = await until(w2, (e) => e.type === "end");
      assert.equal(seen[0]?.type === "message" && seen[0].text, "second");
      assert.equal(seen[0]?.position?.seq, mark.seq + 1n);
      w2.close();
    } finally {
      await c.close();
    }
  });

  test("watchers of one conversation share a subscription; a later `after` replays only for its watcher", async () => {
    const { client: c } = client(gw);
    try {
      const key = "conv-shared";
      await c.send(key, "one").text();
      const w1 = c.watch(key);
      await w1.ready();
      const start = w1.position!;
      await c.send(key, "two").text();
      const firstRun = await until(w1, (e) => e.type === "end");
      // w2 starts from where w1 started: it gets "two" replayed; w1 must not see it twice.
      const w2 = c.watch(key, { after: start });
      const replay = await until(w2, (e) => e.type === "end");
      assert.deepEqual(replay.map((e) => e.position?.seq), firstRun.map((e) => e.position?.seq));
      await c.send(key, "three").text();
      const w1Next = await until(w1, (e) => e.type === "end");
      const w2Next = await until(w2, (e) => e.type === "end");
      assert.equal(w1Next[0]?.type === "message" && w1Next[0].text, "three", "no repeats for w1");
      assert.equal(w2Next[0]?.type === "message" && w2Next[0].text, "three");
      w1.close();
      w2.close();
    } finally {
      await c.close();
    }
  });

  test("a watch's position moves as the caller takes events, not as they arrive", async () => {
    const { client: c } = client(gw);
    try {
      const key = "conv-position";
      await c.send(key, "one").text();
      const w = c.watch(key);
      await w.ready();
      const start = w.position!;
      await c.send(key, "two").text();
      await sleep(20); // the events are queued by now
      assert.deepEqual(w.position, start);
      const taken = await until(w, (e) => e.type === "message");
      assert.deepEqual(w.position, taken[0]!.position);
      w.close();
    } finally {
      await c.close();
    }
  });

  test("a watch resumes after a dropped connection without loss or duplicates", async () => {
    const { client: a } = client(gw);
    const { client: b, sockets } = client(gw);
    try {
      const watch = b.watch("conv-resume-watch");
      await watch.ready();
      await a.send("conv-resume-watch", "before the drop").text();
      const first = await until(watch, (e) => e.type === "end");
      assert.equal(first.length, 5);
      // Drop B's connection; A's message goes in while B is away.
      sockets[0]!.terminate();
      await a.send("conv-resume-watch", "while away").text();
      const second = await until(watch, (e) => e.type === "end");
      assert.ok(sockets.length >= 2, "B reconnected");
      assert.deepEqual(second.map((e) => e.type), ["message", "chunk", "chunk", "chunk", "end"]);
      assert.equal(second[0]?.type === "message" && second[0].text, "while away");
      const seqs = [...first, ...second].map((e) => e.position!.seq);
      for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1]! + 1n, "contiguous positions");
      watch.close();
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("a gap is surfaced to the watcher, never hidden", async () => {
    const small = await FakeGateway.start({ bufferSize: 3 });
    const { client: a } = client(small);
    const { client: b, sockets } = client(small, { reconnect: { initialMs: 300, maxMs: 300, jitter: 0 } });
    try {
      const watch = b.watch("conv-gap");
      await watch.ready();
      await a.send("conv-gap", "one").text();
      await until(watch, (e) => e.type === "end");
      sockets[0]!.terminate();
      // Five events go by while B is away; the buffer keeps three.
      await a.send("conv-gap", "two").text();
      const seen = await until(watch, (e) => e.type === "end");
      assert.equal(seen[0]?.type, "gap");
      const gap = seen[0] as Extract<WatchEvent, { type: "gap" }>;
      assert.equal(gap.reason, "evicted");
      assert.equal(gap.after?.seq, 5n);
      assert.equal(gap.resume?.seq, 8n);
      assert.deepEqual(seen.slice(1).map((e) => e.position?.seq), [8n, 9n, 10n]);
      watch.close();
    } finally {
      await a.close();
      await b.close();
      await small.close();
    }
  });

  test("an in-flight send resumes after a dropped connection", async () => {
    gw.chunkDelayMs = 60;
    const { client: c, sockets } = client(gw);
    try {
      await c.send("conv-resume-send", "earlier").text();
      const reply = c.send("conv-resume-send", "resumed across a reconnect");
      const events: ReplyEvent[] = [];
      for await (const e of reply) {
        events.push(e);
        if (e.type === "chunk" && chunkTexts(events).length === 1) sockets[0]!.terminate();
      }
      assert.equal(events.at(-1)?.type, "done", show(events.at(-1)));
      assert.equal(chunkTexts(events).join(""), "resumed across a reconnect");
      assert.equal(sockets.length, 2);
      const seqs = events.flatMap((e) => (e.type === "chunk" || e.type === "done" ? [e.position!.seq] : []));
      for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1]! + 1n);
    } finally {
      gw.chunkDelayMs = 5;
      await c.close();
    }
  });

  test("a send accepted before any position was seen resumes from the epoch's start", async () => {
    gw.chunkDelayMs = 80;
    const { client: c, sockets } = client(gw);
    try {
      const reply = c.send("conv-resume-fresh", "no position yet");
      const events: ReplyEvent[] = [];
      for await (const e of reply) {
        events.push(e);
        if (e.type === "accepted") sockets[0]!.terminate();
      }
      assert.equal(events.at(-1)?.type, "done", show(events.at(-1)));
      assert.equal(chunkTexts(events).join(""), "no position yet");
      const watches = gw.received.filter(
        (r) => r.frame.frame.case === "watch" && r.frame.frame.value.conversation === "conv-resume-fresh",
      );
      assert.equal(watches.length, 2, "a watch from now, then one from the epoch's start");
    } finally {
      gw.chunkDelayMs = 5;
      await c.close();
    }
  });

  test("a resumed reply with a hole fails with RESUME_FAILED", async () => {
    const small = await FakeGateway.start({ bufferSize: 2, chunkDelayMs: 40 });
    const { client: c, sockets } = client(small, { reconnect: { initialMs: 400, maxMs: 400, jitter: 0 } });
    try {
      const reply = c.send("conv-hole", "this reply will have a hole");
      const events: ReplyEvent[] = [];
      for await (const e of reply) {
        events.push(e);
        if (e.type === "chunk") sockets[0]!.terminate();
      }
      const last = events.at(-1)!;
      assert.equal(last.type === "error" && last.code, "RESUME_FAILED", show(last));
    } finally {
      await c.close();
      await small.close();
    }
  });

  test("a hole in a resumed reply is filled from the bridge's stored copy", async () => {
    const bridged = await FakeGateway.start({ bufferSize: 2, chunkDelayMs: 40, bridge: true });
    const { client: c, sockets } = client(bridged, { reconnect: { initialMs: 400, maxMs: 400, jitter: 0 } });
    try {
      const reply = c.send("conv-stored", "filled in from the store");
      const events: ReplyEvent[] = [];
      for await (const e of reply) {
        events.push(e);
        if (e.type === "chunk" && chunkTexts(events).length === 1) sockets[0]!.terminate();
      }
      assert.equal(events.at(-1)?.type, "done", show(events.at(-1)));
      assert.equal(chunkTexts(events).join(""), "filled in from the store");
      const filled = events.filter((e) => e.type === "chunk").at(-1)!;
      assert.equal(filled.type === "chunk" && filled.position, undefined, "the filled-in text has no position");
    } finally {
      await c.close();
      await bridged.close();
    }
  });

  test("a watcher of an empty conversation gets what happened while it was away", async () => {
    const { client: a } = client(gw);
    const { client: b, sockets } = client(gw, { reconnect: { initialMs: 200, maxMs: 200, jitter: 0 } });
    try {
      const watch = b.watch("conv-empty-away");
      await watch.ready();
      assert.equal(watch.position, undefined);
      sockets[0]!.terminate();
      await a.send("conv-empty-away", "while away").text();
      const seen = await until(watch, (e) => e.type === "end");
      assert.deepEqual(seen.map((e) => e.type), ["message", "chunk", "chunk", "chunk", "end"]);
      assert.equal(seen[0]!.position?.seq, 1n);
      watch.close();
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("without reconnecting, an in-flight send fails with CONNECTION_LOST", async () => {
    gw.chunkDelayMs = 100;
    const { client: c, sockets } = client(gw, { reconnect: false });
    try {
      const reply = c.send("conv-no-reconnect", "x");
      const events: ReplyEvent[] = [];
      for await (const e of reply) {
        events.push(e);
        if (e.type === "accepted") sockets[0]!.terminate();
      }
      const last = events.at(-1)!;
      assert.equal(last.type === "error" && last.code, "CONNECTION_LOST");
      // The client connects again lazily for the next call.
      gw.chunkDelayMs = 5;
      assert.equal(await c.send("conv-no-reconnect", "again").text(), "again");
    } finally {
      gw.chunkDelayMs = 5;
      await c.close();
    }
  });

  test("no gateway: sends fail with CONNECTION_LOST after the grace", async () => {
    const down = await FakeGateway.start();
    const url = down.wsUrl;
    await down.close();
    const c = new RumorClient({ url, resumeGraceMs: 300, reconnect: { initialMs: 20, maxMs: 50 } });
    const reconnects: number[] = [];
    c.on("reconnecting", (r: { attempt: number }) => reconnects.push(r.attempt));
    try {
      await assert.rejects(c.send("conv-down", "x").text(), (e: unknown) => e instanceof RumorError && e.code === "CONNECTION_LOST");
      assert.ok(reconnects.length >= 2, `retried ${reconnects.length} times`);
    } finally {
      await c.close();
    }
  });

  test("authentication: header, query parameter, and refusal", async () => {
    const locked = await FakeGateway.start({ token: "sekret" });
    try {
      const good = new RumorClient({ url: locked.wsUrl, token: "sekret" });
      assert.equal(await good.send("conv-auth", "ok").text(), "ok");
      await good.close();
      const query = new RumorClient({ url: locked.wsUrl, token: "sekret", tokenInQuery: true });
      assert.equal(await query.send("conv-auth", "ok").text(), "ok");
      await query.close();
      const bad = new RumorClient({ url: locked.wsUrl, token: "wrong", reconnect: { initialMs: 10 } });
      const disconnects: { willReconnect: boolean }[] = [];
      bad.on("disconnected", (d: { willReconnect: boolean }) => disconnects.push(d));
      await assert.rejects(bad.send("conv-auth", "no").text(), (e: unknown) => e instanceof RumorError && e.code === "UNAUTHENTICATED");
      assert.deepEqual(disconnects.map((d) => d.willReconnect), [false], "a refused credential is not retried");
      await bad.close();
    } finally {
      await locked.close();
    }
  });

  test("an upgrade refused with 401 is final; with 503 it is retried", async () => {
    const statuses: number[] = [401, 503, 503];
    let upgrades = 0;
    const server = createServer();
    server.on("upgrade", (_req, socket) => {
      const status = statuses[Math.min(upgrades, statuses.length - 1)]!;
      upgrades += 1;
      socket.end(`HTTP/1.1 ${status} Nope\r\nContent-Length: 0\r\nRetry-After: 0\r\n\r\n`);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const c = new RumorClient({ url, reconnect: { initialMs: 10, maxMs: 20 }, resumeGraceMs: 300 });
      await assert.rejects(
        c.send("conv-401", "x").text(),
        (e: unknown) => e instanceof RumorError && e.code === "UNAUTHENTICATED" && e.status === 401,
      );
      assert.equal(upgrades, 1, "401 is not retried");
      // The next attempts get 503: retried until the grace runs out.
      await assert.rejects(c.send("conv-503", "x").text(), (e: unknown) => e instanceof RumorError && e.code === "CONNECTION_LOST");
      assert.ok(upgrades >= 3, `503 retried (${upgrades} upgrades)`);
      await c.close();
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  test("a gateway without a common version", async () => {
    const v2 = await FakeGateway.start({ version: 2 });
    const c = new RumorClient({ url: v2.wsUrl });
    try {
      await assert.rejects(c.send("conv-v", "x").text(), (e: unknown) => e instanceof RumorError && e.code === "UNSUPPORTED_VERSION");
    } finally {
      await c.close();
      await v2.close();
    }
  });

  test("close() ends replies with CLOSED and watches normally", async () => {
    gw.chunkDelayMs = 200;
    const { client: c } = client(gw);
    try {
      const watch = c.watch("conv-close");
      await watch.ready();
      const reply = c.send("conv-close", "never finished");
      const watched = collect(watch);
      for await (const e of reply) if (e.type === "accepted") break;
      await c.close();
      await assert.rejects(reply.text(), (e: unknown) => e instanceof RumorError && e.code === "CLOSED");
      await watched; // ends without throwing
      assert.throws(() => c.send("conv-close", "x"), (e: unknown) => e instanceof RumorError && e.code === "CLOSED");
    } finally {
      gw.chunkDelayMs = 5;
    }
  });

  test("breaking out of a watch unwatches", async () => {
    const { client: c } = client(gw);
    try {
      const watch = c.watch("conv-break");
      await watch.ready();
      const sent = c.send("conv-break", "x");
      for await (const e of watch) if (e.type === "message") break;
      await sent.text();
      await sleep(30);
      assert.ok(
        gw.received.some((r) => r.frame.frame.case === "unwatch" && r.frame.frame.value.conversation === "conv-break"),
      );
    } finally {
      await c.close();
    }
  });
});
