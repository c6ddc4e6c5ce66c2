// RumorClient: one WebSocket to a gateway's `/v1/ws`, shared by every send
// and watch of the application, reconnecting when it drops.
//
// The client keeps its state per conversation and per message rather than
// as a queue of frames: after a reconnect it re-creates what the new
// connection needs (a `watch` for each watched conversation and for each
// conversation with a reply to resume, the sends not yet written, pending
// cancels) from that state, so nothing depends on frames of a dead socket.

import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import WebSocket from "ws";
import { create } from "@bufbuild/protobuf";
import {
  type Accepted,
  type Chunk,
  type ClientFrame,
  type Done,
  type Error as ErrorFrame,
  type Event as EventFrame,
  LimitsSchema,
  type Limits,
  type ServerFrame,
  type Watching,
  type Welcome,
} from "./gen/rumor/edge/v1/edge_pb.js";
import { backoffDelay, backoffSchedule, type BackoffSchedule, type ReconnectOptions } from "./backoff.js";
import { clientFrame, decodeServerFrame, encodeClientFrame, type WireData } from "./codec.js";
import { RumorError, errorCodeName, type RumorErrorCode } from "./errors.js";
import { AsyncQueue } from "./queue.js";
import { ReplySink, type ReplyStream } from "./reply.js";
import {
  positionFromWire,
  positionToWire,
  seenAlready,
  usageFromWire,
  watchEventFromWire,
  type Position,
  type ReplyEvent,
  type WatchEvent,
} from "./types.js";

/** The protocol versions this client speaks. */
export const PROTOCOL_VERSIONS = [1] as const;

/** The few members of a WebSocket this client uses (those of the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string | Uint8Array, cb?: (err?: Error) => void): void;
  close(code?: number, reason?: string): void;
  terminate(): void;
  // Events used: open, message (data, isBinary), close (code, reason),
  // error (err), ping, pong, unexpected-response (req, res).
  on(event: string, listener: (...args: any[]) => void): unknown;
}

export interface WebSocketFactoryOptions {
  headers: Record<string, string>;
}

/** Makes the socket; replace it to test against a fake, or to add TLS options. */
export type WebSocketFactory = (url: string, options: WebSocketFactoryOptions) => WebSocketLike;

const OPEN = 1; // WebSocket.OPEN, the same in every implementation

/** How many idle conversations' last positions a client remembers. */
const MAX_REMEMBERED_POSITIONS = 10_000;

export interface RumorClientOptions {
  /**
   * The gateway's edge, e.g. `ws://127.0.0.1:8080` (`http(s)://` works too).
   * Without a path, `/v1/ws` is used.
   */
  url: string;
  /** The credential (API key or JWT), sent as `Authorization: Bearer`. */
  token?: string;
  /** Send the credential as the `access_token` query parameter instead of a header. */
  tokenInQuery?: boolean;
  /** Speak protobuf (binary frames) instead of JSON (text frames). */
  binary?: boolean;
  /** Reconnect with backoff after a dropped connection (the default), or not (`false`). */
  reconnect?: ReconnectOptions | false;
  /**
   * How long an accepted message's reply may wait for a reconnect before it
   * fails with `CONNECTION_LOST`. Match the gateway's `edge.resume_grace_ms`
   * (default 10 s), after which the gateway cancels it anyway.
   */
  resumeGraceMs?: number;
  /** Time to open the socket and get `welcome`, ms. Default 10 s. */
  connectTimeoutMs?: number;
  /**
   * Interval of `ping` frames, ms (default 15 s; 0: none). A connection that
   * hears nothing for two intervals is taken as dead and replaced.
   */
  pingIntervalMs?: number;
  /** Who the client is, for the gateway's logs (`hello.client`). */
  clientName?: string;
  /** Makes the WebSocket; default: the `ws` package. */
  webSocketFactory?: WebSocketFactory;
}

export interface SendOptions {
  /** The client's own name for the message (default: a random UUID). */
  clientId?: string;
  /** The model to answer with; default: the cluster's default. */
  model?: string;
  /** Time the mesh has to answer, 1 to 3,600,000 ms; default: the gateway's. */
  timeoutMs?: number;
  /**
   * The W3C trace context of your span for this message
   * (`00-<trace id>-<span id>-<flags>`): the message's spans in the cluster
   * join your trace. One the gateway does not understand is ignored.
   */
  traceparent?: string;
  /** Aborting it cancels the message: `cancel` is sent and the reply ends with `CANCELLED`. */
  signal?: AbortSignal;
}

export interface WatchOptions {
  /** Resume after this position (the last one seen); default: from now on. */
  after?: Position;
  /** Aborting it ends the watch. */
  signal?: AbortSignal;
}

/**
 * A watched conversation: iterate it for events. Iteration ends when the
 * watch is closed (close(), the signal, client.close()), and throws a
 * RumorError if the gateway refuses the watch or the connection is lost for
 * good.
 */
export interface WatchStream extends AsyncIterable<WatchEvent> {
  readonly conversation: string;
  /** The last position seen; hand it to a later watch({ after }) to resume. */
  readonly position: Position | undefined;
  /** Resolves when the gateway confirmed the subscription (`watching`). */
  ready(): Promise<void>;
  /** Stops watching. */
  close(): void;
}

/** What the gateway said in `welcome`. */
export interface WelcomeInfo {
  version: number;
  gateway: string;
  limits: Omit<Limits, "$typeName" | "$unknown">;
}

export type ConnectionState = "idle" | "connecting" | "ready" | "backoff" | "closed";

/**
 * Events (RumorClient is an EventEmitter; none of them is `error`, so an
 * unlistened one never throws):
 * - `connected` (WelcomeInfo): a connection is ready.
 * - `disconnected` ({ code, reason, willReconnect }): it dropped.
 * - `reconnecting` ({ attempt, delayMs }): a reconnect is scheduled.
 * - `warning` (RumorError): something odd that concerned no call, e.g. an
 *   unreadable frame or an error frame that matched nothing.
 */
