// @ts-check
// An example backend-for-frontend (BFF) in front of a rumor gateway.
//
// Browsers authenticate to the BFF with their own bearer tokens (a static
// demo table here; a real BFF would check its session or its identity
// provider). Each user may use only the conversation keys under its own
// prefix `user-<id>/`. The BFF speaks to the gateway with its own,
// server-side credential (RUMOR_TOKEN), which browsers never see, over one
// shared WebSocket (RumorClient) for all users.
//
//   POST /chat/<conversation key>   body {"text": "..."}  -> the reply as SSE
//   GET  /watch/<conversation key>                        -> the events as SSE
//
// Run: see README.md beside this file.

import { createServer } from "node:http";
import { pathToFileURL } from "node:url";
import { RumorClient, RumorError, formatPosition, parsePosition } from "@rumor/client";

/**
 * The demo users: bearer token -> user id. Never do this in production.
 * @type {Record<string, string>}
 */
export const demoUsers = {
  "alice-secret-token": "alice",
  "bob-secret-token": "bob",
};

const MAX_BODY_BYTES = 64 * 1024;
const HEARTBEAT_MS = 15_000;

/**
 * @typedef {object} BffOptions
 * @property {RumorClient} client   the BFF's one connection to the gateway
 * @property {Record<string, string>} [users]   bearer token -> user id
 */

/**
 * Makes the BFF's HTTP server (not yet listening).
 * @param {BffOptions} options
 */
export function createBff({ client, users = demoUsers }) {
  return createServer((req, res) => {
    handle(req, res, client, users).catch((e) => {
      // Failures before the stream started become JSON errors; after, the
      // stream carries its own `error` event, so there is nothing to add.
      if (!res.headersSent) sendJson(res, 500, { error: { code: "INTERNAL", message: String(e) } });
      else res.end();
    });
  });
}

/**
 * @param {import("node:http").IncomingMessage} req
 * @param {import("node:http").ServerResponse} res
 * @param {RumorClient} client
 * @param {Record<string, string>} users
 */
async function handle(req, res, client, users) {
  const url = new URL(req.url ?? "/", "http://bff");
  const route = /^\/(chat|watch)\/(.+)$/.exec(url.pathname);
  if (!route) return sendJson(res, 404, { error: { code: "NOT_FOUND", message: "no such route" } });
  const [, action, rawKey] = route;

  // Who is asking, and may they use this conversation?
  const auth = req.headers.authorization ?? "";
  const userId = auth.startsWith("Bearer ") ? users[auth.slice("Bearer ".length)] : undefined;
  if (userId === undefined) {
    res.setHeader("www-authenticate", "Bearer");
    return sendJson(res, 401, { error: { code: "UNAUTHENTICATED", message: "a valid bearer token is needed" } });
  }
  let conversation;
  try {
    conversation = rawKey.split("/").map(decodeURIComponent).join("/");
  } catch {
    return sendJson(res, 400, { error: { code: "INVALID_ARGUMENT", message: "bad conversation key" } });
  }
  if (!conversation.startsWith(`user-${userId}/`) || conversation.length <= `user-${userId}/`.length) {
    return sendJson(res, 403, {
      error: { code: "PERMISSION_DENIED", message: `you may use only conversations under user-${userId}/` },
    });
  }

  if (action === "chat" && req.method === "POST") return chat(req, res, client, conversation);
  if (action === "watch" && req.method === "GET") return watch(req, res, client, conversation, url);
  return sendJson(res, 405, { error: { code: "METHOD_NOT_ALLOWED", message: `${req.method} not allowed here` } });
}

/**
 * POST /chat/<key>: sends the message and streams the reply as SSE
 * (`accepted`, `chunk`, then `done` or `error`). A browser that goes away
 * cancels the message.
 * @param {import("node:http").IncomingMessage} req
 * @param {import("node:http").ServerResponse} res
 * @param {RumorClient} client
 * @param {string} conversation
 */
async function chat(req, res, client, conversation) {
  let text;
  try {
    const body = await readBody(req);
    text = JSON.parse(body).text;
  } catch (e) {
    const tooLarge = e instanceof Error && e.message === "too large";
    return sendJson(res, tooLarge ? 413 : 400, {
      error: { code: tooLarge ? "TOO_LARGE" : "INVALID_ARGUMENT", message: 'the body is {"text": "..."}' },
    });
  }
  if (typeof text !== "string" || text.length === 0) {
    return sendJson(res, 400, { error: { code: "INVALID_ARGUMENT", message: "text must be a non-empty string" } });
  }

  const abort = new AbortController();
  // `close` on the response fires when the browser disconnects (or when we
  // end the stream, when aborting is a no-op).
  res.on("close", () => abort.abort());
  const reply = client.send(conversation, text, { signal: abort.signal });
  const stop = startSse(res);
  try {
    for await (const event of reply) {
      switch (event.type) {
        case "accepted":
          writeEvent(res, "accepted", { conversation, message_id: event.messageId });
          break;
        case "chunk":
          writeEvent(res, "chunk", { text: event.text });
          break;
        case "done":
          writeEvent(res, "done", { message_id: event.messageId, usage: event.usage ?? null });
          break;
        case "error":
          writeEvent(res, "error", { code: event.code, message: event.message });
          break;
      }
    }
  } finally {
    stop();
    res.end();
  }
}

