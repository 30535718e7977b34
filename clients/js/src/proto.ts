/**
 * The Relay wire protocol, hand-written to mirror the Rust crate `relay-proto`
 * (crates/relay-proto/src) and checked against its test vectors
 * (crates/relay-proto/vectors/*.json) by this package's tests. No I/O here.
 *
 * All integers on the wire are little-endian (docs/protocol.md).
 */

/** The destination slot that means "every other party". */
export const BROADCAST_SLOT = 0xffff;
/** Length of a client-to-relay room frame header: `to` u16 LE. */
export const CLIENT_HEADER_LEN = 2;
/** Length of a relay-to-client room frame header: `seq` u64, `from` u16, `flags` u16. */
export const RELAY_HEADER_LEN = 12;
/** Flag bit of a relay frame: the message was a broadcast. */
export const FLAG_BROADCAST = 0x0001;
/** Length of a mailbox frame header: id (32), ttl u16, flags u16. */
export const MAILBOX_HEADER_LEN = 36;
/** Length of a mailbox message ID. */
export const MAILBOX_ID_LEN = 32;
/** Mailbox flag: the message is removed after its first delivery. */
export const MAILBOX_ONE_RECEIVER = 0x8000;

/** Subprotocol every Relay WebSocket client offers; the relay answers with it. */
export const SUBPROTOCOL = "relay.v1";
/** Prefix of the subprotocol carrying an API key (base64url of its UTF-8, no padding). */
export const SUBPROTOCOL_API_KEY = "relay.api-key.";
/** Prefix of the subprotocol carrying a room's resume token (same encoding). */
export const SUBPROTOCOL_RESUME = "relay.resume.";
/** Prefix of the subprotocol carrying a party token (same encoding). */
export const SUBPROTOCOL_PARTY_TOKEN = "relay.party-token.";
/**
 * The longest `reason` of an `abort` the relay passes on, in UTF-8 bytes
 * (relay_proto::room::MAX_ABORT_REASON_BYTES): a longer one is cut at a character boundary.
 */
export const MAX_ABORT_REASON_BYTES = 256;

/** `reason` cut to at most {@link MAX_ABORT_REASON_BYTES} UTF-8 bytes, at a character boundary. */
export function boundAbortReason(reason: string): string {
  const bytes = new TextEncoder().encode(reason);
  if (bytes.length <= MAX_ABORT_REASON_BYTES) return reason;
  let end = MAX_ABORT_REASON_BYTES;
  // Back off continuation bytes (10xxxxxx) to land on a character boundary.
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return new TextDecoder().decode(bytes.subarray(0, end));
}

/**
 * Every error code the relay sends, with its HTTP status (relay_proto::ErrorCode). In-room
 * codes come in `error` events; their status is the one they would have over HTTP.
 */
export const ERROR_CODES = {
  bad_request: 400,
  bad_body: 400,
  bad_room_id: 400,
  bad_handshake: 400,
  bad_expiry: 400,
  bad_key_name: 400,
  bad_tenant: 400,
  invalid_field: 400,
  missing_id: 400,
  id_mismatch: 400,
  bad_destination: 400,
  malformed_frame: 400,
  bad_control: 400,
  missing_api_key: 401,
  unknown_api_key: 401,
  unauthorized: 401,
  bad_registry_token: 401,
  revoked_api_key: 403,
  expired_api_key: 403,
  bad_resume_token: 403,
  not_owner: 403,
  registry_closed: 403,
  origin_not_allowed: 403,
  bad_party_token: 403,
  not_found: 404,
  room_not_found: 404,
  group_not_found: 404,
  key_not_found: 404,
  turn_disabled: 404,
  method_not_allowed: 405,
  request_timeout: 408,
  room_full: 409,
  slot_taken: 409,
  resume_gap: 409,
  room_buffer_full: 409,
  key_name_taken: 409,
  body_too_large: 413,
  message_too_big: 413,
  upgrade_required: 426,
  rate_limited: 429,
  too_many_rooms_for_key: 429,
  too_many_groups_for_key: 429,
  internal: 500,
  storage_error: 500,
  no_key_store: 503,
  storage_unavailable: 503,
  too_many_rooms: 503,
  held_bytes_full: 503,
  shutting_down: 503,
} as const;

/** An error code this client knows, or `"unknown"` for one from a newer relay. */
export type ErrorCode = keyof typeof ERROR_CODES | "unknown";

/** Codes that are authentication failures (what the relay's metrics count as such). */
export const AUTH_FAILURE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "missing_api_key",
  "unknown_api_key",
  "unauthorized",
  "bad_registry_token",
  "revoked_api_key",
  "expired_api_key",
  "bad_resume_token",
  "not_owner",
]);

