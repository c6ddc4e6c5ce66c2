// The example BFF (examples/bff/server.mjs): its own authentication and
// prefix rule, and the relay of replies and watches as SSE. Runs against the
// fake gateway always, and against the real one when RUMOR_EDGE_URL is set.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import { randomUUID } from "node:crypto";
import { RumorClient, readSse, type SseEvent } from "@rumor/client";
import { createBff } from "../examples/bff/server.mjs";
import { FakeGateway } from "./support/fake-gateway.js";

const ALICE = { authorization: "Bearer alice-secret-token" };

async function events(res: Response, until?: (e: SseEvent) => boolean): Promise<SseEvent[]> {
  const out: SseEvent[] = [];
  for await (const e of readSse(res.body as AsyncIterable<Uint8Array>)) {
    out.push(e);
    if (until?.(e)) break;
  }
  return out;
}

function suite(name: string, gatewayUrl: () => Promise<string>, cleanup: () => Promise<void>, skip: string | false = false) {
  describe(name, { skip, timeout: 60_000 }, () => {
    let client: RumorClient;
    let server: Server;
    let base = "";
    before(async () => {
      const token = process.env["RUMOR_EDGE_TOKEN"];
      client = new RumorClient({ url: await gatewayUrl(), ...(token ? { token } : {}) });
      server = createBff({ client });
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    after(async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await client.close();
      await cleanup();
    });

    test("no or unknown token: 401; another user's prefix: 403", async () => {
      let res = await fetch(`${base}/chat/user-alice/x`, { method: "POST", body: '{"text":"hi"}' });
      assert.equal(res.status, 401);
      res = await fetch(`${base}/chat/user-alice/x`, { method: "POST", body: '{"text":"hi"}', headers: { authorization: "Bearer nope" } });
      assert.equal(res.status, 401);
      res = await fetch(`${base}/chat/user-bob/x`, { method: "POST", body: '{"text":"hi"}', headers: ALICE });
      assert.equal(res.status, 403);
      res = await fetch(`${base}/watch/user-alicex/x`, { headers: ALICE });
      assert.equal(res.status, 403, "the prefix ends with a slash");
      res = await fetch(`${base}/chat/user-alice/x`, { method: "POST", body: "not json", headers: ALICE });
      assert.equal(res.status, 400);
    });

    test("POST /chat streams the reply as SSE", async () => {
      const key = `user-alice/bff-chat-${randomUUID()}`;
      const res = await fetch(`${base}/chat/${key}`, { method: "POST", body: JSON.stringify({ text: "hello via the BFF" }), headers: ALICE });
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type") ?? "", /text\/event-stream/);
      const got = await events(res);
      assert.equal(got[0]?.event, "accepted");
      assert.equal(got.at(-1)?.event, "done", JSON.stringify(got.at(-1)));
      const text = got.filter((e) => e.event === "chunk").map((e) => JSON.parse(e.data).text).join("");
      assert.equal(text, "hello via the BFF");
    });

    test("GET /watch streams events with resumable ids", async () => {
      const key = `user-alice/bff-watch-${randomUUID()}`;
      const ac = new AbortController();
      const res = await fetch(`${base}/watch/${key}`, { headers: ALICE, signal: ac.signal });
      assert.equal(res.status, 200);
      const iterator = readSse(res.body as AsyncIterable<Uint8Array>);
      const first = await iterator.next();
      assert.equal(first.value?.event, "watching");
      const chat = await fetch(`${base}/chat/${key}`, { method: "POST", body: JSON.stringify({ text: "seen by the watcher" }), headers: ALICE });
      await events(chat);
      const seen: SseEvent[] = [];
      for (;;) {
        const next = await iterator.next();
        if (next.done) break;
        seen.push(next.value);
        if (next.value.event === "end") break;
      }
      ac.abort();
      const message = seen.find((e) => e.event === "message");
      assert.equal(message && JSON.parse(message.data).text, "seen by the watcher");
      assert.ok(seen.every((e) => e.id && /:\d+$/.test(e.id)), "every event has an epoch:seq id");

      // Resume with Last-Event-ID: what came after the message event.
      const res2 = await fetch(`${base}/watch/${key}`, { headers: { ...ALICE, "last-event-id": message!.id! } });
      const again = await events(res2, (e) => e.event === "end");
      assert.deepEqual(
        again.filter((e) => e.event !== "watching").map((e) => e.event),
        seen.slice(seen.indexOf(message!) + 1).map((e) => e.event),
      );
    });
  });
}

let fake: FakeGateway | undefined;
suite(
  "example BFF, with the fake gateway",
  async () => {
    fake = await FakeGateway.start();
    return fake.wsUrl;
  },
  async () => {
    await fake?.close();
  },
);

const edge = process.env["RUMOR_EDGE_URL"];
suite(
  "example BFF, with the gateway at RUMOR_EDGE_URL",
  async () => edge!,
  async () => undefined,
  edge ? false : "RUMOR_EDGE_URL is not set: this needs a running gateway",
);