/**
 * GET /watch/<key>: streams the conversation's events as SSE, each with
 * `id: <epoch>:<seq>`, so that a browser's EventSource reconnects with
 * `Last-Event-ID` and the BFF resumes the watch from there (`?after=` works
 * too). Gaps are passed on, never hidden.
 * @param {import("node:http").IncomingMessage} req
 * @param {import("node:http").ServerResponse} res
 * @param {RumorClient} client
 * @param {string} conversation
 * @param {URL} url
 */
async function watch(req, res, client, conversation, url) {
  const resumeFrom = req.headers["last-event-id"] ?? url.searchParams.get("after") ?? undefined;
  const after = typeof resumeFrom === "string" && resumeFrom !== "" ? parsePosition(resumeFrom) : undefined;
  if (resumeFrom && after === undefined) {
    return sendJson(res, 400, { error: { code: "INVALID_ARGUMENT", message: "bad position (want epoch:seq)" } });
  }
  const events = client.watch(conversation, after ? { after } : {});
  res.on("close", () => events.close());
  const stop = startSse(res);
  try {
    await events.ready();
    writeEvent(res, "watching", { conversation, position: events.position ? formatPosition(events.position) : null });
    for await (const event of events) {
      const { position, conversation: _c, type: _t, ...rest } = event;
      const id = position ? formatPosition(position) : undefined;
      /** @type {Record<string, unknown>} */
      const data = { ...rest };
      if (event.type === "gap") {
        data["after"] = event.after ? formatPosition(event.after) : null;
        data["resume"] = event.resume ? formatPosition(event.resume) : null;
      }
      writeEvent(res, event.type, data, id);
    }
  } catch (e) {
    const err = e instanceof RumorError ? e : new RumorError("INTERNAL", String(e));
    writeEvent(res, "error", { code: err.code, message: err.message });
  } finally {
    stop();
    res.end();
  }
}

/**
 * Starts an SSE response; returns a function that stops its heartbeat.
 * @param {import("node:http").ServerResponse} res
 */
function startSse(res) {
  res.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    connection: "keep-alive",
    // Proxies must pass every event on at once.
    "x-accel-buffering": "no",
  });
  res.flushHeaders();
  const heartbeat = setInterval(() => res.write(": heartbeat\n\n"), HEARTBEAT_MS);
  return () => clearInterval(heartbeat);
}

/**
 * @param {import("node:http").ServerResponse} res
 * @param {string} event
 * @param {unknown} data
 * @param {string} [id]
 */
function writeEvent(res, event, data, id) {
  if (res.writableEnded || res.destroyed) return;
  let out = id ? `id: ${id}\n` : "";
  out += `event: ${event}\ndata: ${JSON.stringify(data, (_k, v) => (typeof v === "bigint" ? v.toString() : v))}\n\n`;
  res.write(out);
}

/**
 * @param {import("node:http").ServerResponse} res
 * @param {number} status
 * @param {unknown} body
 */
function sendJson(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

/** @param {import("node:http").IncomingMessage} req */
async function readBody(req) {
  /** @type {Buffer[]} */
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new Error("too large");
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

// Run as a program: `node examples/bff/server.mjs`.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const gateway = process.env["RUMOR_URL"] ?? process.env["RUMOR_EDGE_URL"] ?? "ws://127.0.0.1:8080";
  const client = new RumorClient({
    url: gateway,
    ...(process.env["RUMOR_TOKEN"] ? { token: process.env["RUMOR_TOKEN"] } : {}),
    clientName: "example-bff",
  });
  client.on("disconnected", (d) => console.error(`gateway connection lost: ${d.reason || d.code}`));
  client.on("connected", (w) => console.error(`connected to gateway ${w.gateway}`));
  const host = process.env["BFF_HOST"] ?? "127.0.0.1";
  const port = Number(process.env["BFF_PORT"] ?? 3000);
  const server = createBff({ client });
  server.listen(port, host, () => console.error(`BFF listening on http://${host}:${port}, gateway ${gateway}`));
  const shutdown = () => {
    server.close();
    server.closeAllConnections();
    void client.close().then(() => process.exit(0));
  };
  process.on("SIGINT", shutdown);
  process.on("SIGTERM", shutdown);
}
