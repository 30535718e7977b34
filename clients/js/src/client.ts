/**
 * `RelayClient`: creates rooms over REST (`fetch`), joins them and opens the mailbox
 * over the platform `WebSocket`, with credentials in `Sec-WebSocket-Protocol`.
 */

import { RelayConnectError, RelayHttpError, RelayProtocolError } from "./errors.js";
import { Mailbox } from "./mailbox.js";
import {
  SUBPROTOCOL,
  SUBPROTOCOL_API_KEY,
  SUBPROTOCOL_PARTY_TOKEN,
  SUBPROTOCOL_RESUME,
  encodeCredential,
  errorCode,
  parseErrorBody,
} from "./proto.js";
import { DEFAULT_RECONNECT, type ReconnectPolicy, RoomConnection, type RoomDialer, readWelcome } from "./room.js";
import { Socket, type WebSocketConstructor, platformWebSocket } from "./socket.js";

/** How a WebSocket presents the API key. */
export type CredentialTransport = "subprotocol" | "query";

/** Options of {@link RelayClient}. */
export interface RelayClientOptions {
  /** The relay's base URL: `https://relay.example` (or `http://`, `ws://`, `wss://`; a path prefix is kept). */
  url: string;
  /** The API key, for creating rooms and the keyed mailbox. Joining a room needs none. */
  apiKey?: string;
  /**
   * How WebSockets carry credentials: `"subprotocol"` (default; `relay.api-key.<base64url>`
   * and `relay.resume.<base64url>` in `Sec-WebSocket-Protocol`) or `"query"` (`?api_key=`,
   * `?resume_token=`, for relays that predate subprotocol credentials).
   */
  credentials?: CredentialTransport;
  /** A WebSocket implementation; default the platform's `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** A fetch implementation; default the platform's `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Timeout of a WebSocket handshake plus the room's welcome, in ms (default 10 s). */
  connectTimeoutMs?: number;
}

/** Options of {@link RelayClient.createRoom}. */
export interface CreateRoomOptions {
  /** Number of parties, 2..=the relay's `max_room_size`. */
  size: number;
  /** Lifetime in seconds; the relay's default when absent. */
  ttlSecs?: number;
  /**
   * Ask for one party token per slot (`"party_tokens": true`): the room can then be
   * joined only with a token, which takes the slot bound to it. Hand `partyTokens[i]`
   * to the party meant for slot `i`. Relays that predate party tokens ignore it and
   * answer no `partyTokens`.
   */
  partyTokens?: boolean;
}

/** A created room. */
export interface RoomInfo {
  /** The room ID: whoever holds it can join. */
  roomId: string;
  /** Number of parties. */
  size: number;
  /** When the room closes, Unix seconds. */
  expiresAt: number;
  /** One token per slot (`partyTokens[i]` is slot `i`'s), when asked for and the relay issues them. */
  partyTokens?: string[];
}

/** Options of {@link RelayClient.joinRoom}. */
export interface JoinRoomOptions {
  /** Ask for this slot; the lowest free one when absent. */
  slot?: number;
  /**
   * This party's token, when the room was created with party tokens: it takes the slot
   * bound to it. Offered as `relay.party-token.<base64url>` (or `?party_token=` with
   * `credentials: "query"`). Joining such a room without it, or with another room's,
   * is refused (`403 bad_party_token`; a {@link RelayConnectError} here, as the
   * platform WebSocket hides the status). Resumes use the resume token instead.
   */
  partyToken?: string;
  /** Take back a slot an earlier connection held (e.g. before a page reload). */
  resume?: { resumeToken: string; lastSeq: number };
  /** What to do when the connection drops (defaults: 10 attempts within 25 s). */
  reconnect?: Partial<ReconnectPolicy>;
  /** Ack after this many messages taken (default 64, the protocol's maximum). */
  ackEvery?: number;
  /** Ack at least this often while messages are taken, in ms (default 1000). */
  ackIntervalMs?: number;
  /**
   * Past this many sent frames not yet confirmed by the relay, the client asks the
   * relay's `status` (its own request; the answer is hidden) to confirm and forget
   * them (default 1024, the Rust client's send queue).
   */
  sendQueue?: number;
}

/** Options of {@link RelayClient.mailbox}. */
export interface MailboxOptions {
  /** The room's mailbox (no key needed); the API key's tenant mailbox when absent. */
  roomId?: string;
}

/** A client of one relay. */
export class RelayClient {
  readonly #base: URL;
  readonly #apiKey: string | undefined;
  readonly #credentials: CredentialTransport;
  readonly #WebSocket: WebSocketConstructor | undefined;
  readonly #fetch: typeof fetch | undefined;
  readonly #connectTimeoutMs: number;

  constructor(options: RelayClientOptions) {
    const base = new URL(options.url);
    if (!["http:", "https:", "ws:", "wss:"].includes(base.protocol)) {
      throw new RangeError(`the relay URL must be http(s):// or ws(s)://, got ${base.protocol}`);
    }
    base.search = "";
    base.hash = "";
    if (!base.pathname.endsWith("/")) base.pathname += "/";
    this.#base = base;
    this.#apiKey = options.apiKey;
    this.#credentials = options.credentials ?? "subprotocol";
    this.#WebSocket = options.WebSocket;
    this.#fetch = options.fetch;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
  }

