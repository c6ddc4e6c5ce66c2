import { ErrorCode } from "./gen/rumor/edge/v1/edge_pb.js";

/** The gateway's stable error codes, without the `ERROR_CODE_` prefix. */
export type ServerErrorCode =
  | "UNSPECIFIED"
  | "BAD_FRAME"
  | "INVALID_ARGUMENT"
  | "UNAUTHENTICATED"
  | "PERMISSION_DENIED"
  | "RATE_LIMITED"
  | "TOO_LARGE"
  | "TOO_MANY_IN_FLIGHT"
  | "OVERLOADED"
  | "DEADLINE_EXCEEDED"
  | "UNAVAILABLE"
  | "CANCELLED"
  | "INTERNAL"
  | "UNSUPPORTED_VERSION"
  | "MODEL_NOT_FOUND"
  | "BACKEND"
  | "DUPLICATE";

/**
 * Codes the client itself produces, for failures the gateway cannot report
 * because the connection is gone:
 *
 * - `CONNECTION_LOST`: the connection dropped and the reply could not be
 *   resumed (the message was sent but not yet accepted, the client could not
 *   reconnect within `resumeGraceMs`, or reconnecting is disabled).
 * - `RESUME_FAILED`: the client reconnected, but the reply cannot be
 *   completed without a hole (a `gap` covered part of it and no stored copy
 *   filled it in).
 * - `CLOSED`: `close()` was called.
 * - `PROTOCOL`: the gateway answered something this client cannot use (an
 *   unreadable frame where an answer was needed, an unexpected version).
 * - `UNKNOWN`: an error code newer than this client.
 */
export type ClientErrorCode = "CONNECTION_LOST" | "RESUME_FAILED" | "CLOSED" | "PROTOCOL" | "UNKNOWN";

export type RumorErrorCode = ServerErrorCode | ClientErrorCode;

export interface RumorErrorDetails {
  conversation?: string;
  clientId?: string;
  messageId?: string;
  /** For `RATE_LIMITED` and `OVERLOADED`: when to try again. */
  retryAfterMs?: number;
  /** The HTTP status, for errors of the HTTP API. */
  status?: number;
  cause?: unknown;
}

/** Every failure this package reports is a RumorError; branch on `code`. */
export class RumorError extends Error {
  override readonly name = "RumorError";
  readonly code: RumorErrorCode;
  readonly conversation?: string;
  readonly clientId?: string;
  readonly messageId?: string;
  readonly retryAfterMs?: number;
  readonly status?: number;

  constructor(code: RumorErrorCode, message: string, details: RumorErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    if (details.conversation) this.conversation = details.conversation;
    if (details.clientId) this.clientId = details.clientId;
    if (details.messageId) this.messageId = details.messageId;
    if (details.retryAfterMs) this.retryAfterMs = details.retryAfterMs;
    if (details.status) this.status = details.status;
  }
}

/** The short name of a wire error code; values newer than this client map to `UNKNOWN`. */
export function errorCodeName(code: ErrorCode | number): ServerErrorCode | "UNKNOWN" {
  const name = (ErrorCode as unknown as Record<number, string | undefined>)[code];
  return name === undefined ? "UNKNOWN" : (name as ServerErrorCode);
}

/** The code an HTTP status stands for, when the body does not say (see protocol.md). */
export function errorCodeForStatus(status: number): RumorErrorCode {
  switch (status) {
    case 400:
      return "INVALID_ARGUMENT";
    case 401:
      return "UNAUTHENTICATED";
    case 403:
      return "PERMISSION_DENIED";
    case 404:
      return "MODEL_NOT_FOUND";
    case 413:
      return "TOO_LARGE";
    case 429:
      return "RATE_LIMITED";
    case 499:
      return "CANCELLED";
    case 500:
      return "INTERNAL";
    case 502:
      return "BACKEND";
    case 503:
      return "UNAVAILABLE";
    case 504:
      return "DEADLINE_EXCEEDED";
    default:
      return "UNKNOWN";
  }
}
