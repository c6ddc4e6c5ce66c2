// The frame codec: JSON (proto3 JSON mapping with the .proto's field names)
// and protobuf, both ways, with the generated types.

import { test } from "node:test";
import assert from "node:assert/strict";
import { create, equals } from "@bufbuild/protobuf";
import {
  clientFrame,
  decodeClientFrame,
  decodeServerFrame,
  encodeClientFrame,
  encodeServerFrame,
  messageFromJson,
  messageToJson,
  proto,
  serverFrame,
} from "@rumor/client";

test("a send frame is written as JSON with the .proto's field names", () => {
  const frame = clientFrame({
    frame: { case: "send", value: { conversation: "c1", clientId: "a1", text: "hi", timeoutMs: 5000 } },
  });
  const text = encodeClientFrame(frame, false);
  assert.equal(typeof text, "string");
  assert.deepEqual(JSON.parse(text as string), {
    send: { conversation: "c1", client_id: "a1", text: "hi", timeout_ms: 5000 },
  });
});

test("hello and watch frames match the protocol's examples", () => {
  const hello = encodeClientFrame(clientFrame({ frame: { case: "hello", value: { versions: [1], client: "web" } } }), false);
  assert.deepEqual(JSON.parse(hello as string), { hello: { versions: [1], client: "web" } });

  const watch = encodeClientFrame(
    clientFrame({
      frame: { case: "watch", value: { conversation: "c1", after: { epoch: "w2-17", seq: 9007199254740993n } } },
    }),
    false,
  );
  // 64-bit integers are strings in proto3 JSON (and keep their precision).
  assert.deepEqual(JSON.parse(watch as string), {
    watch: { conversation: "c1", after: { epoch: "w2-17", seq: "9007199254740993" } },
  });

  const ping = encodeClientFrame(clientFrame({ frame: { case: "ping", value: { nonce: 7n } } }), false);
  assert.deepEqual(JSON.parse(ping as string), { ping: { nonce: "7" } });
});

test("server frames are read from JSON in either field-name spelling", () => {
  const snake = decodeServerFrame(
    '{"accepted": {"conversation": "c1", "client_id": "a1", "message_id": "01HZX3Y9Q8K7V6T5R4P3N2M1B0"}}',
  );
  const camel = decodeServerFrame('{"accepted": {"conversation": "c1", "clientId": "a1", "messageId": "01HZX3Y9Q8K7V6T5R4P3N2M1B0"}}');
  assert.equal(snake.frame.case, "accepted");
  assert.ok(equals(proto.ServerFrameSchema, snake, camel));
  if (snake.frame.case === "accepted") {
    assert.equal(snake.frame.value.clientId, "a1");
    assert.equal(snake.frame.value.messageId, "01HZX3Y9Q8K7V6T5R4P3N2M1B0");
  }
});

test("error codes travel by name", () => {
  const frame = serverFrame({
    frame: {
      case: "error",
      value: { conversation: "c1", clientId: "a1", messageId: "m1", code: proto.ErrorCode.CANCELLED, message: "cancelled" },
    },
  });
  const json = JSON.parse(encodeServerFrame(frame, false) as string);
  assert.equal(json.error.code, "ERROR_CODE_CANCELLED");
  assert.equal(json.error.message_id, "m1");
  const back = decodeServerFrame(JSON.stringify(json));
  assert.ok(equals(proto.ServerFrameSchema, frame, back));
  // The enum's number is accepted too, as proto3 JSON allows.
  const numeric = decodeServerFrame('{"error": {"code": 11}}');
  assert.equal(numeric.frame.case === "error" && numeric.frame.value.code, proto.ErrorCode.CANCELLED);
});

test("fields and frame kinds newer than this client are ignored, not fatal", () => {
  const f = decodeServerFrame('{"chunk": {"conversation": "c1", "text": "x", "some_new_field": 3}}');
  assert.equal(f.frame.case, "chunk");
  const unknownKind = decodeServerFrame('{"some_new_frame": {"a": 1}}');
  assert.equal(unknownKind.frame.case, undefined);
});

test("a frame that is not JSON, or has a field of the wrong type, throws", () => {
  assert.throws(() => decodeServerFrame("not json"));
  assert.throws(() => decodeServerFrame('{"chunk": {"text": 5}}'));
});

