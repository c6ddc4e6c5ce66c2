// @rumor/client: the TypeScript client of a rumor gateway's client edge.

export {
  RumorClient,
  PROTOCOL_VERSIONS,
  checkConversation,
  type ConnectionState,
  type RumorClientOptions,
  type SendOptions,
  type WatchOptions,
  type WatchStream,
  type WebSocketFactory,
  type WebSocketFactoryOptions,
  type WebSocketLike,
  type WelcomeInfo,
} from "./client.js";
export { sendHttp, messagesUrl, httpError, type HttpSendOptions } from "./http.js";
export type { ReplyStream, ReplyResult } from "./reply.js";
export {
  RumorError,
  errorCodeName,
  errorCodeForStatus,
  type RumorErrorCode,
  type ServerErrorCode,
  type ClientErrorCode,
  type RumorErrorDetails,
} from "./errors.js";
export {
  formatPosition,
  parsePosition,
  seenAlready,
  type Position,
  type Usage,
  type ReplyEvent,
  type WatchEvent,
} from "./types.js";
export {
  backoffCeiling,
  backoffDelay,
  backoffSchedule,
  defaultReconnect,
  type BackoffSchedule,
  type ReconnectOptions,
} from "./backoff.js";
export { SseParser, readSse, type SseEvent } from "./sse.js";
export {
  clientFrame,
  serverFrame,
  encodeMessage,
  decodeMessage,
  encodeClientFrame,
  decodeClientFrame,
  encodeServerFrame,
  decodeServerFrame,
  messageToJson,
  messageFromJson,
  type WireData,
} from "./codec.js";
// The generated wire types and schemas (protobuf-es), for callers who want
// to speak the protocol themselves.
export * as proto from "./gen/rumor/edge/v1/edge_pb.js";
