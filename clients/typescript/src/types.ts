// The shapes this package hands to applications. They are plain objects
// (no protobuf-es `$typeName`), built from the generated wire types, so that
// callers need not know protobuf-es to use the client.

import { create } from "@bufbuild/protobuf";
import {
  ErrorCode,
  PositionSchema,
  type Event as EventFrame,
  type Position as PositionFrame,
  type Usage as UsageFrame,
} from "./gen/rumor/edge/v1/edge_pb.js";
import { RumorError, errorCodeName, type RumorErrorCode } from "./errors.js";

/**
 * A place in a conversation's events: an epoch (a new one begins when the
 * conversation moves to another owner, or its owner restarts) and a sequence
 * number within it. Positions of different epochs are not ordered.
 */
export interface Position {
  epoch: string;
  seq: bigint;
}

/** What a model's answer cost. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens the backend served from its cache. */
  cachedTokens: number;
  /** Time to the first token, milliseconds. */
  firstTokenMs: number;
  backend: string;
  model: string;
}

/** One step of a reply to a message this client sent. */
export type ReplyEvent =
  | { type: "accepted"; conversation: string; clientId: string; messageId: string }
  | {
      type: "chunk";
      conversation: string;
      clientId: string;
      messageId: string;
      text: string;
      worker: string;
      /** Absent for text filled in from the bridge's stored copy after a gap. */
      position?: Position;
    }
  | {
      type: "done";
      conversation: string;
      clientId: string;
      messageId: string;
      worker: string;
      /** Answered from the worker's memory of a message sent twice. */
      replayed: boolean;
      usage?: Usage;
      position?: Position;
    }
  | {
      type: "error";
      conversation: string;
      clientId: string;
      /** Absent when the message was refused before it was accepted. */
      messageId?: string;
      code: RumorErrorCode;
      message: string;
      error: RumorError;
    };

/** One thing that happened in a watched conversation. */
export type WatchEvent =
  | {
      type: "message";
      conversation: string;
      position?: Position;
      messageId: string;
      text: string;
      /** `client`, `bridge` or `bridge:<label>`. */
      source: string;
      /** The gateway or forward node the message entered at. */
      origin: string;
    }
  | { type: "chunk"; conversation: string; position?: Position; messageId: string; text: string; worker: string }
  | {
      type: "end";
      conversation: string;
      position?: Position;
      messageId: string;
      worker: string;
      /** Set when the reply failed. */
      error?: { code: RumorErrorCode; message: string };
      usage?: Usage;
    }
  | {
      type: "gap";
      conversation: string;
      position?: Position;
      /** The last position the client had (absent: it had none). */
      after?: Position;
      /** The first position that follows; events between are unknown. */
      resume?: Position;
      /** `epoch` or `evicted`. */
      reason: string;
    }
  | {
      type: "stored";
      conversation: string;
      /** Stored events have no position (they are matched by message id); always absent. */
      position?: Position;
      messageId: string;
      /** `inbound` or `reply`. */
      kind: string;
      text: string;
      worker: string;
      createdUnixMs: number;
    };

export function positionFromWire(p: PositionFrame | undefined): Position | undefined {
  return p === undefined ? undefined : { epoch: p.epoch, seq: p.seq };
}

export function positionToWire(p: Position): PositionFrame {
  return create(PositionSchema, { epoch: p.epoch, seq: p.seq });
}

/** `epoch:seq`, e.g. for an SSE `id:` line that a browser hands back as `Last-Event-ID`. */
export function formatPosition(p: Position): string {
  return `${p.epoch}:${p.seq}`;
}

/** The inverse of formatPosition; undefined for anything malformed. */
export function parsePosition(s: string): Position | undefined {
  // The epoch is opaque and could contain ':'; the sequence number cannot.
  const i = s.lastIndexOf(":");
  if (i < 0) return undefined;
  const seq = s.slice(i + 1);
  if (!/^[0-9]{1,20}$/.test(seq)) return undefined;
  const n = BigInt(seq);
  if (n > 0xffff_ffff_ffff_ffffn) return undefined;
  return { epoch: s.slice(0, i), seq: n };
}

/**
 * Whether `p` lies at or before `last`. Only positions of one epoch can be
 * compared; for different epochs this says false ("not seen"), so that an
 * event is delivered rather than silently dropped.
 */
export function seenAlready(p: Position, last: Position | undefined): boolean {
  return last !== undefined && p.epoch === last.epoch && p.seq <= last.seq;
}

export function usageFromWire(u: UsageFrame | undefined): Usage | undefined {
  if (u === undefined) return undefined;
  return {
    promptTokens: u.promptTokens,
    completionTokens: u.completionTokens,
    cachedTokens: u.cachedTokens,
    firstTokenMs: u.firstTokenMs,
    backend: u.backend,
    model: u.model,
  };
}

/** Converts a wire `Event`; undefined for an event kind newer than this client. */
export function watchEventFromWire(e: EventFrame): WatchEvent | undefined {
  const conversation = e.conversation;
  const position = positionFromWire(e.position);
  const ev = e.event;
  switch (ev.case) {
    case "message":
      return {
        type: "message",
        conversation,
        position,
        messageId: ev.value.messageId,
        text: ev.value.text,
        source: ev.value.source,
        origin: ev.value.origin,
      };
    case "chunk":
      return { type: "chunk", conversation, position, messageId: ev.value.messageId, text: ev.value.text, worker: ev.value.worker };
    case "end": {
      const out: WatchEvent = {
        type: "end",
        conversation,
        position,
        messageId: ev.value.messageId,
        worker: ev.value.worker,
        usage: usageFromWire(ev.value.usage),
      };
      if (ev.value.error !== ErrorCode.UNSPECIFIED) {
        out.error = { code: errorCodeName(ev.value.error), message: ev.value.errorMessage };
      }
      return out;
    }
    case "gap":
      return {
        type: "gap",
        conversation,
        position,
        after: positionFromWire(ev.value.after),
        resume: positionFromWire(ev.value.resume),
        reason: ev.value.reason,
      };
    case "stored":
      return {
        type: "stored",
        conversation,
        messageId: ev.value.messageId,
        kind: ev.value.kind,
        text: ev.value.text,
        worker: ev.value.worker,
        createdUnixMs: Number(ev.value.createdUnixMs),
      };
    default:
      return undefined;
  }
}