/** The code for a wire string: unknown strings read as `"unknown"`. */
export function errorCode(text: unknown): ErrorCode {
  return typeof text === "string" && Object.prototype.hasOwnProperty.call(ERROR_CODES, text)
    ? (text as ErrorCode)
    : "unknown";
}

/** The HTTP status of a code (500 for `"unknown"`, as relay-proto). */
export function errorStatus(code: ErrorCode): number {
  return code === "unknown" ? 500 : ERROR_CODES[code];
}

/** Close codes the relay sends (relay_proto::CloseCode), by snake_case name. */
export const CLOSE_CODES = {
  normal: 1000,
  going_away: 1001,
  protocol: 1002,
  malformed: 1007,
  policy: 1008,
  too_big: 1009,
  internal: 1011,
  try_again_later: 1013,
  room_expired: 4000,
  replaced: 4001,
  aborted: 4002,
} as const;

/** A close code's name. */
export type CloseCodeName = keyof typeof CLOSE_CODES;

/** The name of a close code the relay sends, or `undefined` for any other code. */
export function closeCodeName(code: number): CloseCodeName | undefined {
  for (const [name, value] of Object.entries(CLOSE_CODES)) {
    if (value === code) return name as CloseCodeName;
  }
  return undefined;
}

/** Whether a reconnect may succeed after this close code (1001, 1011, 1013). */
export function isRetryableClose(code: number): boolean {
  return code === 1001 || code === 1011 || code === 1013;
}

/** A room frame's destination: a slot number, or every other party. */
export type Destination = number | "broadcast";

/** Client-to-relay room frame: `to` u16 LE, then the payload. */
export function encodeClientFrame(to: Destination, payload: Uint8Array): Uint8Array {
  const wire = to === "broadcast" ? BROADCAST_SLOT : to;
  if (!Number.isInteger(wire) || wire < 0 || wire > 0xffff) {
    throw new RangeError(`destination slot must be 0..65535, got ${String(to)}`);
  }
  const frame = new Uint8Array(CLIENT_HEADER_LEN + payload.length);
  frame[0] = wire & 0xff;
  frame[1] = wire >> 8;
  frame.set(payload, CLIENT_HEADER_LEN);
  return frame;
}

/** Parses a client-to-relay room frame; `undefined` when shorter than its header. */
export function decodeClientFrame(frame: Uint8Array): { to: Destination; payload: Uint8Array } | undefined {
  if (frame.length < CLIENT_HEADER_LEN) return undefined;
  const wire = frame[0]! | (frame[1]! << 8);
  return { to: wire === BROADCAST_SLOT ? "broadcast" : wire, payload: frame.subarray(CLIENT_HEADER_LEN) };
}

/** A relay-to-client data frame, decoded. `seq` is a u64, hence a bigint. */
export interface RelayFrame {
  seq: bigint;
  from: number;
  broadcast: boolean;
  payload: Uint8Array;
}

/** Relay-to-client data frame: seq u64 LE, from u16 LE, flags u16 LE, payload. */
export function encodeRelayFrame(f: RelayFrame): Uint8Array {
  const frame = new Uint8Array(RELAY_HEADER_LEN + f.payload.length);
  const view = new DataView(frame.buffer);
  view.setBigUint64(0, f.seq, true);
  view.setUint16(8, f.from, true);
  view.setUint16(10, f.broadcast ? FLAG_BROADCAST : 0, true);
  frame.set(f.payload, RELAY_HEADER_LEN);
  return frame;
}

/** Parses a relay-to-client data frame; `undefined` when shorter than its header. */
export function decodeRelayFrame(frame: Uint8Array): RelayFrame | undefined {
  if (frame.length < RELAY_HEADER_LEN) return undefined;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  return {
    seq: view.getBigUint64(0, true),
    from: view.getUint16(8, true),
    broadcast: (view.getUint16(10, true) & FLAG_BROADCAST) !== 0,
    payload: frame.subarray(RELAY_HEADER_LEN),
  };
}

/** The relay's `welcome`, the first frame of every room connection. */
export interface Welcome {
  type: "welcome";
  room_uuid: string;
  slot: number;
  room_size: number;
  resume_token: string;
  expires_at: number;
  present: number[];
  resumed: boolean;
  next_seq: number;
  /**
   * Data frames the relay has taken from this slot over all its connections (0 from
   * relays that predate it): a resuming party sends again exactly its frames after it.
   */
  received: number;
}

