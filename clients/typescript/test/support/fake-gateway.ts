// A stand-in for a rumor gateway, for testing the client while the real
// gateway is being written. It is NOT the gateway: it keeps everything in
// one process, has one "worker" that echoes each message back in three
// chunks, and implements just enough of docs/protocol.md to exercise the
// client's logic (matching, cancel, watch, replay, gaps, resume, HTTP, SSE,
// the OpenAI-compatible route). It listens on 127.0.0.1 only.
//
// What it does the way protocol.md says: welcome first; answers in the form
// (JSON/protobuf) it was spoken to; numbers a conversation's events within an
// epoch; replays from a bounded buffer after `watch { after }`, or sends a
// `gap` first; keeps processing a message after its sender's connection
// drops; `cancel` ends a reply with CANCELLED.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { randomBytes } from "node:crypto";
import { WebSocketServer, type WebSocket } from "ws";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  decodeClientFrame,
  encodeServerFrame,
  messageFromJson,
  messageToJson,
  proto,
  serverFrame,
} from "@rumor/client";

type EventFrame = proto.Event;
type ServerFrame = proto.ServerFrame;
type EventInit = MessageInitShape<typeof proto.EventSchema>["event"];

export interface FakeGatewayOptions {
  /** Require this bearer token (WebSocket: close 1008 without it; HTTP: 401). */
  token?: string;
  /** Delay before each chunk, ms. */
  chunkDelayMs?: number;
  /** How many events a conversation keeps for replay. */
  bufferSize?: number;
  /** Only this protocol version is spoken. */
  version?: number;
  /** Pretend a bridge stores every message and reply: send `stored` events after a gap. */
  bridge?: boolean;
}

interface Sink {
  frame(f: ServerFrame): void;
}

interface Conversation {
  key: string;
  epoch: string;
  seq: bigint;
  buffer: EventFrame[];
  watchers: Set<Peer>;
  tail: Promise<void>;
  /** What a bridge would have stored: messages and finished replies. */
  stored: MessageInitShape<typeof proto.StoredEventSchema>[];
}

interface Message {
  conversation: string;
  id: string;
  clientId: string;
  text: string;
  cancelled: boolean;
  sink: Sink | undefined;
}

class Peer implements Sink {
  binary = false;
  readonly watching = new Set<string>();
  constructor(readonly socket: WebSocket) {}
  frame(f: ServerFrame): void {
    if (this.socket.readyState !== 1) return;
    this.socket.send(encodeServerFrame(f, this.binary));
  }
}

export class FakeGateway {
  readonly conversations = new Map<string, Conversation>();
  readonly messages = new Map<string, Message>();
  readonly peers = new Set<Peer>();
  /** Every client frame received, for assertions. */
  readonly received: { frame: proto.ClientFrame; binary: boolean }[] = [];
  /** The headers of every HTTP request received, for assertions. */
  readonly httpHeaders: IncomingMessage["headers"][] = [];
  chunkDelayMs: number;
  private epochCounter = 0;

  private constructor(
    private readonly server: Server,
    private readonly wss: WebSocketServer,
    readonly options: FakeGatewayOptions,
  ) {
    this.chunkDelayMs = options.chunkDelayMs ?? 5;
  }