export class RumorClient extends EventEmitter {
  private readonly url: string;
  private readonly headers: Record<string, string>;
  private readonly binary: boolean;
  private readonly schedule: BackoffSchedule | undefined;
  private readonly resumeGraceMs: number;
  private readonly connectTimeoutMs: number;
  private readonly pingIntervalMs: number;
  private readonly clientName: string;
  private readonly factory: WebSocketFactory;

  private _state: ConnectionState = "idle";
  private conn: Connection | undefined;
  private attempt = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private _welcome: WelcomeInfo | undefined;
  private nonce = 0n;

  // Sends by conversation + client id, and once accepted also by
  // conversation + message id: every frame about a message names both its
  // conversation and one of the two.
  private readonly sends = new Map<string, PendingSend>();
  private readonly byMessage = new Map<string, PendingSend>();
  // The sends of each conversation (for routing its events to resumed replies).
  private readonly byConversation = new Map<string, Set<PendingSend>>();
  // Sends cancelled before their `accepted` arrived: cancel them when it does.
  private readonly cancelOnAccept = new Set<string>();
  // Cancels of accepted messages that could not be written (no connection).
  private pendingCancels: { conversation: string; messageId: string }[] = [];
  private readonly subs = new Map<string, Subscription>();
  // The last position this client saw in each conversation (from any
  // frame), kept while the conversation has sends or a subscription here.
  private readonly positions = new Map<string, Position>();

