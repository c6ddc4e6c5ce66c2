// sendHttp against the fake gateway (JSON and server-sent events), and its
// error mapping against hand-made answers.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { RumorError, messagesUrl, sendHttp } from "@rumor/client";
import { FakeGateway } from "./support/fake-gateway.js";

describe("sendHttp with the fake gateway", () => {
  let gw: FakeGateway;
  before(async () => {
    gw = await FakeGateway.start({ token: "t0k" });
  });
  after(async () => {
    await gw.close();
  });

  test("JSON: the whole reply", async () => {
    const reply = await sendHttp(gw.url, "user-1/http json", "hello over http", { token: "t0k", clientId: "h1" });
    assert.equal(reply.text, "hello over http");
    assert.equal(reply.clientId, "h1");
    assert.equal(reply.conversation, "user-1/http json");
    assert.equal(reply.messageId.length, 26);
    assert.equal(reply.usage?.backend, "echo");
  });

  test("a trace context given goes as the traceparent header", async () => {
    const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    await sendHttp(gw.url, "http-traced", "traced", { token: "t0k", traceparent });
    assert.equal(gw.httpHeaders.at(-1)?.["traceparent"], traceparent);
  });

  test("SSE: accepted, chunks, done", async () => {
    const stream = sendHttp(gw.url, "http-sse", "streamed over http", { token: "t0k", stream: true });
    const types: string[] = [];
    for await (const e of stream) types.push(e.type);
    assert.deepEqual(types, ["accepted", "chunk", "chunk", "chunk", "done"]);
    assert.equal(await stream.text(), "streamed over http");
  });

  test("a wrong credential is UNAUTHENTICATED with status 401", async () => {
    await assert.rejects(
      sendHttp(gw.url, "c", "x", { token: "nope" }),
      (e: unknown) => e instanceof RumorError && e.code === "UNAUTHENTICATED" && e.status === 401,
    );
    const events = [];
    for await (const e of sendHttp(gw.url, "c", "x", { token: "nope", stream: true })) events.push(e);
    assert.equal(events.length, 1);
    assert.equal(events[0]!.type === "error" && events[0]!.code, "UNAUTHENTICATED");
  });

  test("aborting a streamed reply ends it with CANCELLED", async () => {
    gw.chunkDelayMs = 200;
    try {
      const ac = new AbortController();
      const stream = sendHttp(gw.url, "http-cancel", "to be cancelled", { token: "t0k", stream: true, signal: ac.signal });
      const types: string[] = [];
      for await (const e of stream) {
        types.push(e.type);
        if (e.type === "accepted") ac.abort();
      }
      assert.deepEqual(types, ["accepted", "error"]);
      await assert.rejects(stream.text(), (e: unknown) => e instanceof RumorError && e.code === "CANCELLED");
    } finally {
      gw.chunkDelayMs = 5;
    }
  });
});

describe("sendHttp error mapping", () => {
  let server: Server;
  let base = "";
  before(async () => {
    server = createServer((req, res) => {
      if (req.url?.includes("rate")) {
        res.writeHead(429, { "content-type": "application/json", "retry-after": "2" });
        res.end(JSON.stringify({ error: { code: "ERROR_CODE_RATE_LIMITED", message: "slow down", retry_after_ms: 1500 } }));
      } else if (req.url?.includes("plain")) {
        res.writeHead(503, { "content-type": "text/plain", "retry-after": "3" });
        res.end("overloaded");
      } else {
        // An SSE stream that ends before the reply does.
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.end('event: accepted\ndata: {"message_id":"m1"}\n\nevent: chunk\ndata: {"text":"par"}\n\n');
      }
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const addr = server.address();
    base = `http://127.0.0.1:${typeof addr === "object" && addr ? addr.port : 0}/`;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  test("an ErrorBody gives the code and retry_after_ms", async () => {
    await assert.rejects(
      sendHttp(base, "rate", "x"),
      (e: unknown) => e instanceof RumorError && e.code === "RATE_LIMITED" && e.retryAfterMs === 1500 && e.status === 429,
    );
  });

  test("no ErrorBody: the code from the status, the retry from Retry-After", async () => {
    await assert.rejects(
      sendHttp(base, "plain", "x"),
      (e: unknown) => e instanceof RumorError && e.code === "UNAVAILABLE" && e.retryAfterMs === 3000 && e.status === 503,
    );
  });

  test("a stream that stops early is CONNECTION_LOST, with the text so far in the events", async () => {
    const stream = sendHttp(base, "cut", "x", { stream: true });
    const events = [];
    for await (const e of stream) events.push(e);
    assert.deepEqual(events.map((e) => e.type), ["accepted", "chunk", "error"]);
    await assert.rejects(stream.text(), (e: unknown) => e instanceof RumorError && e.code === "CONNECTION_LOST");
  });

  test("messagesUrl encodes the key and tolerates /v1 and trailing slashes", () => {
    assert.equal(messagesUrl("http://h:1", "user-1/a b"), "http://h:1/v1/conversations/user-1%2Fa%20b/messages");
    assert.equal(messagesUrl("http://h:1/v1/", "c"), "http://h:1/v1/conversations/c/messages");
  });
});