  static async start(options: FakeGatewayOptions = {}): Promise<FakeGateway> {
    const server = createServer();
    const wss = new WebSocketServer({ noServer: true });
    const gw = new FakeGateway(server, wss, options);
    server.on("request", (req, res) => void gw.http(req, res));
    server.on("upgrade", (req, socket, head) => {
      if (!req.url?.startsWith("/v1/ws")) {
        socket.destroy();
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => gw.connection(ws, req));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return gw;
  }

  get url(): string {
    const addr = this.server.address();
    if (addr === null || typeof addr === "string") throw new Error("not listening");
    return `http://127.0.0.1:${addr.port}`;
  }

  get wsUrl(): string {
    return this.url.replace("http:", "ws:");
  }

  /** Drops every client connection at once, as a network failure would. */
  dropAll(): void {
    for (const peer of this.peers) peer.socket.terminate();
  }

  /** The conversation moves to a new owner: a new epoch, an empty buffer. */
  newEpoch(key: string): void {
    const c = this.conversation(key);
    c.epoch = this.nextEpoch();
    c.seq = 0n;
    c.buffer = [];
  }

  async close(): Promise<void> {
    for (const peer of this.peers) peer.socket.terminate();
    this.wss.close();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // ---- WebSocket ----

  private connection(ws: WebSocket, req: IncomingMessage): void {
    if (!this.authorized(req)) {
      ws.close(1008, "unauthenticated");
      return;
    }
    const peer = new Peer(ws);
    this.peers.add(peer);
    let welcomed = false;
    const welcome = () => {
      if (welcomed) return;
      welcomed = true;
      peer.frame(
        serverFrame({
          frame: {
            case: "welcome",
            value: {
              version: this.options.version ?? 1,
              gateway: "fake-gateway",
              limits: { maxFrameBytes: 1 << 20, maxTextBytes: 65536, maxInFlight: 64, messagesPerSecond: 100 },
            },
          },
        }),
      );
    };
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      peer.binary = isBinary;
      let frame: proto.ClientFrame;
      try {
        frame = decodeClientFrame(isBinary ? new Uint8Array(data) : data.toString("utf8"));
      } catch (e) {
        peer.frame(errorFrame({ code: proto.ErrorCode.BAD_FRAME, message: String(e) }));
        return;
      }
      this.received.push({ frame, binary: isBinary });
      const f = frame.frame;
      if (f.case !== "hello") welcome();
      switch (f.case) {
        case "hello":
          if (!f.value.versions.includes(this.options.version ?? 1)) {
            peer.frame(errorFrame({ code: proto.ErrorCode.UNSUPPORTED_VERSION, message: "no common version" }));
            return;
          }
          welcome();
          return;
        case "send":
          this.accept(f.value.conversation, f.value.clientId, f.value.text, peer);
          return;
        case "cancel": {
          const m = this.messages.get(f.value.messageId);
          if (m) m.cancelled = true;
          return;
        }
        case "watch":
          this.watch(peer, f.value.conversation, f.value.after);
          return;
        case "unwatch":
          peer.watching.delete(f.value.conversation);
          this.conversations.get(f.value.conversation)?.watchers.delete(peer);
          return;
        case "ping":
          peer.frame(serverFrame({ frame: { case: "pong", value: { nonce: f.value.nonce } } }));
          return;
        default:
          peer.frame(errorFrame({ code: proto.ErrorCode.BAD_FRAME, message: "unknown frame" }));
      }
    });
    ws.on("close", () => {
      this.peers.delete(peer);
      for (const key of peer.watching) this.conversations.get(key)?.watchers.delete(peer);
      // Messages of this peer keep being processed (resume grace); their
      // frames just have nowhere to go.
      for (const m of this.messages.values()) if (m.sink === peer) m.sink = undefined;
    });
  }

  private authorized(req: IncomingMessage): boolean {
    if (this.options.token === undefined) return true;
    const header = req.headers.authorization;
    if (header === `Bearer ${this.options.token}`) return true;
    const url = new URL(req.url ?? "/", "http://x");
    return url.searchParams.get("access_token") === this.options.token;
  }

  private watch(peer: Peer, key: string, after: proto.Position | undefined): void {
    const c = this.conversation(key);
    c.watchers.add(peer);
    peer.watching.add(key);
    const last = c.buffer.length > 0 ? c.buffer[c.buffer.length - 1]!.position : undefined;
    if (after === undefined) {
      peer.frame(serverFrame({ frame: { case: "watching", value: { conversation: key, from: last } } }));
      return;
    }
    peer.frame(serverFrame({ frame: { case: "watching", value: { conversation: key, from: after } } }));
    const oldest = c.buffer[0]?.position;
    let replay: EventFrame[];
    if (after.epoch !== c.epoch || (oldest !== undefined && after.seq + 1n < oldest.seq)) {
      const resume = oldest ?? create(proto.PositionSchema, { epoch: c.epoch, seq: c.seq + 1n });
      const gap = eventFrame(key, undefined, {
        case: "gap",
        value: { after, resume, reason: after.epoch !== c.epoch ? "epoch" : "evicted" },
      });
      peer.frame(serverFrame({ frame: { case: "event", value: gap } }));
      if (this.options.bridge) {
        for (const stored of c.stored) {
          const e = eventFrame(key, undefined, { case: "stored", value: stored });
          peer.frame(serverFrame({ frame: { case: "event", value: e } }));
        }
      }
      replay = c.buffer;
    } else {
      replay = c.buffer.filter((e) => e.position!.seq > after.seq);
    }
    for (const e of replay) peer.frame(serverFrame({ frame: { case: "event", value: e } }));
  }

  // ---- the "worker": echo in three chunks ----

  private conversation(key: string): Conversation {
    let c = this.conversations.get(key);
    if (!c) {
      c = { key, epoch: this.nextEpoch(), seq: 0n, buffer: [], watchers: new Set(), tail: Promise.resolve(), stored: [] };
      this.conversations.set(key, c);
    }
    return c;
  }

  private nextEpoch(): string {
    this.epochCounter += 1;
    return `fake-${this.epochCounter}`;
  }

  /** Takes a message; resolves when its reply ended. */
  accept(key: string, clientId: string, text: string, sink: Sink | undefined): Promise<void> {
    const c = this.conversation(key);
    const m: Message = { conversation: key, id: messageId(), clientId, text, cancelled: false, sink };
    this.messages.set(m.id, m);
    m.sink?.frame(serverFrame({ frame: { case: "accepted", value: { conversation: key, clientId, messageId: m.id } } }));
    this.emit(c, { case: "message", value: { messageId: m.id, text, source: "client", origin: "fake-gateway" } });
    const run = c.tail.then(() => this.process(c, m));
    c.tail = run.catch(() => undefined);
    return run;
  }

  private async process(c: Conversation, m: Message): Promise<void> {
    const pieces = split(m.text, 3);
    for (const piece of pieces) {
      await sleep(this.chunkDelayMs);
      if (m.cancelled) break;
      const position = this.emit(c, { case: "chunk", value: { messageId: m.id, text: piece, worker: "fake-worker" } });
      m.sink?.frame(
        serverFrame({
          frame: {
            case: "chunk",
            value: { conversation: c.key, clientId: m.clientId, messageId: m.id, text: piece, worker: "fake-worker", position },
          },
        }),
      );
    }
    const usage = create(proto.UsageSchema, { promptTokens: 3, completionTokens: pieces.length, backend: "echo", model: "echo" });
    if (m.cancelled) {
      this.emit(c, {
        case: "end",
        value: { messageId: m.id, worker: "fake-worker", error: proto.ErrorCode.CANCELLED, errorMessage: "cancelled" },
      });
      m.sink?.frame(
        errorFrame({
          conversation: c.key,
          clientId: m.clientId,
          messageId: m.id,
          code: proto.ErrorCode.CANCELLED,
          message: "cancelled by the client",
        }),
      );
    } else {
      const now = BigInt(Date.now());
      c.stored.push({ messageId: m.id, kind: "inbound", text: m.text, createdUnixMs: now });
      c.stored.push({ messageId: m.id, kind: "reply", text: pieces.join(""), worker: "fake-worker", createdUnixMs: now });
      const position = this.emit(c, { case: "end", value: { messageId: m.id, worker: "fake-worker", usage } });
      m.sink?.frame(
        serverFrame({
          frame: {
            case: "done",
            value: { conversation: c.key, clientId: m.clientId, messageId: m.id, worker: "fake-worker", usage, position },
          },
        }),
      );
    }
    this.messages.delete(m.id);
  }

  private emit(c: Conversation, event: EventInit): proto.Position {
    c.seq += 1n;
    const position = create(proto.PositionSchema, { epoch: c.epoch, seq: c.seq });
    const e = eventFrame(c.key, position, event);
    c.buffer.push(e);
    if (c.buffer.length > (this.options.bufferSize ?? 1000)) c.buffer.shift();
    for (const peer of c.watchers) peer.frame(serverFrame({ frame: { case: "event", value: e } }));
    return position;
  }

  // ---- HTTP ----

  private async http(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.httpHeaders.push(req.headers);
    const url = new URL(req.url ?? "/", "http://x");
    if (this.options.token !== undefined && req.headers.authorization !== `Bearer ${this.options.token}`) {
      return json(res, 401, { error: { code: "ERROR_CODE_UNAUTHENTICATED", message: "no credential" } });
    }
    const body = await readBody(req);
    const route = /^\/v1\/conversations\/([^/]+)\/messages$/.exec(url.pathname);
    if (req.method === "POST" && route) {
      const key = decodeURIComponent(route[1]!);
      const send = messageFromJson(proto.SendBodySchema, JSON.parse(body));
      if ((req.headers.accept ?? "").includes("text/event-stream")) {
        res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no" });
        res.write(": heartbeat\n\n");
        const sink: Sink = {
          frame(f) {
            if (f.frame.case === undefined || f.frame.case === "event") return;
            const schema = frameSchema(f.frame.case);
            res.write(`event: ${f.frame.case}\ndata: ${JSON.stringify(messageToJson(schema, f.frame.value as never))}\n\n`);
          },
        };
        await this.accept(key, send.clientId, send.text, sink);
        res.end();
        return;
      }
      const parts: string[] = [];
      let reply: proto.Reply | undefined;
      let failure: proto.Error | undefined;
      await this.accept(key, send.clientId, send.text, {
        frame(f) {
          if (f.frame.case === "chunk") parts.push(f.frame.value.text);
          if (f.frame.case === "error") failure = f.frame.value;
          if (f.frame.case === "done") {
            const d = f.frame.value;
            reply = create(proto.ReplySchema, {
              conversation: d.conversation,
              messageId: d.messageId,
              clientId: d.clientId,
              text: parts.join(""),
              worker: d.worker,
              usage: d.usage,
            });
          }
        },
      });
      if (reply) return json(res, 200, messageToJson(proto.ReplySchema, reply));
      return json(res, 499, messageToJson(proto.ErrorBodySchema, create(proto.ErrorBodySchema, { error: failure })));
    }
    if (req.method === "POST" && url.pathname === "/v1/chat/completions") {
      return this.chat(req, res, JSON.parse(body));
    }
    if (req.method === "GET" && url.pathname === "/v1/models") {
      return json(res, 200, { object: "list", data: [{ id: "echo", object: "model", created: 0, owned_by: "rumor" }] });
    }
    return json(res, 404, { error: { code: "ERROR_CODE_INVALID_ARGUMENT", message: "no such route" } });
  }

  private async chat(req: IncomingMessage, res: ServerResponse, body: any): Promise<void> {
    const messages: { role: string; content: string }[] = body.messages ?? [];
    const key =
      body.prompt_cache_key ??
      (req.headers["x-rumor-conversation"] as string | undefined) ??
      `hash-${messages.slice(0, 2).map((m) => m.content).join("|").length}`;
    const last = [...messages].reverse().find((m) => m.role === "user")?.content ?? "";
    const id = `chatcmpl-${messageId()}`;
    const created = Math.floor(Date.now() / 1000);
    const model = body.model ?? "echo";
    if (body.stream) {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      const chunk = (delta: object, finish: string | null) =>
        res.write(
          `data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`,
        );
      chunk({ role: "assistant", content: "" }, null);
      await this.accept(key, "", last, {
        frame(f) {
          if (f.frame.case === "chunk") chunk({ content: f.frame.value.text }, null);
        },
      });
      chunk({}, "stop");
      res.write("data: [DONE]\n\n");
      res.end();
      return;
    }
    const parts: string[] = [];
    await this.accept(key, "", last, {
      frame(f) {
        if (f.frame.case === "chunk") parts.push(f.frame.value.text);
      },
    });
    return json(res, 200, {
      id,
      object: "chat.completion",
      created,
      model,
      choices: [{ index: 0, message: { role: "assistant", content: parts.join("") }, finish_reason: "stop" }],
      usage: { prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 },
    });
  }
}

function frameSchema(kind: NonNullable<ServerFrame["frame"]["case"]>) {
  switch (kind) {
    case "welcome":
      return proto.WelcomeSchema;
    case "accepted":
      return proto.AcceptedSchema;
    case "chunk":
      return proto.ChunkSchema;
    case "done":
      return proto.DoneSchema;
    case "error":
      return proto.ErrorSchema;
    case "event":
      return proto.EventSchema;
    case "watching":
      return proto.WatchingSchema;
    case "pong":
      return proto.PongSchema;
  }
}

function eventFrame(conversation: string, position: proto.Position | undefined, event: EventInit): EventFrame {
  return create(proto.EventSchema, { conversation, position, event });
}

function errorFrame(init: { conversation?: string; clientId?: string; messageId?: string; code: proto.ErrorCode; message: string }): ServerFrame {
  return serverFrame({ frame: { case: "error", value: init } });
}

/** 26 characters of Crockford base32, like the gateway's ids (not time-sortable here). */
function messageId(): string {
  const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  return [...randomBytes(26)].map((b) => alphabet[b % 32]).join("");
}

/** Splits text into about n pieces, never inside a character. */
function split(text: string, n: number): string[] {
  const chars = [...text];
  if (chars.length === 0) return [""];
  const size = Math.ceil(chars.length / n);
  const out: string[] = [];
  for (let i = 0; i < chars.length; i += size) out.push(chars.slice(i, i + size).join(""));
  return out;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}