  constructor(options: RumorClientOptions) {
    super();
    const url = new URL(options.url);
    if (url.protocol === "http:") url.protocol = "ws:";
    else if (url.protocol === "https:") url.protocol = "wss:";
    if (url.protocol !== "ws:" && url.protocol !== "wss:") {
      throw new RumorError("INVALID_ARGUMENT", `unsupported URL scheme ${url.protocol}`);
    }
    if (url.pathname === "" || url.pathname === "/") url.pathname = "/v1/ws";
    this.headers = {};
    if (options.token !== undefined) {
      if (options.tokenInQuery) url.searchParams.set("access_token", options.token);
      else this.headers["authorization"] = `Bearer ${options.token}`;
    }
    this.url = url.toString();
    this.binary = options.binary ?? false;
    this.schedule = options.reconnect === false ? undefined : backoffSchedule(options.reconnect ?? {});
    this.resumeGraceMs = options.resumeGraceMs ?? 10_000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.pingIntervalMs = options.pingIntervalMs ?? 15_000;
    this.clientName = options.clientName ?? "rumor-ts";
    this.factory = options.webSocketFactory ?? ((u, o) => new WebSocket(u, { headers: o.headers }));
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** What the gateway said in `welcome` on the current (or last) connection. */
  get welcome(): WelcomeInfo | undefined {
    return this._welcome;
  }

  /** Opens the connection now (it otherwise opens on the first send or watch); resolves on `welcome`. */
  connect(): Promise<WelcomeInfo> {
    this.assertOpen();
    if (this._state === "ready" && this._welcome) return Promise.resolve(this._welcome);
    return new Promise((resolve, reject) => {
      const onConnected = (w: WelcomeInfo) => {
        this.off("disconnected", onDisconnected);
        resolve(w);
      };
      const onDisconnected = (d: { code: number; reason: string; error?: RumorError }) => {
        this.off("connected", onConnected);
        reject(d.error ?? new RumorError("CONNECTION_LOST", `connection closed (${d.code} ${d.reason})`));
      };
      this.once("connected", onConnected);
      this.once("disconnected", onDisconnected);
      this.ensureConnection();
    });
  }

  /**
   * Sends a message and returns its reply as a stream of events (and
   * `text()`). Many sends, on any conversations, may be in flight at once.
   */
  send(conversation: string, text: string, options: SendOptions = {}): ReplyStream {
    this.assertOpen();
    checkConversation(conversation);
    const clientId = options.clientId ?? randomUUID();
    if (clientId.length === 0) throw new RumorError("INVALID_ARGUMENT", "clientId must not be empty");
    const key = sendKey(conversation, clientId);
    if (this.sends.has(key)) {
      throw new RumorError("INVALID_ARGUMENT", `a message with client id ${clientId} is already in flight`, {
        conversation,
        clientId,
      });
    }
    const sink = new ReplySink(conversation, clientId, () =>
      this.abandon(send, new RumorError("CANCELLED", "cancelled by the client", { conversation, clientId })),
    );
    const send = new PendingSend(sink, text, options);
    this.sends.set(key, send);
    let group = this.byConversation.get(conversation);
    if (!group) this.byConversation.set(conversation, (group = new Set()));
    group.add(send);

    const signal = options.signal;
    if (signal) {
      if (signal.aborted) {
        this.abandon(send, new RumorError("CANCELLED", "cancelled by the client", { conversation, clientId }));
        return sink;
      }
      const onAbort = () =>
        this.abandon(send, new RumorError("CANCELLED", "cancelled by the client", { conversation, clientId }));
      signal.addEventListener("abort", onAbort, { once: true });
      send.cleanups.push(() => signal.removeEventListener("abort", onAbort));
    }
    if (options.timeoutMs !== undefined && options.timeoutMs > 0) {
      // The gateway enforces the timeout and answers DEADLINE_EXCEEDED; this
      // local deadline (a little later) only covers a gateway that is gone.
      const timer = setTimeout(
        () =>
          this.abandon(
            send,
            new RumorError("DEADLINE_EXCEEDED", `no reply within ${options.timeoutMs} ms`, { conversation, clientId }),
          ),
        options.timeoutMs + 5_000,
      );
      send.cleanups.push(() => clearTimeout(timer));
    }

    if (this._state === "ready") {
      this.writeSend(send);
    } else {
      // Calls wait for a connection as long as a reply waits to be resumed.
      send.waitTimer = setTimeout(() => {
        if (send.state === "queued") {
          this.finish(
            send,
            new RumorError("CONNECTION_LOST", `no connection to the gateway within ${this.resumeGraceMs} ms`, {
              conversation,
              clientId,
            }),
          );
        }
      }, this.resumeGraceMs);
      this.ensureConnection();
    }
    return sink;
  }

  /**
   * Watches a conversation: every message and reply in it, from any client,
   * arrives as events in order. After a reconnect the client re-watches from
   * the last position it saw; what cannot be replayed arrives as a `gap`.
   */
  watch(conversation: string, options: WatchOptions = {}): WatchStream {
    this.assertOpen();
    checkConversation(conversation);
    const watcher = new Watcher(conversation, options.after, (w) => this.removeWatcher(w));
    let sub = this.subs.get(conversation);
    const fresh = sub === undefined;
    if (!sub) {
      sub = new Subscription(conversation);
      this.subs.set(conversation, sub);
    }
    sub.watchers.add(watcher);

    const signal = options.signal;
    if (signal) {
      if (signal.aborted) {
        watcher.close();
        return watcher;
      }
      const onAbort = () => watcher.close();
      signal.addEventListener("abort", onAbort, { once: true });
      watcher.cleanups.push(() => signal.removeEventListener("abort", onAbort));
    }

    if (options.after !== undefined) {
      // Replay from the earlier point; watchers already further along drop
      // what they have seen (by position).
      sub.position = options.after;
      sub.live = false;
      if (this._state === "ready") this.writeWatch(sub, options.after);
    } else if (fresh || !sub.live) {
      sub.live = false;
      // From now on, as asked (not from some older position of our own sends).
      if (this._state === "ready" && !sub.sent) this.writeWatch(sub, sub.position);
    } else {
      watcher.startAt(sub.position);
      watcher.markReady();
    }
    if (this._state !== "ready") this.ensureConnection();
    return watcher;
  }

  /**
   * Closes the connection. Replies in progress end with `CLOSED` (the
   * accepted ones are cancelled at the gateway; one that could not be is
   * cancelled by the gateway after its resume grace); watches end. The
   * client cannot be used after.
   */
  async close(): Promise<void> {
    if (this._state === "closed") return;
    this._state = "closed";
    clearTimeout(this.reconnectTimer);
    const closed = new RumorError("CLOSED", "the client was closed");
    for (const send of [...this.sends.values()]) {
      // Nobody will read these replies: stop them rather than let them run.
      if (send.state === "accepted") {
        const cancel = { conversation: send.conversation, messageId: send.messageId! };
        this.write(this.conn, clientFrame({ frame: { case: "cancel", value: cancel } }));
      }
      this.finish(send, closed);
    }
    for (const sub of this.subs.values()) for (const w of sub.watchers) w.end();
    this.subs.clear();
    const conn = this.conn;
    this.conn = undefined;
    if (conn) await conn.shutdown();
  }

  // ---- connection ----

  private assertOpen(): void {
    if (this._state === "closed") throw new RumorError("CLOSED", "the client was closed");
  }

  private ensureConnection(): void {
    if (this._state === "idle") this.open();
  }

  private open(): void {
    this._state = "connecting";
    let socket: WebSocketLike;
    try {
      socket = this.factory(this.url, { headers: { ...this.headers } });
    } catch (e) {
      // A bad URL or the like: nothing a retry fixes.
      this.fatal(new RumorError("CONNECTION_LOST", `cannot open ${this.url}: ${String(e)}`, { cause: e }));
      return;
    }
    const conn = new Connection(socket);
    this.conn = conn;
    conn.connectTimer = setTimeout(() => {
      conn.failure ??= new RumorError("CONNECTION_LOST", `no welcome within ${this.connectTimeoutMs} ms`);
      conn.kill();
    }, this.connectTimeoutMs);

    socket.on("open", () => {
      if (this.conn !== conn) return;
      this.write(conn, clientFrame({ frame: { case: "hello", value: { versions: [...PROTOCOL_VERSIONS], client: this.clientName } } }));
    });
    socket.on("message", (data: unknown, isBinary: boolean) => this.onMessage(conn, data, isBinary));
    socket.on("ping", () => conn.heard());
    socket.on("pong", () => conn.heard());
    socket.on("unexpected-response", (_req: unknown, res: { statusCode?: number; headers?: Record<string, unknown>; resume?: () => void }) => {
      // The upgrade was refused: 401/403 are final, 429/503 are worth a retry.
      const status = res.statusCode ?? 0;
      res.resume?.();
      conn.upgradeStatus = status;
      const retryAfter = Number(res.headers?.["retry-after"]);
      if (Number.isFinite(retryAfter) && retryAfter > 0) conn.retryAfterMs = retryAfter * 1000;
      conn.kill();
    });
    socket.on("error", (err: Error) => {
      conn.lastError ??= err;
    });
    socket.on("close", (code: number, reason: unknown) => this.onClose(conn, code, String(reason ?? "")));
  }

  private onClose(conn: Connection, code: number, reason: string): void {
    if (conn.closed) return;
    conn.closed = true;
    conn.clearTimers();
    if (this.conn !== conn) return; // an old connection, already replaced
    this.conn = undefined;
    if (this._state === "closed") return;

    const fatal = this.fatalError(conn, code, reason);
    const willReconnect =
      fatal === undefined && this.schedule !== undefined && this.attempt < this.schedule.maxAttempts;
    const lost =
      fatal ??
      conn.failure ??
      new RumorError(
        "CONNECTION_LOST",
        conn.upgradeStatus
          ? `the gateway refused the connection (HTTP ${conn.upgradeStatus})`
          : `connection closed (${code}${reason ? ` ${reason}` : ""}${conn.lastError ? `: ${conn.lastError.message}` : ""})`,
        conn.lastError ? { cause: conn.lastError } : {},
      );
    this._state = "idle";
    this.emit("disconnected", { code, reason, willReconnect, error: lost });

    if (!willReconnect) {
      this.failEverything(lost);
      return;
    }

    // What the next connection must re-establish, and what cannot survive.
    for (const send of [...this.sends.values()]) {
      switch (send.state) {
        case "queued":
          break; // never written: it goes out on the next connection
        case "sent":
          // Written but not accepted: it may or may not have reached its
          // owner, and without a message id it cannot be found again.
          this.finish(
            send,
            new RumorError(
              "CONNECTION_LOST",
              "the connection dropped before the gateway accepted the message; it may or may not have been processed",
              { conversation: send.conversation, clientId: send.clientId, cause: lost },
            ),
          );
          break;
        case "accepted":
        case "resuming":
          this.startResume(send);
          break;
      }
    }
    this.cancelOnAccept.clear();
    for (const sub of this.subs.values()) {
      sub.sent = false;
      sub.live = false;
    }
    if (this.needsConnection()) this.scheduleReconnect(conn.retryAfterMs);
  }

  /** Why a closed connection must not be retried, if it must not. */
  private fatalError(conn: Connection, code: number, reason: string): RumorError | undefined {
    if (conn.failure?.code === "UNSUPPORTED_VERSION" || conn.failure?.code === "PROTOCOL") return conn.failure;
    if (conn.upgradeStatus === 401 || conn.upgradeStatus === 403) {
      const c: RumorErrorCode = conn.upgradeStatus === 401 ? "UNAUTHENTICATED" : "PERMISSION_DENIED";
      return new RumorError(c, `the gateway refused the connection (HTTP ${conn.upgradeStatus})`, {
        status: conn.upgradeStatus,
      });
    }
    // 1008 before `welcome` is the gateway's answer to a missing or wrong
    // credential; after it (e.g. "slow reader") the connection is retried.
    if (code === 1008 && !conn.welcomed) {
      return new RumorError("UNAUTHENTICATED", `the gateway refused the credential: ${reason || "policy violation"}`);
    }
    return undefined;
  }

  /**
   * Whether calls in progress need a connection. Pending cancels alone do
   * not: the gateway cancels an unwatched message itself after its grace.
   */
  private needsConnection(): boolean {
    if (this.subs.size > 0) return true;
    for (const send of this.sends.values()) if (send.state !== "finished") return true;
    return false;
  }

  private scheduleReconnect(minDelayMs = 0): void {
    const schedule = this.schedule!;
    const delayMs = Math.max(minDelayMs, backoffDelay(this.attempt, schedule));
    this.attempt += 1;
    this._state = "backoff";
    this.emit("reconnecting", { attempt: this.attempt, delayMs });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this._state !== "backoff") return;
      this._state = "idle";
      if (this.needsConnection()) this.open();
    }, delayMs);
  }

  /** Fails every call in progress and goes idle (a later call connects anew). */
  private fatal(error: RumorError): void {
    const conn = this.conn;
    this.conn = undefined;
    if (conn) {
      conn.closed = true;
      conn.kill();
    }
    this._state = "idle";
    this.emit("disconnected", { code: 0, reason: error.message, willReconnect: false, error });
    this.failEverything(error);
  }

  private failEverything(error: RumorError): void {
    this.attempt = 0;
    for (const send of [...this.sends.values()]) {
      const e = new RumorError(error.code, error.message, {
        conversation: send.conversation,
        clientId: send.clientId,
        messageId: send.messageId,
        retryAfterMs: error.retryAfterMs,
        status: error.status,
        cause: error,
      });
      this.finish(send, e);
    }
    for (const sub of [...this.subs.values()]) this.failSubscription(sub, error);
    this.cancelOnAccept.clear();
    this.pendingCancels = [];
  }

  private onWelcome(conn: Connection, welcome: Welcome): void {
    if (!(PROTOCOL_VERSIONS as readonly number[]).includes(welcome.version)) {
      conn.failure = new RumorError("PROTOCOL", `the gateway picked protocol version ${welcome.version}`);
      conn.kill();
      return;
    }
    if (conn.welcomed) {
      // A second welcome (one at connect, one answering hello) only updates the limits.
      this._welcome = welcomeInfo(welcome);
      return;
    }
    conn.welcomed = true;
    clearTimeout(conn.connectTimer);
    this._state = "ready";
    this.attempt = 0;
    this._welcome = welcomeInfo(welcome);
    this.startPings(conn);
    this.emit("connected", this._welcome);

    // Re-create what this connection must carry: cancels first (they free
    // the gateway), then subscriptions (so resumes start), then new sends.
    const cancels = this.pendingCancels;
    this.pendingCancels = [];
    for (const c of cancels) this.writeCancel(c.conversation, c.messageId);
    for (const send of this.sends.values()) {
      if (send.state === "resuming" && !this.subs.has(send.conversation)) {
        this.subs.set(send.conversation, new Subscription(send.conversation));
      }
    }
    for (const sub of this.subs.values()) this.writeWatch(sub, this.resumePoint(sub));
    for (const send of [...this.sends.values()]) if (send.state === "queued") this.writeSend(send);
  }

  private startPings(conn: Connection): void {
    if (this.pingIntervalMs <= 0) return;
    conn.pingTimer = setInterval(() => {
      if (Date.now() - conn.lastHeard > 2 * this.pingIntervalMs) {
        conn.failure ??= new RumorError("CONNECTION_LOST", "the gateway stopped answering");
        conn.kill();
        return;
      }
      this.nonce += 1n;
      this.write(conn, clientFrame({ frame: { case: "ping", value: { nonce: this.nonce } } }));
    }, this.pingIntervalMs);
    conn.pingTimer.unref();
  }

  private write(conn: Connection | undefined, frame: ClientFrame): boolean {
    if (!conn || conn.closed || conn.socket.readyState !== OPEN) return false;
    conn.socket.send(encodeClientFrame(frame, this.binary));
    return true;
  }

  private writeSend(send: PendingSend): void {
    const ok = this.write(
      this.conn,
      clientFrame({
        frame: {
          case: "send",
          value: {
            conversation: send.conversation,
            clientId: send.clientId,
            text: send.text,
            model: send.model,
            timeoutMs: send.timeoutMs,
            traceparent: send.traceparent,
          },
        },
      }),
    );
    if (ok) {
      send.state = "sent";
      clearTimeout(send.waitTimer);
    }
  }

  private writeCancel(conversation: string, messageId: string): void {
    if (!this.write(this.conn, clientFrame({ frame: { case: "cancel", value: { conversation, messageId } } }))) {
      this.pendingCancels.push({ conversation, messageId });
    }
  }

  /**
   * Where a re-established subscription continues: the last position it
   * delivered, else the last this client saw in the conversation at all.
   */
  private resumePoint(sub: Subscription): Position | undefined {
    if (sub.position) return sub.position;
    // A new "from now" watch must not start from an older position of ours.
    const reestablishing = sub.established || this.resumingSends(sub.conversation).length > 0;
    return reestablishing ? this.positions.get(sub.conversation) : undefined;
  }

  private writeWatch(sub: Subscription, after: Position | undefined): void {
    // Resumed replies are complete only if the replay starts from a known
    // position (or the conversation turns out to have no events yet).
    for (const send of this.byConversation.get(sub.conversation) ?? []) {
      if (send.state === "resuming" && !send.watchSent) {
        send.watchSent = true;
        send.certain = after !== undefined;
      }
    }
    sub.requestedAfter = after;
    sub.sent = this.write(
      this.conn,
      clientFrame({
        frame: {
          case: "watch",
          value: after ? { conversation: sub.conversation, after: positionToWire(after) } : { conversation: sub.conversation },
        },
      }),
    );
  }

  // ---- incoming frames ----

  private onMessage(conn: Connection, data: unknown, isBinary: boolean): void {
    if (this.conn !== conn || conn.closed) return;
    conn.heard();
    let frame: ServerFrame;
    try {
      frame = decodeServerFrame(toWireData(data, isBinary));
    } catch (e) {
      this.emit("warning", new RumorError("PROTOCOL", `unreadable frame from the gateway: ${String(e)}`, { cause: e }));
      return;
    }
    const f = frame.frame;
    switch (f.case) {
      case "welcome":
        return this.onWelcome(conn, f.value);
      case "accepted":
        return this.onAccepted(f.value);
      case "chunk":
        return this.onChunk(f.value);
      case "done":
        return this.onDone(f.value);
      case "error":
        return this.onError(conn, f.value);
      case "event":
        return this.onEvent(f.value);
      case "watching":
        return this.onWatching(f.value);
      case "pong":
        return; // heard() above is all a pong is for
      default:
        return; // a frame kind newer than this client: ignored, as the protocol asks
    }
  }

  /**
   * The send a frame is about. A frame with a message id matches only by it:
   * matching it by client id could hand a late frame of a cancelled message
   * to a newer one that reuses the client id. Frames without one (a send
   * refused before it was accepted) match by client id.
   */
  private findSend(conversation: string, messageId: string, clientId: string): PendingSend | undefined {
    if (messageId) return this.byMessage.get(sendKey(conversation, messageId));
    return clientId ? this.sends.get(sendKey(conversation, clientId)) : undefined;
  }

  private onAccepted(a: Accepted): void {
    const key = sendKey(a.conversation, a.clientId);
    if (this.cancelOnAccept.delete(key)) {
      this.writeCancel(a.conversation, a.messageId);
      return;
    }
    const send = this.sends.get(key);
    if (!send || send.state !== "sent") return;
    send.state = "accepted";
    send.messageId = a.messageId;
    this.byMessage.set(sendKey(a.conversation, a.messageId), send);
    send.sink.accepted(a.messageId);
  }

  private onChunk(c: Chunk): void {
    const position = positionFromWire(c.position);
    if (position) this.notePosition(c.conversation, position);
    const send = this.findSend(c.conversation, c.messageId, c.clientId);
    if (!send || send.state !== "accepted") return;
    if (position) send.lastPosition = position;
    send.sink.chunk({
      type: "chunk",
      conversation: c.conversation,
      clientId: send.clientId,
      messageId: c.messageId,
      text: c.text,
      worker: c.worker,
      ...(position ? { position } : {}),
    });
  }

  private onDone(d: Done): void {
    const position = positionFromWire(d.position);
    if (position) this.notePosition(d.conversation, position);
    const send = this.findSend(d.conversation, d.messageId, d.clientId);
    if (!send || send.state !== "accepted") return;
    const usage = usageFromWire(d.usage);
    this.finish(send, {
      type: "done",
      conversation: d.conversation,
      clientId: send.clientId,
      messageId: d.messageId || send.messageId || "",
      worker: d.worker,
      replayed: d.replayed,
      ...(usage ? { usage } : {}),
      ...(position ? { position } : {}),
    });
  }

  private onError(conn: Connection, e: ErrorFrame): void {
    const code = errorCodeName(e.code);
    const error = new RumorError(code, e.message || code, {
      conversation: e.conversation,
      clientId: e.clientId,
      messageId: e.messageId,
      retryAfterMs: e.retryAfterMs,
    });
    if (code === "UNSUPPORTED_VERSION") {
      conn.failure = error;
      conn.kill();
      return;
    }
    const send = this.findSend(e.conversation, e.messageId, e.clientId);
    if (send) {
      this.finish(send, error);
      return;
    }
    const key = sendKey(e.conversation, e.clientId);
    if (e.clientId && this.cancelOnAccept.delete(key)) return; // refused anyway
    // Neither message nor client id: a refused watch (e.g. PERMISSION_DENIED).
    const sub = e.conversation && !e.messageId && !e.clientId ? this.subs.get(e.conversation) : undefined;
    if (sub) {
      this.failSubscription(sub, error);
      return;
    }
    // Late frames for messages already finished here (cancelled) are no news.
    if (code !== "CANCELLED") this.emit("warning", error);
  }

  private onWatching(w: Watching): void {
    const sub = this.subs.get(w.conversation);
    if (!sub) return;
    const from = positionFromWire(w.from);
    const resuming = this.resumingSends(sub.conversation);
    sub.live = true;
    sub.established = true;

    if (from !== undefined && sub.requestedAfter === undefined) {
      // We watched "from now" for lack of a position, and the conversation
      // has events. If something of ours may lie among them (a reply whose
      // position we never saw; events that came while a watcher of a then
      // empty conversation was away), ask for the current epoch from its
      // start: the gateway replays what its buffer holds, or says `gap`.
      const uncertain = resuming.filter((send) => !send.certain);
      const missedByWatchers = sub.emptyConfirmed && sub.position === undefined && sub.watchers.size > 0;
      if (uncertain.length > 0 || missedByWatchers) {
        for (const send of uncertain) {
          send.certain = true;
          send.awaitingReplay = true;
          send.needsMessageEvent = true;
          this.startGrace(send, "the message was not found again after reconnecting"); // until it shows up in the replay
        }
        sub.position = { epoch: from.epoch, seq: 0n };
        this.writeWatch(sub, sub.position);
        return;
      }
    }
    if (from !== undefined) {
      sub.position ??= from;
      for (const watcher of sub.watchers) watcher.startAt(from);
    }
    if (from === undefined) {
      // The conversation has no events yet: nothing can have been missed.
      sub.emptyConfirmed = true;
      for (const send of resuming) send.certain = true;
    }
    for (const watcher of sub.watchers) watcher.markReady();
    for (const send of resuming) {
      send.awaitingReplay = false;
      // The reply can continue: the gateway no longer keeps it only for us.
      if (!send.needsMessageEvent) send.clearGrace();
    }
  }

  private onEvent(e: EventFrame): void {
    const conversation = e.conversation;
    const position = positionFromWire(e.position);
    const event = watchEventFromWire(e);
    const sub = this.subs.get(conversation);
    if (position) this.notePosition(conversation, position);
    if (sub) {
      if (event?.type === "gap") {
        const resume = event.resume;
        if (resume && resume.seq > 0n) sub.position = { epoch: resume.epoch, seq: resume.seq - 1n };
      } else if (position) {
        sub.position = position;
      }
      if (event) for (const watcher of [...sub.watchers]) watcher.deliver(event);
    }
    if (event) for (const send of this.resumingSends(conversation)) this.feedResume(send, event);
  }

  // ---- resume ----

  private resumingSends(conversation: string): PendingSend[] {
    const out: PendingSend[] = [];
    for (const send of this.byConversation.get(conversation) ?? []) if (send.state === "resuming") out.push(send);
    return out;
  }

  /**
   * Remembers the last position seen in a conversation of ours. Positions of
   * idle conversations are kept too (a later send there resumes best from
   * the previous reply's end), up to a bound, oldest forgotten first.
   */
  private notePosition(conversation: string, position: Position): void {
    if (!this.byConversation.has(conversation) && !this.subs.has(conversation)) return; // a late frame
    this.positions.delete(conversation); // re-inserted last: the Map's order is the age
    this.positions.set(conversation, position);
    if (this.positions.size <= MAX_REMEMBERED_POSITIONS) return;
    for (const key of this.positions.keys()) {
      if (this.positions.size <= MAX_REMEMBERED_POSITIONS) break;
      if (!this.byConversation.has(key) && !this.subs.has(key)) this.positions.delete(key);
    }
  }

  /** After a drop: the reply continues through a watch on the next connection. */
  private startResume(send: PendingSend): void {
    send.state = "resuming";
    send.watchSent = false;
    send.awaitingReplay = false;
    send.needsMessageEvent = false;
    this.startGrace(send, `could not reconnect within ${this.resumeGraceMs} ms to resume the reply`);
  }

  /** The reply fails unless it is found again within resumeGraceMs. */
  private startGrace(send: PendingSend, why: string): void {
    send.clearGrace();
    send.graceTimer = setTimeout(() => {
      const ids = { conversation: send.conversation, clientId: send.clientId, messageId: send.messageId };
      this.finish(send, new RumorError(send.needsMessageEvent ? "RESUME_FAILED" : "CONNECTION_LOST", why, ids));
    }, this.resumeGraceMs);
  }

  /** Feeds a resumed reply from the events of its conversation. */
  private feedResume(send: PendingSend, event: WatchEvent): void {
    const ids = { conversation: send.conversation, clientId: send.clientId, messageId: send.messageId };
    // A replay from the epoch's start was asked for: it repeats these events.
    if (send.awaitingReplay) return;
    if (event.type === "gap") {
      // A gap matters unless the reply's own events all lie after it.
      const last = send.lastPosition;
      const resume = event.resume;
      if (last && resume && resume.epoch === last.epoch && resume.seq <= last.seq + 1n) return;
      send.gapped = true;
      clearTimeout(send.gapTimer);
      send.gapTimer = setTimeout(
        () => this.finish(send, new RumorError("RESUME_FAILED", `events were lost while disconnected (${event.reason})`, ids)),
        this.resumeGraceMs,
      );
      return;
    }
    if (event.type === "stored") {
      // After a gap, the bridge's stored copy of the reply can fill it in.
      if (!send.gapped || event.messageId !== send.messageId || event.kind !== "reply") return;
      const received = send.sink.received;
      if (!event.text.startsWith(received)) {
        this.finish(send, new RumorError("RESUME_FAILED", "the stored reply does not continue the text received", ids));
        return;
      }
      if (event.text.length > received.length) {
        send.sink.chunk({
          type: "chunk",
          conversation: send.conversation,
          clientId: send.clientId,
          messageId: event.messageId,
          text: event.text.slice(received.length),
          worker: event.worker,
        });
      }
      this.finish(send, {
        type: "done",
        conversation: send.conversation,
        clientId: send.clientId,
        messageId: event.messageId,
        worker: event.worker,
        replayed: false,
      });
      return;
    }
    if (event.messageId !== send.messageId) return;
    if (event.position && seenAlready(event.position, send.lastPosition)) return; // replayed, already had it
    if (event.type === "message") {
      send.certain = true; // the reply's whole story follows
      send.needsMessageEvent = false;
      send.clearGrace();
      if (event.position) send.lastPosition = event.position;
      return;
    }
    if (send.gapped || !send.certain) {
      this.finish(
        send,
        new RumorError(
          "RESUME_FAILED",
          send.gapped
            ? "part of the reply was lost while disconnected and no stored copy filled it in"
            : "the connection dropped before any position of the conversation was seen; part of the reply may be missing",
          ids,
        ),
      );
      return;
    }
    if (event.position) send.lastPosition = event.position;
    if (event.type === "chunk") {
      send.sink.chunk({
        type: "chunk",
        conversation: send.conversation,
        clientId: send.clientId,
        messageId: event.messageId,
        text: event.text,
        worker: event.worker,
        ...(event.position ? { position: event.position } : {}),
      });
    } else if (event.type === "end") {
      if (event.error) {
        this.finish(send, new RumorError(event.error.code, event.error.message || event.error.code, ids));
      } else {
        this.finish(send, {
          type: "done",
          conversation: send.conversation,
          clientId: send.clientId,
          messageId: event.messageId,
          worker: event.worker,
          replayed: false,
          ...(event.usage ? { usage: event.usage } : {}),
          ...(event.position ? { position: event.position } : {}),
        });
      }
    }
  }

  // ---- ending sends and watches ----

  /** Ends a reply: with its `done`, or with an error. */
  private finish(send: PendingSend, end: Extract<ReplyEvent, { type: "done" }> | RumorError): void {
    if (send.state === "finished") return;
    const wasResuming = send.state === "resuming";
    send.state = "finished";
    send.dispose();
    this.sends.delete(sendKey(send.conversation, send.clientId));
    if (send.messageId) this.byMessage.delete(sendKey(send.conversation, send.messageId));
    const group = this.byConversation.get(send.conversation);
    group?.delete(send);
    if (group?.size === 0) this.byConversation.delete(send.conversation);
    if (end instanceof RumorError) send.sink.fail(end);
    else send.sink.done(end);
    if (wasResuming) this.releaseSubscription(send.conversation);
  }

  /** Stops a message on the client's request (cancel, signal, local deadline). */
  private abandon(send: PendingSend, error: RumorError): void {
    switch (send.state) {
      case "finished":
        return;
      case "queued":
        break; // never left this process
      case "sent":
        this.cancelOnAccept.add(sendKey(send.conversation, send.clientId));
        break;
      case "accepted":
      case "resuming":
        this.writeCancel(send.conversation, send.messageId!);
        break;
    }
    this.finish(send, error);
  }

  private removeWatcher(watcher: Watcher): void {
    const sub = this.subs.get(watcher.conversation);
    if (!sub || !sub.watchers.delete(watcher)) return;
    this.releaseSubscription(sub.conversation);
  }

  /** Drops a subscription nobody needs any more. */
  private releaseSubscription(conversation: string): void {
    const sub = this.subs.get(conversation);
    if (!sub || sub.watchers.size > 0 || this.resumingSends(conversation).length > 0) return;
    this.subs.delete(conversation);
    if (sub.sent) this.write(this.conn, clientFrame({ frame: { case: "unwatch", value: { conversation } } }));
  }

  private failSubscription(sub: Subscription, error: RumorError): void {
    this.subs.delete(sub.conversation);
    for (const watcher of sub.watchers) watcher.fail(error);
    for (const send of this.resumingSends(sub.conversation)) {
      this.finish(
        send,
        new RumorError("RESUME_FAILED", `cannot watch the conversation to resume the reply: ${error.message}`, {
          conversation: send.conversation,
          clientId: send.clientId,
          messageId: send.messageId,
          cause: error,
        }),
      );
    }
  }
}

