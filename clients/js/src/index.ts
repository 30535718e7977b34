/**
 * Relay's JavaScript/TypeScript client: rooms with transparent resume and the mailbox,
 * on the platform `WebSocket` and `fetch` (browsers, React Native, Node 22+, Node 20
 * with `--experimental-websocket`). No runtime dependencies.
 */

export { RelayClient } from "./client.js";
export type {
  CreateRoomOptions,
  CredentialTransport,
  JoinRoomOptions,
  MailboxOptions,
  RelayClientOptions,
  RoomInfo,
} from "./client.js";
export { DEFAULT_RECONNECT, RoomConnection } from "./room.js";
export type { AbortInfo, ReconnectPolicy, RoomEvents, RoomMessage, RoomStatus } from "./room.js";
export { DEFAULT_ASK_TTL_SECS, Mailbox } from "./mailbox.js";
export type { AskOptions, PublishOptions } from "./mailbox.js";
export {
  RelayAbortedError,
  RelayCloseError,
  RelayClosedError,
  RelayConnectError,
  RelayError,
  RelayEventError,
  RelayHttpError,
  RelayProtocolError,
  RelayReconnectError,
  RelayTimeoutError,
} from "./errors.js";
export type { WebSocketConstructor } from "./socket.js";
export * as proto from "./proto.js";
export type { CloseCodeName, Destination, ErrorCode } from "./proto.js";