/** The answer to a `status` request, each list indexed by slot. */
export interface StatusEvent {
  type: "status";
  /** Slots connected now. */
  present: number[];
  /** Data frames the relay has taken from each slot. */
  sent: number[];
  /** Milliseconds since each slot last sent a data frame (since the room's creation if never). */
  idle_ms: number[];
}

/** A JSON control event from the relay (docs/protocol.md 3.3). */
export type ServerEvent =
  | Welcome
  | { type: "ready"; room_size: number }
  | { type: "joined"; slot: number }
  | { type: "left"; slot: number }
  | { type: "error"; code: ErrorCode; message: string; frame?: number }
  | { type: "aborted"; slot: number; reason: string }
  | StatusEvent
  | { type: "closing"; code: number; reason: string };

/** A JSON control message to the relay (docs/protocol.md 3.4). */
export type ClientControl =
  | { type: "ack"; seq: number }
  | { type: "leave" }
  | { type: "abort"; reason: string }
  | { type: "status" };

function isUint(v: unknown, max: number): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= max;
}

function parseObject(text: string): Record<string, unknown> | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

const U16 = 0xffff;
const U64_SAFE = Number.MAX_SAFE_INTEGER;

/** Parses a server event; `undefined` for anything that is not one (unknown type, missing field). */
export function parseServerEvent(text: string): ServerEvent | undefined {
  const o = parseObject(text);
  if (!o) return undefined;
  switch (o.type) {
    case "welcome": {
      const { room_uuid, slot, room_size, resume_token, expires_at, present, resumed, next_seq } = o;
      const received = o.received ?? 0;
      if (
        typeof room_uuid !== "string" ||
        !isUint(slot, U16) ||
        !isUint(room_size, U16) ||
        typeof resume_token !== "string" ||
        !isUint(expires_at, U64_SAFE) ||
        !Array.isArray(present) ||
        !present.every((p) => isUint(p, U16)) ||
        typeof resumed !== "boolean" ||
        !isUint(next_seq, U64_SAFE) ||
        !isUint(received, U64_SAFE)
      ) {
        return undefined;
      }
      return {
        type: "welcome",
        room_uuid,
        slot,
        room_size,
        resume_token,
        expires_at,
        present: present as number[],
        resumed,
        next_seq,
        received,
      };
    }
    case "ready":
      return isUint(o.room_size, U16) ? { type: "ready", room_size: o.room_size } : undefined;
    case "joined":
    case "left":
      return isUint(o.slot, U16) ? { type: o.type, slot: o.slot } : undefined;
    case "error":
      if (typeof o.code !== "string") return undefined;
      if (o.message !== undefined && typeof o.message !== "string") return undefined;
      if (o.frame !== undefined && o.frame !== null && !isUint(o.frame, U64_SAFE)) return undefined;
      {
        const e: ServerEvent = { type: "error", code: errorCode(o.code), message: (o.message as string | undefined) ?? "" };
        if (typeof o.frame === "number") e.frame = o.frame;
        return e;
      }
    case "aborted":
      if (!isUint(o.slot, U16)) return undefined;
      if (o.reason !== undefined && typeof o.reason !== "string") return undefined;
      return { type: "aborted", slot: o.slot, reason: (o.reason as string | undefined) ?? "" };
    case "status": {
      const { present, sent, idle_ms } = o;
      const list = (v: unknown, max: number): v is number[] => Array.isArray(v) && v.every((x) => isUint(x, max));
      if (!list(present, U16) || !list(sent, U64_SAFE) || !list(idle_ms, U64_SAFE)) return undefined;
      return { type: "status", present, sent, idle_ms };
    }
    case "closing":
      if (!isUint(o.code, U16)) return undefined;
      if (o.reason !== undefined && typeof o.reason !== "string") return undefined;
      return { type: "closing", code: o.code, reason: (o.reason as string | undefined) ?? "" };
    default:
      return undefined;
  }
}

/** The exact JSON the Rust encoder writes for a server event (field order included). */
export function encodeServerEvent(e: ServerEvent): string {
  switch (e.type) {
    case "welcome":
      return JSON.stringify({
        type: e.type,
        room_uuid: e.room_uuid,
        slot: e.slot,
        room_size: e.room_size,
        resume_token: e.resume_token,
        expires_at: e.expires_at,
        present: e.present,
        resumed: e.resumed,
        next_seq: e.next_seq,
        received: e.received,
      });
    case "ready":
      return JSON.stringify({ type: e.type, room_size: e.room_size });
    case "joined":
    case "left":
      return JSON.stringify({ type: e.type, slot: e.slot });
    case "error":
      return JSON.stringify(
        e.frame === undefined
          ? { type: e.type, code: e.code, message: e.message }
          : { type: e.type, code: e.code, message: e.message, frame: e.frame },
      );
    case "aborted":
      return JSON.stringify({ type: e.type, slot: e.slot, reason: e.reason });
    case "status":
      return JSON.stringify({ type: e.type, present: e.present, sent: e.sent, idle_ms: e.idle_ms });
    case "closing":
      return JSON.stringify({ type: e.type, code: e.code, reason: e.reason });
  }
}