// ---- internals ----

type SendState = "queued" | "sent" | "accepted" | "resuming" | "finished";

class PendingSend {
  state: SendState = "queued";
  messageId: string | undefined;
  readonly text: string;
  readonly model: string;
  readonly timeoutMs: number;
  readonly traceparent: string;
  /** The last position of this reply seen (its chunks, or replayed events). */
  lastPosition: Position | undefined;
  /** Resuming: whether the events that follow cover the whole rest of the reply. */
  certain = true;
  /** Resuming: a gap may have swallowed part of the reply. */
  gapped = false;
  watchSent = false;
  /** Resuming: a replay from the epoch's start is coming; ignore events until its `watching`. */
  awaitingReplay = false;
  /** Resuming from the epoch's start: the message itself must show up, or the reply is lost. */
  needsMessageEvent = false;
  graceTimer: NodeJS.Timeout | undefined;
  waitTimer: NodeJS.Timeout | undefined;
  gapTimer: NodeJS.Timeout | undefined;
  readonly cleanups: (() => void)[] = [];

  constructor(
    readonly sink: ReplySink,
    text: string,
    options: SendOptions,
  ) {
    this.text = text;
    this.model = options.model ?? "";
    this.timeoutMs = options.timeoutMs ?? 0;
    this.traceparent = options.traceparent ?? "";
  }

