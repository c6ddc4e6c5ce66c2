// The frame codec of `/v1/ws`: a text frame holds the proto3 JSON mapping of
// a frame, a binary frame its protobuf encoding.
//
// JSON is written with the .proto's own field names (`client_id`, not
// `clientId`), as the gateway documents; reading accepts both spellings
// (protobuf-es always does) and ignores fields and enum values this client
// does not know, so that a newer gateway never breaks an older client.

import {
  create,
  fromBinary,
  fromJson,
  toBinary,
  toJson,
  type DescMessage,
  type JsonValue,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import {
  ClientFrameSchema,
  ServerFrameSchema,
  type ClientFrame,
  type ServerFrame,
} from "./gen/rumor/edge/v1/edge_pb.js";

/** What travels in one WebSocket frame: text (JSON) or binary (protobuf). */
export type WireData = string | Uint8Array;

const writeOptions = { useProtoFieldName: true } as const;
const readOptions = { ignoreUnknownFields: true } as const;

/** The proto3 JSON value of a message, with the .proto's field names. */
export function messageToJson<D extends DescMessage>(schema: D, message: MessageShape<D>): JsonValue {
  return toJson(schema, message, writeOptions);
}

/** Reads the proto3 JSON value of a message (either field-name spelling). */
export function messageFromJson<D extends DescMessage>(schema: D, json: JsonValue): MessageShape<D> {
  return fromJson(schema, json, readOptions);
}

/** Encodes a message as a text (JSON) or binary (protobuf) frame. */
export function encodeMessage<D extends DescMessage>(schema: D, message: MessageShape<D>, binary: boolean): WireData {
  return binary ? toBinary(schema, message) : JSON.stringify(messageToJson(schema, message));
}

/**
 * Decodes a frame: a string is JSON, bytes are protobuf. Throws on a frame
 * that is neither (callers report it and keep the connection).
 */
export function decodeMessage<D extends DescMessage>(schema: D, data: WireData): MessageShape<D> {
  if (typeof data === "string") return messageFromJson(schema, JSON.parse(data) as JsonValue);
  return fromBinary(schema, data);
}

export function clientFrame(init: MessageInitShape<typeof ClientFrameSchema>): ClientFrame {
  return create(ClientFrameSchema, init);
}

export function serverFrame(init: MessageInitShape<typeof ServerFrameSchema>): ServerFrame {
  return create(ServerFrameSchema, init);
}

export function encodeClientFrame(frame: ClientFrame, binary: boolean): WireData {
  return encodeMessage(ClientFrameSchema, frame, binary);
}

export function decodeClientFrame(data: WireData): ClientFrame {
  return decodeMessage(ClientFrameSchema, data);
}

export function encodeServerFrame(frame: ServerFrame, binary: boolean): WireData {
  return encodeMessage(ServerFrameSchema, frame, binary);
}

export function decodeServerFrame(data: WireData): ServerFrame {
  return decodeMessage(ServerFrameSchema, data);
}
