/**
 * A party's connection to a room: numbered, sender-stamped messages from the other
 * parties, in order and each exactly once, across dropped connections.
 *
 * The model is the Rust client's (crates/relay-client/src/room.rs): incoming frames go
 * into a queue read through {@link RoomConnection.messages}; the client acks only what
 * the application has taken from it (every 64 messages, or each second), and after a
 * drop it resumes with the resume token and the highest seq it queued, so the relay
 * replays exactly what comes after. Sends made while the connection is being resumed
 * wait and go out after the resume; a frame that was in flight when the connection
 * dropped may be lost (the protocol acks only the receive side).
 */

import {
  RelayClosedError,
  RelayCloseError,
  RelayError,
  RelayEventError,
  RelayProtocolError,
  RelayReconnectError,
  RelayTimeoutError,
} from "./errors.js";
import {
  type Destination,
  type ServerEvent,
  type Welcome,
  decodeRelayFrame,
  encodeClientControl,
  encodeClientFrame,
  parseServerEvent,
} from "./proto.js";
import { Socket, type SocketMessage } from "./socket.js";

/** One data message from another party. */
export interface RoomMessage {
  /** The sender's slot, stamped by the relay. */
  from: number;
  /** This party's receive sequence number: 1, 2, 3... with no gaps. */
  seq: number;
  /** The payload. */
  payload: Uint8Array;
  /** Whether the sender broadcast it (else it was sent to this slot only). */
  broadcast: boolean;
}

/** When and how often a dropped connection is resumed. */
export interface ReconnectPolicy {
  /** Attempts before giving up; 0 disables resuming (default 10). */
  maxAttempts: number;
  /** Wait before the second attempt (the first is immediate); doubles each time (default 100 ms). */
  initialBackoffMs: number;
  /** Upper bound of the wait between attempts (default 2 s). */
  maxBackoffMs: number;
  /** Give up this long after the drop; keep it under the relay's reconnect grace (default 25 s). */
  deadlineMs: number;
}

/** Defaults of {@link ReconnectPolicy}, the Rust client's. */
export const DEFAULT_RECONNECT: ReconnectPolicy = {
  maxAttempts: 10,
  initialBackoffMs: 100,
  maxBackoffMs: 2000,
  deadlineMs: 25_000,
};

/** Events of a room connection and what their handlers receive. */
export interface RoomEvents {
  /** Another party connected (first time or reconnect). */
  joined: (slot: number) => void;
  /** Another party's connection dropped (its slot is held for a reconnect), or it left. */
  left: (slot: number) => void;
  /** This connection ended for good with an error (room expired, replaced, resume failed...). */
  aborted: (error: RelayError) => void;
  /** Every slot has joined at least once. */
  ready: (roomSize: number) => void;
  /** The connection dropped and was resumed; nothing was lost or repeated on the receive side. */
  reconnected: (info: { attempts: number }) => void;
  /** The relay refused something this party sent (`bad_destination`, `room_buffer_full`...). */
  error: (error: RelayEventError) => void;
  /** The relay is about to close the connection with this code. */
  closing: (info: { code: number; reason: string }) => void;
  /** The connection is over (after `close()`, the room closing, or `aborted`). */
  closed: () => void;
}

/** What {@link RoomConnection} needs to open (and reopen) its socket. */
export interface RoomDialer {
  /** Opens a socket to the room and waits for its `welcome`. */
  open(resume: { token: string; lastSeq: number } | undefined): Promise<{ socket: Socket; welcome: Welcome }>;
}

/** Tuning of a room connection. */
export interface RoomTuning {
  reconnect: ReconnectPolicy;
  /** Ack after this many messages taken (protocol: at most 64). */
  ackEvery: number;
  /** Ack at least this often while messages are taken (protocol: about 1 s). */
  ackIntervalMs: number;
  /** How long `close()` waits for the relay's close after `leave`. */
  closeTimeoutMs: number;
}

type Handlers = { [K in keyof RoomEvents]: Set<RoomEvents[K]> };