  get conversation(): string {
    return this.sink.conversation;
  }

  get clientId(): string {
    return this.sink.clientId;
  }

  clearGrace(): void {
    clearTimeout(this.graceTimer);
    this.graceTimer = undefined;
  }

  dispose(): void {
    this.clearGrace();
    clearTimeout(this.gapTimer);
    clearTimeout(this.waitTimer);
    for (const cleanup of this.cleanups.splice(0)) cleanup();
  }
}

/** The client's one subscription to a conversation, shared by its watchers and resumes. */
class Subscription {
  readonly watchers = new Set<Watcher>();
  /** The last position delivered through this subscription. */
  position: Position | undefined;
  /** The `after` of the last watch frame written. */
  requestedAfter: Position | undefined;
  /** A watch frame went out on the current connection. */
  sent = false;
  /** The gateway confirmed it (`watching`) on the current connection. */
  live = false;
  /** A `watching` said the conversation had no events yet. */
  emptyConfirmed = false;
  /** The gateway confirmed it at least once (so a new watch re-establishes it). */
  established = false;

  constructor(readonly conversation: string) {}
}

class Watcher implements WatchStream {
  private readonly queue: AsyncQueue<WatchEvent>;
  private readonly readyPromise: Promise<void>;
  private resolveReady!: () => void;
  private rejectReady!: (e: unknown) => void;
  private closed = false;
  /** The last position delivered into the queue (for dropping repeats). */
  lastPosition: Position | undefined;
  /** The last position the caller has taken out of the queue (what `position` says). */
  private consumed: Position | undefined;
  readonly cleanups: (() => void)[] = [];