const sampleServerFrames = [
  serverFrame({
    frame: {
      case: "welcome",
      value: { version: 1, gateway: "gateway-1", limits: { maxFrameBytes: 1 << 20, maxTextBytes: 65536, maxInFlight: 64, messagesPerSecond: 20 } },
    },
  }),
  serverFrame({
    frame: {
      case: "chunk",
      value: {
        conversation: "c1",
        clientId: "a1",
        messageId: "01M",
        text: "Hél🙂",
        worker: "worker-2",
        position: { epoch: "worker-2@1700000000000", seq: 18446744073709551615n },
      },
    },
  }),
  serverFrame({
    frame: {
      case: "done",
      value: {
        conversation: "c1",
        clientId: "a1",
        messageId: "01M",
        worker: "worker-2",
        replayed: true,
        usage: { promptTokens: 10, completionTokens: 20, cachedTokens: 5, firstTokenMs: 42, backend: "vllm", model: "m" },
        position: { epoch: "e", seq: 3n },
      },
    },
  }),
  serverFrame({
    frame: {
      case: "event",
      value: {
        conversation: "c1",
        position: { epoch: "e", seq: 4n },
        event: { case: "gap", value: { after: { epoch: "d", seq: 9n }, resume: { epoch: "e", seq: 1n }, reason: "epoch" } },
      },
    },
  }),
  serverFrame({
    frame: {
      case: "event",
      value: {
        conversation: "c1",
        event: { case: "stored", value: { messageId: "01M", kind: "reply", text: "t", worker: "w", createdUnixMs: 1700000000123n } },
      },
    },
  }),
  serverFrame({
    frame: {
      case: "event",
      value: {
        conversation: "c1",
        position: { epoch: "e", seq: 5n },
        event: { case: "end", value: { messageId: "01M", worker: "w", error: proto.ErrorCode.BACKEND, errorMessage: "boom" } },
      },
    },
  }),
  serverFrame({ frame: { case: "watching", value: { conversation: "c1", from: { epoch: "e", seq: 5n } } } }),
  serverFrame({ frame: { case: "pong", value: { nonce: 123456789012345678n } } }),
];

test("server frames survive a JSON round trip", () => {
  for (const frame of sampleServerFrames) {
    const text = encodeServerFrame(frame, false);
    assert.equal(typeof text, "string");
    assert.ok(!/[a-z][A-Z]/.test(Object.keys(JSON.parse(text as string)).join()), "no camelCase keys");
    assert.ok(equals(proto.ServerFrameSchema, frame, decodeServerFrame(text)), `JSON round trip of ${frame.frame.case}`);
  }
});

test("server frames survive a protobuf round trip", () => {
  for (const frame of sampleServerFrames) {
    const bytes = encodeServerFrame(frame, true);
    assert.ok(bytes instanceof Uint8Array);
    assert.ok(equals(proto.ServerFrameSchema, frame, decodeServerFrame(bytes)), `binary round trip of ${frame.frame.case}`);
  }
});

test("client frames survive both round trips", () => {
  const frames = [
    clientFrame({ frame: { case: "hello", value: { versions: [1, 2], client: "t" } } }),
    clientFrame({ frame: { case: "send", value: { conversation: "user-1/chat", clientId: "a", text: "x", model: "m", timeoutMs: 3_600_000 } } }),
    clientFrame({ frame: { case: "cancel", value: { conversation: "c", messageId: "m" } } }),
    clientFrame({ frame: { case: "watch", value: { conversation: "c" } } }),
    clientFrame({ frame: { case: "unwatch", value: { conversation: "c" } } }),
    clientFrame({ frame: { case: "ping", value: { nonce: 2n ** 64n - 1n } } }),
  ];
  for (const frame of frames) {
    assert.ok(equals(proto.ClientFrameSchema, frame, decodeClientFrame(encodeClientFrame(frame, false))));
    assert.ok(equals(proto.ClientFrameSchema, frame, decodeClientFrame(encodeClientFrame(frame, true))));
  }
});

test("a protobuf frame has the field numbers of edge.proto", () => {
  // ClientFrame.ping = 6 (tag 0x32), Ping.nonce = 1 (tag 0x08), varint 5.
  const bytes = encodeClientFrame(clientFrame({ frame: { case: "ping", value: { nonce: 5n } } }), true);
  assert.deepEqual([...(bytes as Uint8Array)], [0x32, 0x02, 0x08, 0x05]);
});

test("the HTTP bodies use the same mapping", () => {
  const body = messageToJson(proto.SendBodySchema, create(proto.SendBodySchema, { text: "hi", clientId: "a1" }));
  assert.deepEqual(body, { text: "hi", client_id: "a1" });
  const reply = messageFromJson(proto.ReplySchema, {
    conversation: "c1",
    message_id: "01M",
    client_id: "a1",
    text: "hi",
    worker: "w",
    usage: { prompt_tokens: 1, completion_tokens: 2 },
  });
  assert.equal(reply.usage?.completionTokens, 2);
  const err = messageFromJson(proto.ErrorBodySchema, { error: { code: "ERROR_CODE_RATE_LIMITED", retry_after_ms: 250 } });
  assert.equal(err.error?.code, proto.ErrorCode.RATE_LIMITED);
  assert.equal(err.error?.retryAfterMs, 250);
});