/** Reads the relay's `welcome` from a freshly opened socket. */
export function readWelcome(socket: Socket, timeoutMs: number): Promise<Welcome> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.detach();
      socket.close();
      reject(new RelayTimeoutError("the relay's welcome", timeoutMs));
    }, timeoutMs);
    socket.attach(
      (m) => {
        clearTimeout(timer);
        socket.detach();
        const event = typeof m === "string" ? parseServerEvent(m) : undefined;
        if (event?.type === "welcome") {
          resolve(event);
        } else {
          socket.close();
          reject(new RelayProtocolError(`expected welcome, got ${typeof m === "string" ? m : "a binary frame"}`));
        }
      },
      (code, reason) => {
        clearTimeout(timer);
        socket.detach();
        reject(new RelayCloseError(code, reason));
      },
    );
  });
}

/** A party in a room. Get one from `RelayClient.joinRoom`. */
export class RoomConnection {
  /** The room. */
  readonly roomId: string;
  /** This party's slot. */
  readonly slot: number;
  /** Number of parties (slots `0..roomSize`). */
  readonly roomSize: number;
  /** When the room closes, Unix seconds. */
  readonly expiresAt: number;

  readonly #dialer: RoomDialer;
  readonly #tuning: RoomTuning;
  #socket: Socket | undefined;
  #resumeToken: string;
  /** Highest seq put in the queue: what a resume continues after. */
  #lastSeq = 0;
  /** Highest seq the application took. */
  #consumed = 0;
  /** Highest seq acked to the relay. */
  #acked = 0;
  #queue: RoomMessage[] = [];
  #waiters: Array<{ resolve: (r: IteratorResult<RoomMessage>) => void; reject: (e: unknown) => void }> = [];
  /** Frames to send once (re)connected. */
  #outbox: Uint8Array[] = [];
  #state: "open" | "reconnecting" | "leaving" | "closed" = "open";
  #error: RelayError | undefined;
  #isReady = false;
  #readyWaiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  #closeWaiters: Array<() => void> = [];
  #closing: { code: number; reason: string } | undefined;
  #ackTimer: ReturnType<typeof setInterval> | undefined;
  #handlers: Handlers = {
    joined: new Set(),
    left: new Set(),
    aborted: new Set(),
    ready: new Set(),
    reconnected: new Set(),
    error: new Set(),
    closing: new Set(),
    closed: new Set(),
  };

  /** @internal Use `RelayClient.joinRoom`. */
  constructor(dialer: RoomDialer, socket: Socket, welcome: Welcome, tuning: RoomTuning) {
    this.roomId = welcome.room_uuid;
    this.slot = welcome.slot;
    this.roomSize = welcome.room_size;
    this.expiresAt = welcome.expires_at;
    this.#dialer = dialer;
    this.#tuning = tuning;
    this.#resumeToken = welcome.resume_token;
    this.#lastSeq = welcome.next_seq - 1;
    this.#consumed = this.#lastSeq;
    this.#acked = this.#lastSeq;
    this.#attach(socket);
    this.#ackTimer = setInterval(() => this.#ack(true), tuning.ackIntervalMs);
    // Never keep a Node process alive for the timer alone.
    (this.#ackTimer as { unref?: () => void }).unref?.();
  }

  /** Resolves once every slot has joined at least once; rejects if the connection ends first. */
  ready(): Promise<void> {
    if (this.#isReady) return Promise.resolve();
    if (this.#state === "closed") return Promise.reject(this.#error ?? new RelayClosedError("room connection"));
    return new Promise((resolve, reject) => this.#readyWaiters.push({ resolve, reject }));
  }

  /** Sends `payload` to the party in slot `toSlot`. Queued while the connection is being resumed. */
  send(toSlot: number, payload: Uint8Array): void {
    this.#enqueue(toSlot, payload);
  }

  /** Sends `payload` to every other party. */
  broadcast(payload: Uint8Array): void {
    this.#enqueue("broadcast", payload);
  }

  /**
   * The messages from the other parties, in seq order, each exactly once. Ends when the
   * connection closes normally; throws the error when it is aborted. Taking a message
   * from it is what lets the client ack it.
   */
  messages(): AsyncIterableIterator<RoomMessage> {
    const iterator: AsyncIterableIterator<RoomMessage> = {
      next: () => this.#next(),
      return: async () => ({ done: true, value: undefined }),
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  /** Subscribes `handler` to `event`; returns a function that unsubscribes it. */
  on<K extends keyof RoomEvents>(event: K, handler: RoomEvents[K]): () => void {
    const set = this.#handlers[event] as Set<RoomEvents[K]>;
    set.add(handler);
    return () => set.delete(handler);
  }

  /**
   * Leaves the room: acks what was taken, sends `leave` (the relay stops holding
   * messages for this slot) and waits for the relay to close the connection.
   */
  async close(): Promise<void> {
    if (this.#state === "closed") return;
    if (this.#state === "leaving") return new Promise((resolve) => this.#closeWaiters.push(resolve));
    const socket = this.#state === "open" ? this.#socket : undefined;
    this.#state = "leaving";
    if (!socket) {
      this.#finish(undefined);
      return;
    }
    this.#ack(true);
    socket.send(encodeClientControl({ type: "leave" }));
    const done = new Promise<void>((resolve) => this.#closeWaiters.push(resolve));
    const timer = setTimeout(() => {
      socket.close(1000, "left");
      this.#finish(undefined);
    }, this.#tuning.closeTimeoutMs);
    await done;
    clearTimeout(timer);
  }

  /** The resume token, to take this slot back from another process (keep it secret). */
  get resumeToken(): string {
    return this.#resumeToken;
  }

  /** The last seq handed to the application. */
  get lastSeq(): number {
    return this.#consumed;
  }

  #enqueue(to: Destination, payload: Uint8Array): void {
    if (this.#state === "closed" || this.#state === "leaving") {
      throw this.#error ?? new RelayClosedError("room connection");
    }
    const frame = encodeClientFrame(to, payload);
    if (this.#state === "open" && this.#outbox.length === 0 && this.#socket?.send(frame)) return;
    this.#outbox.push(frame);
  }

  #next(): Promise<IteratorResult<RoomMessage>> {
    const m = this.#queue.shift();
    if (m) {
      this.#take(m);
      return Promise.resolve({ done: false, value: m });
    }
    if (this.#state === "closed") {
      return this.#error ? Promise.reject(this.#error) : Promise.resolve({ done: true, value: undefined });
    }
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** The application took `m`: ack when enough are waiting. */
  #take(m: RoomMessage): void {
    this.#consumed = m.seq;
    this.#ack(false);
  }

  #ack(timer: boolean): void {
    const { ackEvery } = this.#tuning;
    if (this.#consumed <= this.#acked || (!timer && this.#consumed - this.#acked < ackEvery)) return;
    if (this.#state !== "open" && this.#state !== "leaving") return;
    if (this.#socket?.send(encodeClientControl({ type: "ack", seq: this.#consumed }))) {
      this.#acked = this.#consumed;
    }
  }

  #attach(socket: Socket): void {
    this.#socket = socket;
    socket.attach(
      (m) => this.#onMessage(m),
      (code, reason) => this.#onClose(socket, code, reason),
    );
  }

  #onMessage(m: SocketMessage): void {
    if (typeof m !== "string") {
      const f = decodeRelayFrame(m);
      if (!f) return this.#abort(new RelayProtocolError(`a data frame of ${m.length} bytes, shorter than its header`));
      if (f.seq > BigInt(Number.MAX_SAFE_INTEGER)) {
        return this.#abort(new RelayProtocolError(`seq ${f.seq} is past what this client counts`));
      }
      const seq = Number(f.seq);
      if (seq <= this.#lastSeq) return; // delivered before the resume
      if (seq !== this.#lastSeq + 1) {
        return this.#abort(new RelayProtocolError(`seq jumped from ${this.#lastSeq} to ${seq}`));
      }
      this.#lastSeq = seq;
      // Copy: the payload must outlive the frame's buffer whatever the platform does with it.
      const msg: RoomMessage = { from: f.from, seq, payload: f.payload.slice(), broadcast: f.broadcast };
      const waiter = this.#waiters.shift();
      if (waiter) {
        this.#take(msg);
        waiter.resolve({ done: false, value: msg });
      } else {
        this.#queue.push(msg);
      }
      return;
    }
    const event: ServerEvent | undefined = parseServerEvent(m);
    if (!event) return; // a control event from a newer relay
    switch (event.type) {
      case "welcome":
        return this.#abort(new RelayProtocolError("a second welcome"));
      case "joined":
      case "left":
        return this.#emit(event.type, event.slot);
      case "ready":
        this.#isReady = true;
        for (const w of this.#readyWaiters.splice(0)) w.resolve();
        return this.#emit("ready", event.room_size);
      case "error":
        return this.#emit("error", new RelayEventError(event.code, event.message));
      case "closing":
        this.#closing = { code: event.code, reason: event.reason };
        return this.#emit("closing", { code: event.code, reason: event.reason });
    }
  }

  #onClose(socket: Socket, code: number, reason: string): void {
    if (socket !== this.#socket) return;
    this.#socket = undefined;
    socket.detach();
    if (this.#state === "closed") return;
    if (!reason && this.#closing?.code === code) reason = this.#closing.reason;
    this.#closing = undefined;
    if (this.#state === "leaving" || code === 1000) return this.#finish(undefined);
    // A dropped link (no close frame: 1005, 1006) or "reconnect" (1011, 1013): resume.
    const dropped = code === 1005 || code === 1006 || code === 1011 || code === 1013;
    if (dropped && this.#tuning.reconnect.maxAttempts > 0) {
      void this.#reconnect(new RelayCloseError(code, reason));
      return;
    }
    this.#abort(new RelayCloseError(code, reason));
  }

  async #reconnect(cause: RelayError): Promise<void> {
    this.#state = "reconnecting";
    const policy = this.#tuning.reconnect;
    const start = Date.now();
    let backoff = policy.initialBackoffMs;
    let last: unknown = cause;
    let attempts = 0;
    for (;;) {
      attempts++;
      try {
        const { socket, welcome } = await this.#dialer.open({ token: this.#resumeToken, lastSeq: this.#lastSeq });
        if (this.#state !== "reconnecting") {
          socket.close(1000, "left");
          return;
        }
        this.#resumeToken = welcome.resume_token;
        this.#state = "open";
        this.#attach(socket);
        while (this.#outbox.length > 0 && this.#state === "open") {
          if (!socket.send(this.#outbox[0]!)) break;
          this.#outbox.shift();
        }
        this.#ack(true);
        this.#emit("reconnected", { attempts });
        return;
      } catch (e) {
        last = e;
        if (e instanceof RelayError && !e.retryable) break;
      }
      if (this.#state !== "reconnecting") return;
      if (attempts >= policy.maxAttempts || Date.now() - start + backoff >= policy.deadlineMs) {
        return this.#abort(new RelayReconnectError(attempts, last));
      }
      await new Promise((r) => setTimeout(r, backoff));
      if (this.#state !== "reconnecting") return;
      backoff = Math.min(backoff * 2, policy.maxBackoffMs);
    }
    this.#abort(new RelayReconnectError(attempts, last));
  }

  #abort(error: RelayError): void {
    if (this.#state === "closed") return;
    this.#socket?.detach();
    this.#socket?.close(1000, "client error");
    this.#finish(error);
  }

  #finish(error: RelayError | undefined): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#error = error;
    this.#socket = undefined;
    if (this.#ackTimer !== undefined) clearInterval(this.#ackTimer);
    const closed = error ?? new RelayClosedError("room connection");
    for (const w of this.#readyWaiters.splice(0)) w.reject(closed);
    for (const w of this.#waiters.splice(0)) {
      if (error) w.reject(error);
      else w.resolve({ done: true, value: undefined });
    }
    if (error) this.#emit("aborted", error);
    this.#emit("closed");
    for (const w of this.#closeWaiters.splice(0)) w();
  }

  #emit<K extends keyof RoomEvents>(event: K, ...args: Parameters<RoomEvents[K]>): void {
    for (const h of [...this.#handlers[event]]) {
      try {
        (h as (...a: Parameters<RoomEvents[K]>) => void)(...args);
      } catch (e) {
        // A handler's bug must not break the connection.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}