  constructor(
    readonly conversation: string,
    after: Position | undefined,
    private readonly onClose: (w: Watcher) => void,
  ) {
    this.lastPosition = after;
    this.consumed = after;
    this.queue = new AsyncQueue<WatchEvent>(() => this.close());
    this.readyPromise = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.readyPromise.catch(() => undefined);
  }

  get position(): Position | undefined {
    return this.consumed;
  }

  /** The subscription starts at `from` (for a watcher that had no position). */
  startAt(from: Position | undefined): void {
    if (from === undefined) return;
    this.lastPosition ??= from;
    this.consumed ??= from;
  }

  ready(): Promise<void> {
    return this.readyPromise;
  }

  markReady(): void {
    this.resolveReady();
  }

  /** Delivers an event unless this watcher has seen it already (after a replay). */
  deliver(event: WatchEvent): void {
    if (event.type === "gap") {
      const last = this.lastPosition;
      const resume = event.resume;
      // A gap this watcher is already past (it saw everything before `resume`) is not its gap.
      if (last && resume && resume.epoch === last.epoch && resume.seq <= last.seq + 1n) return;
      if (resume && resume.seq > 0n) this.lastPosition = { epoch: resume.epoch, seq: resume.seq - 1n };
    } else if (event.type !== "stored" && event.position) {
      if (seenAlready(event.position, this.lastPosition)) return;
      this.lastPosition = event.position;
    }
    this.queue.push(event);
  }