/** The exact JSON of a client control message. */
export function encodeClientControl(c: ClientControl): string {
  switch (c.type) {
    case "ack":
      return JSON.stringify({ type: "ack", seq: c.seq });
    case "abort":
      return JSON.stringify({ type: "abort", reason: c.reason });
    default:
      return JSON.stringify({ type: c.type });
  }
}

/** Parses a client control message as the relay does; `undefined` when it is not one. */
export function parseClientControl(text: string): ClientControl | undefined {
  const o = parseObject(text);
  if (!o) return undefined;
  if (o.type === "leave") return { type: "leave" };
  if (o.type === "status") return { type: "status" };
  if (o.type === "ack" && isUint(o.seq, U64_SAFE)) return { type: "ack", seq: o.seq };
  if (o.type === "abort") {
    if (o.reason !== undefined && typeof o.reason !== "string") return undefined;
    return { type: "abort", reason: (o.reason as string | undefined) ?? "" };
  }
  return undefined;
}

/** An HTTP error body `{"error":{"code","message"}}`, decoded. */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
}

/** Parses an error body; `undefined` when the text is not one. */
export function parseErrorBody(text: string): ErrorBody | undefined {
  const o = parseObject(text);
  const e = o?.error;
  if (e === null || typeof e !== "object" || Array.isArray(e)) return undefined;
  const { code, message } = e as Record<string, unknown>;
  if (typeof code !== "string") return undefined;
  if (message !== undefined && typeof message !== "string") return undefined;
  return { code: errorCode(code), message: (message as string | undefined) ?? "" };
}

/** The exact JSON the relay writes for an error body. */
export function encodeErrorBody(b: ErrorBody): string {
  return JSON.stringify({ error: { code: b.code, message: b.message } });
}

/** A mailbox frame, the same both ways (docs/protocol.md 4). */
export interface MailboxFrame {
  id: Uint8Array;
  ttlSecs: number;
  flags: number;
  payload: Uint8Array;
}

/** Encodes a mailbox frame; an empty payload makes it an ask. */
export function encodeMailboxFrame(f: MailboxFrame): Uint8Array {
  if (f.id.length !== MAILBOX_ID_LEN) {
    throw new RangeError(`a mailbox ID is ${MAILBOX_ID_LEN} bytes, got ${f.id.length}`);
  }
  if (!isUint(f.ttlSecs, U16)) throw new RangeError(`ttlSecs must be 0..65535, got ${f.ttlSecs}`);
  if (!isUint(f.flags, U16)) throw new RangeError(`flags must be 0..65535, got ${f.flags}`);
  const frame = new Uint8Array(MAILBOX_HEADER_LEN + f.payload.length);
  frame.set(f.id, 0);
  frame[32] = f.ttlSecs & 0xff;
  frame[33] = f.ttlSecs >> 8;
  frame[34] = f.flags & 0xff;
  frame[35] = f.flags >> 8;
  frame.set(f.payload, MAILBOX_HEADER_LEN);
  return frame;
}

/** Decodes a mailbox frame; `undefined` when shorter than 36 bytes. */
export function decodeMailboxFrame(
  frame: Uint8Array,
): (MailboxFrame & { kind: "ask" | "publish"; oneReceiver: boolean }) | undefined {
  if (frame.length < MAILBOX_HEADER_LEN) return undefined;
  const flags = frame[34]! | (frame[35]! << 8);
  return {
    id: frame.subarray(0, MAILBOX_ID_LEN),
    ttlSecs: frame[32]! | (frame[33]! << 8),
    flags,
    payload: frame.subarray(MAILBOX_HEADER_LEN),
    kind: frame.length === MAILBOX_HEADER_LEN ? "ask" : "publish",
    oneReceiver: (flags & MAILBOX_ONE_RECEIVER) !== 0,
  };
}

/** base64url without padding of `text`'s UTF-8 bytes: how credentials ride in subprotocols. */
export function encodeCredential(text: string): string {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Lowercase hex of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

/** Bytes of a lowercase or uppercase hex string. */
export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) throw new RangeError(`not hex: ${hex}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}