  /** `POST /v1/rooms`: creates a room. Needs the API key when the relay enforces keys. */
  async createRoom(options: CreateRoomOptions): Promise<RoomInfo> {
    const body: Record<string, unknown> = { room_size: options.size };
    if (options.ttlSecs !== undefined) body.ttl_secs = options.ttlSecs;
    if (options.partyTokens) body.party_tokens = true;
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (this.#apiKey !== undefined) headers.authorization = `Bearer ${this.#apiKey}`;
    const f = this.#fetch ?? globalThis.fetch;
    let resp: Response;
    try {
      resp = await f(this.#url("http", "v1/rooms"), { method: "POST", headers, body: JSON.stringify(body) });
    } catch (e) {
      throw new RelayConnectError(`cannot reach the relay at ${this.#base.origin}: ${String(e)}`, { cause: e });
    }
    const text = await resp.text();
    if (!resp.ok) throw httpError(resp, text);
    let created: Record<string, unknown>;
    try {
      created = JSON.parse(text) as Record<string, unknown>;
    } catch {
      throw new RelayProtocolError(`create room answered ${resp.status} with a body that is not JSON`);
    }
    const { room_uuid, room_size, expires_at, party_tokens } = created;
    if (typeof room_uuid !== "string" || typeof room_size !== "number" || typeof expires_at !== "number") {
      throw new RelayProtocolError(`create room answered an unexpected body: ${text}`);
    }
    const info: RoomInfo = { roomId: room_uuid, size: room_size, expiresAt: expires_at };
    if (Array.isArray(party_tokens)) info.partyTokens = party_tokens.map(String);
    return info;
  }

  /**
   * Joins `roomId` over a WebSocket; resolves once the relay's `welcome` arrived. The
   * connection resumes on its own after a drop (see {@link RoomConnection}).
   */
  async joinRoom(roomId: string, options: JoinRoomOptions = {}): Promise<RoomConnection> {
    const path = `v1/rooms/${encodeURIComponent(roomId)}`;
    const dialer: RoomDialer = {
      open: async (resume) => {
        const query = new URLSearchParams();
        const protocols = [SUBPROTOCOL];
        if (resume) {
          if (this.#credentials === "subprotocol") protocols.push(SUBPROTOCOL_RESUME + encodeCredential(resume.token));
          else query.set("resume_token", resume.token);
          query.set("last_seq", String(resume.lastSeq));
        } else {
          if (options.slot !== undefined) query.set("slot", String(options.slot));
          if (options.partyToken !== undefined) {
            if (this.#credentials === "subprotocol") {
              protocols.push(SUBPROTOCOL_PARTY_TOKEN + encodeCredential(options.partyToken));
            } else {
              query.set("party_token", options.partyToken);
            }
          }
        }
        const socket = await this.#open(path, query, protocols);
        const welcome = await readWelcome(socket, this.#connectTimeoutMs);
        return { socket, welcome };
      },
    };
    const first = options.resume
      ? { token: options.resume.resumeToken, lastSeq: options.resume.lastSeq }
      : undefined;
    const { socket, welcome } = await dialer.open(first);
    if (first) welcome.next_seq = first.lastSeq + 1;
    return new RoomConnection(dialer, socket, welcome, {
      reconnect: { ...DEFAULT_RECONNECT, ...options.reconnect },
      ackEvery: Math.max(1, Math.min(options.ackEvery ?? 64, 64)),
      ackIntervalMs: options.ackIntervalMs ?? 1000,
      closeTimeoutMs: 5000,
      sendQueue: Math.max(1, options.sendQueue ?? 1024),
    });
  }

  /** Opens a mailbox connection: the room's (`roomId`) or the API key's tenant's. */
  async mailbox(options: MailboxOptions = {}): Promise<Mailbox> {
    const query = new URLSearchParams();
    const protocols = [SUBPROTOCOL];
    let path: string;
    if (options.roomId !== undefined) {
      path = `v1/rooms/${encodeURIComponent(options.roomId)}/msg-relay`;
    } else {
      path = "v1/msg-relay";
      if (this.#apiKey !== undefined) {
        if (this.#credentials === "subprotocol") protocols.push(SUBPROTOCOL_API_KEY + encodeCredential(this.#apiKey));
        else query.set("api_key", this.#apiKey);
      }
    }
    return new Mailbox(await this.#open(path, query, protocols));
  }

  #open(path: string, query: URLSearchParams, protocols: string[]): Promise<Socket> {
    const ctor = this.#WebSocket ?? platformWebSocket();
    const url = new URL(this.#url("ws", path));
    url.search = query.toString();
    return Socket.open(ctor, url.toString(), protocols, this.#connectTimeoutMs);
  }

  /** The URL of `path` under the base, with an http or ws scheme. */
  #url(kind: "http" | "ws", path: string): string {
    const url = new URL(path, this.#base);
    const secure = url.protocol === "https:" || url.protocol === "wss:";
    url.protocol = kind === "http" ? (secure ? "https:" : "http:") : secure ? "wss:" : "ws:";
    return url.toString();
  }
}

/** The typed error of a refused REST call. */
function httpError(resp: Response, text: string): RelayHttpError {
  const body = parseErrorBody(text);
  const retryAfter = Number(resp.headers.get("retry-after"));
  return new RelayHttpError(
    body?.code ?? errorCode(undefined),
    resp.status,
    body?.message ?? (text.slice(0, 200) || resp.statusText),
    Number.isFinite(retryAfter) && resp.headers.has("retry-after") ? retryAfter : undefined,
  );
}