  push(event: WatchEvent): void {
    this.queue.push(event);
  }

  /** Ends the iteration normally. */
  end(): void {
    this.closed = true;
    this.dispose();
    this.queue.end();
    this.rejectReady(new RumorError("CLOSED", "the watch ended"));
  }

  fail(error: RumorError): void {
    this.closed = true;
    this.dispose();
    this.queue.fail(error);
    this.rejectReady(error);
  }

  close(): void {
    if (this.closed) return;
    this.end();
    this.onClose(this);
  }

  private dispose(): void {
    for (const cleanup of this.cleanups.splice(0)) cleanup();
  }

  // The caller's position moves as it takes events, not as they arrive: a
  // position saved while events wait in the queue must not skip them.
  private readonly iterator: AsyncIterator<WatchEvent> = {
    next: async () => {
      const r = await this.queue[Symbol.asyncIterator]().next();
      if (!r.done) {
        const e = r.value;
        if (e.type === "gap") {
          if (e.resume && e.resume.seq > 0n) this.consumed = { epoch: e.resume.epoch, seq: e.resume.seq - 1n };
        } else if (e.position) {
          this.consumed = e.position;
        }
      }
      return r;
    },
    return: () => this.queue[Symbol.asyncIterator]().return!(),
  };

  [Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    return this.iterator;
  }
}

