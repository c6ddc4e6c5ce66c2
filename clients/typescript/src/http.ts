// The HTTP way in: `POST /v1/conversations/{conversation}/messages`, the
// whole reply as JSON, or streamed as server-sent events. For callers that
// send one message now and then and need no connection of their own.

import { randomUUID } from "node:crypto";
import { create, type JsonValue } from "@bufbuild/protobuf";
import {
  AcceptedSchema,
  ChunkSchema,
  DoneSchema,
  ErrorBodySchema,
  ErrorSchema,
  ReplySchema,
  SendBodySchema,
} from "./gen/rumor/edge/v1/edge_pb.js";
import { checkConversation } from "./client.js";
import { messageFromJson, messageToJson } from "./codec.js";
import { RumorError, errorCodeForStatus, errorCodeName } from "./errors.js";
import { ReplySink, type ReplyResult, type ReplyStream } from "./reply.js";
import { readSse } from "./sse.js";
import { positionFromWire, usageFromWire } from "./types.js";

export interface HttpSendOptions {
  /** Stream the reply as server-sent events (a ReplyStream) instead of one JSON answer. */
  stream?: boolean;
  /** The credential, sent as `Authorization: Bearer`. */
  token?: string;
  /** The client's own name for the message (default: a random UUID). */
  clientId?: string;
  model?: string;
  /** Time the mesh has to answer, 1 to 3,600,000 ms; default: the gateway's. */
  timeoutMs?: number;
  /** Your span's W3C trace context, sent as the `traceparent` header (see SendOptions). */
  traceparent?: string;
  /** Aborting it ends the request (and the reply, with `CANCELLED`). */
  signal?: AbortSignal;
  /** The fetch to use; default: the global one. */
  fetch?: typeof fetch;
}

/**
 * Sends one message over HTTP. With `stream: true` it returns a ReplyStream
 * (the same as RumorClient.send); otherwise it resolves to the whole reply.
 * Failures are RumorErrors carrying the gateway's code and the HTTP status.
 */
export function sendHttp(
  baseUrl: string,
  conversation: string,
  text: string,
  options: HttpSendOptions & { stream: true },
): ReplyStream;
export function sendHttp(
  baseUrl: string,
  conversation: string,
  text: string,
  options?: HttpSendOptions & { stream?: false },
): Promise<ReplyResult>;
export function sendHttp(
  baseUrl: string,
  conversation: string,
  text: string,
  options?: HttpSendOptions,
): ReplyStream | Promise<ReplyResult>;
export function sendHttp(
  baseUrl: string,
  conversation: string,
  text: string,
  options: HttpSendOptions = {},
): ReplyStream | Promise<ReplyResult> {
  checkConversation(conversation);
  const clientId = options.clientId ?? randomUUID();
  const url = messagesUrl(baseUrl, conversation);
  const body = JSON.stringify(
    messageToJson(
      SendBodySchema,
      create(SendBodySchema, {
        text,
        clientId,
        model: options.model ?? "",
        timeoutMs: options.timeoutMs ?? 0,
      }),
    ),
  );
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (options.token !== undefined) headers["authorization"] = `Bearer ${options.token}`;
  if (options.traceparent) headers["traceparent"] = options.traceparent;
  const doFetch = options.fetch ?? fetch;

  if (!options.stream) {
    return (async () => {
      const res = await doFetch(url, {
        method: "POST",
        headers: { ...headers, accept: "application/json" },
        body,
        ...(options.signal ? { signal: options.signal } : {}),
      }).catch((e: unknown) => {
        throw fetchError(e, conversation, clientId);
      });
      if (!res.ok) throw await httpError(res, conversation, clientId);
      const reply = messageFromJson(ReplySchema, (await res.json()) as JsonValue);
      const usage = usageFromWire(reply.usage);
      return {
        conversation: reply.conversation || conversation,
        clientId: reply.clientId || clientId,
        messageId: reply.messageId,
        text: reply.text,
        worker: reply.worker,
        replayed: reply.replayed,
        ...(usage ? { usage } : {}),
      };
    })();
  }

  const abort = new AbortController();
  const sink = new ReplySink(conversation, clientId, (s) => {
    s.fail(new RumorError("CANCELLED", "cancelled by the client", { conversation, clientId, messageId: s.messageId }));
    abort.abort();
  });
  if (options.signal) {
    if (options.signal.aborted) sink.cancel();
    else options.signal.addEventListener("abort", () => sink.cancel(), { once: true });
  }
  void streamReply(doFetch, url, headers, body, abort.signal, sink).catch((e: unknown) => {
    if (!sink.finished) sink.fail(e instanceof RumorError ? e : fetchError(e, conversation, clientId));
  });
  return sink;
}