class Connection {
  welcomed = false;
  closed = false;
  lastHeard = Date.now();
  upgradeStatus: number | undefined;
  retryAfterMs: number | undefined;
  lastError: Error | undefined;
  /** Why this client ended the connection, if it did. */
  failure: RumorError | undefined;
  connectTimer: NodeJS.Timeout | undefined;
  pingTimer: NodeJS.Timeout | undefined;

  constructor(readonly socket: WebSocketLike) {}

  heard(): void {
    this.lastHeard = Date.now();
  }

  clearTimers(): void {
    clearTimeout(this.connectTimer);
    clearInterval(this.pingTimer);
  }

  /** Drops the connection at once; its `close` event does the rest. */
  kill(): void {
    this.clearTimers();
    try {
      this.socket.terminate();
    } catch {
      // already gone
    }
  }

  /** Closes politely; resolves when closed (or after a second, forcibly). */
  shutdown(): Promise<void> {
    this.clearTimers();
    if (this.closed || this.socket.readyState === 3) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.kill();
        resolve();
      }, 1000);
      this.socket.on("close", () => {
        clearTimeout(timer);
        resolve();
      });
      try {
        if (this.socket.readyState === OPEN) this.socket.close(1000, "client closed");
        else this.socket.terminate();
      } catch {
        clearTimeout(timer);
        resolve();
      }
    });
  }
}

function welcomeInfo(welcome: Welcome): WelcomeInfo {
  const { $typeName: _t, $unknown: _u, ...limits } = welcome.limits ?? create(LimitsSchema);
  return { version: welcome.version, gateway: welcome.gateway, limits };
}

function sendKey(conversation: string, id: string): string {
  return `${conversation}\u0000${id}`;
}

/** The conversation key rule of the protocol: 1 to 1024 bytes of UTF-8, no control characters. */
export function checkConversation(conversation: string): void {
  const bytes = Buffer.byteLength(conversation, "utf8");
  if (bytes < 1 || bytes > 1024) {
    throw new RumorError("INVALID_ARGUMENT", "a conversation key has 1 to 1024 bytes", { conversation });
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(conversation)) {
    throw new RumorError("INVALID_ARGUMENT", "a conversation key has no control characters", { conversation });
  }
}

function toWireData(data: unknown, isBinary: boolean): WireData {
  if (typeof data === "string") return data;
  let bytes: Uint8Array;
  if (Array.isArray(data)) bytes = Buffer.concat(data as Buffer[]);
  else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else bytes = data as Uint8Array;
  return isBinary ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("utf8");
}