/** The messages route for a conversation; `baseUrl` may end in `/` or `/v1`. */
export function messagesUrl(baseUrl: string, conversation: string): string {
  const base = baseUrl.replace(/\/+$/, "").replace(/\/v1$/, "");
  return `${base}/v1/conversations/${encodeURIComponent(conversation)}/messages`;
}

async function streamReply(
  doFetch: typeof fetch,
  url: string,
  headers: Record<string, string>,
  body: string,
  signal: AbortSignal,
  sink: ReplySink,
): Promise<void> {
  const { conversation, clientId } = sink;
  const res = await doFetch(url, { method: "POST", headers: { ...headers, accept: "text/event-stream" }, body, signal });
  if (!res.ok) throw await httpError(res, conversation, clientId);
  if (!res.body) throw new RumorError("PROTOCOL", "the gateway answered no body", { conversation, clientId });
  for await (const event of readSse(res.body as AsyncIterable<Uint8Array>)) {
    if (sink.finished) break;
    let json: JsonValue;
    try {
      json = JSON.parse(event.data) as JsonValue;
    } catch {
      throw new RumorError("PROTOCOL", `unreadable ${event.event} event: ${event.data.slice(0, 200)}`, {
        conversation,
        clientId,
      });
    }
    switch (event.event) {
      case "accepted":
        sink.accepted(messageFromJson(AcceptedSchema, json).messageId);
        break;
      case "chunk": {
        const c = messageFromJson(ChunkSchema, json);
        const position = positionFromWire(c.position);
        sink.chunk({
          type: "chunk",
          conversation,
          clientId,
          messageId: c.messageId || sink.messageId || "",
          text: c.text,
          worker: c.worker,
          ...(position ? { position } : {}),
        });
        break;
      }
      case "done": {
        const d = messageFromJson(DoneSchema, json);
        const usage = usageFromWire(d.usage);
        const position = positionFromWire(d.position);
        sink.done({
          type: "done",
          conversation,
          clientId,
          messageId: d.messageId || sink.messageId || "",
          worker: d.worker,
          replayed: d.replayed,
          ...(usage ? { usage } : {}),
          ...(position ? { position } : {}),
        });
        break;
      }
      case "error": {
        const e = messageFromJson(ErrorSchema, json);
        const code = errorCodeName(e.code);
        sink.fail(
          new RumorError(code, e.message || code, {
            conversation,
            clientId,
            messageId: e.messageId || sink.messageId,
            retryAfterMs: e.retryAfterMs,
          }),
        );
        break;
      }
      default:
        break; // an event kind newer than this client
    }
  }
  if (!sink.finished) {
    throw new RumorError("CONNECTION_LOST", "the event stream ended before the reply did", {
      conversation,
      clientId,
      messageId: sink.messageId,
    });
  }
}

/** A RumorError from an error answer: the ErrorBody's code if it has one, else the status's. */
export async function httpError(res: Response, conversation?: string, clientId?: string): Promise<RumorError> {
  const text = await res.text().catch(() => "");
  const retryAfter = Number(res.headers.get("retry-after"));
  const retryAfterMs = Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined;
  try {
    const body = messageFromJson(ErrorBodySchema, JSON.parse(text) as JsonValue);
    if (body.error) {
      const code = errorCodeName(body.error.code);
      return new RumorError(code === "UNSPECIFIED" ? errorCodeForStatus(res.status) : code, body.error.message || code, {
        conversation: body.error.conversation || conversation,
        clientId: body.error.clientId || clientId,
        messageId: body.error.messageId,
        retryAfterMs: body.error.retryAfterMs || retryAfterMs,
        status: res.status,
      });
    }
  } catch {
    // not an ErrorBody; fall through
  }
  return new RumorError(errorCodeForStatus(res.status), `HTTP ${res.status}${text ? `: ${text.slice(0, 500)}` : ""}`, {
    conversation,
    clientId,
    retryAfterMs,
    status: res.status,
  });
}

function fetchError(e: unknown, conversation: string, clientId: string): RumorError {
  if (e instanceof RumorError) return e;
  if (e instanceof Error && e.name === "AbortError") {
    return new RumorError("CANCELLED", "cancelled by the client", { conversation, clientId, cause: e });
  }
  return new RumorError("CONNECTION_LOST", `request failed: ${String(e)}`, { conversation, clientId, cause: e });
}
