/**
 * A party's connection to a room: numbered, sender-stamped messages from the other
 * parties, in order and each exactly once, across dropped connections.
 *
 * The model is the Rust client's (crates/relay-client/src/room.rs): incoming frames go
 * into a queue read through {@link RoomConnection.messages}; the client acks only what
 * the application has taken from it (every 64 messages, or each second), and after a
 * drop it resumes with the resume token and the highest seq it queued, so the relay
 * replays exactly what comes after.
 *
 * Sends are exactly-once too (docs/protocol.md 3.5): the client numbers its data frames
 * 1, 2, 3... for the room's life and keeps those the relay has not confirmed taking;
 * after a resume it sends again exactly the ones numbered above the `welcome`'s
 * `received`. Sends made while the link is down are kept the same way and go out, in
 * order, after the resume. Confirmations come from `welcome.received`, an `error`
 * naming a frame, and `status` answers: past `sendQueue` kept frames the client asks
 * the relay for its `status` itself (once at a time) and hides the answer from the
 * application.
 */

import {
  RelayAbortedError,
  RelayClosedError,
  RelayCloseError,
  RelayError,
  RelayEventError,
  RelayProtocolError,
  RelayReconnectError,
  RelayTimeoutError,
} from "./errors.js";
import {
  CLOSE_CODES,
  type Destination,
  type ServerEvent,
  type Welcome,
  boundAbortReason,
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

/** The answer to {@link RoomConnection.status}, each list indexed by slot. */
export interface RoomStatus {
  /** Slots connected now. */
  present: number[];
  /** Data frames the relay has taken from each slot, over all its connections. */
  sent: number[];
  /** Milliseconds since each slot last sent a data frame (since the room's creation for a slot that never sent). */
  idleMs: number[];
}

/** Who aborted the room, and why (the relay's `aborted` event). */
export interface AbortInfo {
  /** The slot that aborted, stamped by the relay. */
  slot: number;
  /** Its reason (at most 256 UTF-8 bytes: the relay cuts longer ones). */
  reason: string;
}

/** Events of a room connection and what their handlers receive. */
export interface RoomEvents {
  /** Another party connected (first time or reconnect). */
  joined: (slot: number) => void;
  /** Another party's connection dropped (its slot is held for a reconnect), or it left. */
  left: (slot: number) => void;
  /**
   * Another party aborted the room (`party.abort(reason)` there): the relay names its
   * slot and reason, then closes every connection with 4002 and the room is over
   * (`failed` follows with a {@link RelayAbortedError}).
   */
  aborted: (info: AbortInfo) => void;
  /**
   * This connection ended for good with an error: a {@link RelayAbortedError} when a
   * party aborted the room, else why it failed (room expired, replaced, resume failed:
   * {@link RelayCloseError}, {@link RelayReconnectError}...). `messages()` throws the same error.
   */
  failed: (error: RelayError) => void;
  /** Every slot has joined at least once. */
  ready: (roomSize: number) => void;
  /** The connection dropped and was resumed; nothing was lost or repeated, in either direction. */
  reconnected: (info: { attempts: number }) => void;
  /**
   * The relay refused something this party sent (`bad_destination`, `room_buffer_full`...);
   * `error.frame` names the refused data frame by this party's count (1, 2, 3... in the room).
   */
  error: (error: RelayEventError) => void;
  /** The relay is about to close the connection with this code. */
  closing: (info: { code: number; reason: string }) => void;
  /** The connection is over (after `close()`, `abort()`, the room closing, or `failed`). */
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
  /** Past this many unconfirmed sent frames, ask the relay's `status` to confirm them (default 1024). */
  sendQueue: number;
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
  /**
   * Data frames not known to be taken by the relay, with their numbers (this party's
   * count of its data frames in the room). All were sent on the current socket when
   * open; after a resume those above `welcome.received` are sent again.
   */
  #retained: Array<{ n: number; frame: Uint8Array }> = [];
  /** The number the next data frame gets. */
  #nextFrame = 1;
  /** `status` requests awaiting their answer, oldest first: the application's have a waiter. */
  #statusRequests: Array<{ resolve: (s: RoomStatus) => void; reject: (e: unknown) => void } | undefined> = [];
  /** Who aborted the room, from the `aborted` event or this party's own `abort`. */
  #abortedBy: AbortInfo | undefined;
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
    failed: new Set(),
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
    this.#nextFrame = welcome.received + 1;
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

  /**
   * Sends `payload` to the party in slot `toSlot`, exactly once: kept until the relay
   * confirms it, sent again after a resume if the relay had not taken it, and queued
   * while the connection is being resumed.
   */
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

  /**
   * Aborts the room for everyone (e.g. this party caught a cheater): the others get the
   * `aborted` event naming this slot and `reason` (cut to 256 UTF-8 bytes), the relay
   * closes every connection with 4002 and the room is over. Resolves once this
   * connection is closed; `messages()` then throws a {@link RelayAbortedError} naming
   * this slot. While the link is down the abort goes out after the resume.
   */
  async abort(reason = ""): Promise<void> {
    if (this.#state === "closed") return;
    if (this.#state === "leaving") return new Promise((resolve) => this.#closeWaiters.push(resolve));
    const cut = boundAbortReason(reason);
    this.#abortedBy = { slot: this.slot, reason: cut };
    const done = new Promise<void>((resolve) => this.#closeWaiters.push(resolve));
    if (this.#state === "reconnecting") {
      this.#pendingAbort = cut;
      return done;
    }
    this.#sendAbort(cut);
    return done;
  }

  #pendingAbort: string | undefined;

  #sendAbort(reason: string): void {
    const socket = this.#socket;
    this.#state = "leaving";
    if (!socket?.send(encodeClientControl({ type: "abort", reason }))) {
      return this.#finish(new RelayAbortedError(this.slot, reason));
    }
    const timer = setTimeout(() => {
      socket.close(1000, "aborted");
      this.#finish(new RelayAbortedError(this.slot, reason));
    }, this.#tuning.closeTimeoutMs);
    this.#closeWaiters.push(() => clearTimeout(timer));
  }

  /**
   * Asks the relay for the room's status: the slots connected now, the data frames it
   * has taken from each slot, and how long each has been idle. Asked on the next
   * connection when the link is down.
   */
  status(): Promise<RoomStatus> {
    if (this.#state === "closed" || this.#state === "leaving") {
      return Promise.reject(this.#error ?? new RelayClosedError("room connection"));
    }
    return new Promise((resolve, reject) => {
      this.#statusRequests.push({ resolve, reject });
      if (this.#state === "open") this.#socket?.send(encodeClientControl({ type: "status" }));
    });
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
    this.#retained.push({ n: this.#nextFrame++, frame });
    if (this.#state !== "open" || !this.#socket) return; // sent after the resume
    this.#socket.send(frame); // a failed send is the drop's: the frame is kept
    this.#boundRetained();
  }

  /** Forgets the kept frames the relay has taken (numbered up to `received`). */
  #takenThrough(received: number): void {
    let i = 0;
    while (i < this.#retained.length && this.#retained[i]!.n <= received) i++;
    if (i > 0) this.#retained.splice(0, i);
  }

  /** Past `sendQueue` kept frames, asks the relay (once at a time) how many it has taken. */
  #boundRetained(): void {
    if (this.#retained.length <= Math.max(1, this.#tuning.sendQueue)) return;
    if (this.#statusRequests.includes(undefined)) return;
    if (this.#socket?.send(encodeClientControl({ type: "status" }))) this.#statusRequests.push(undefined);
  }

  /** Unconfirmed sent frames this client keeps (for tests and diagnostics). */
  get unconfirmedSends(): number {
    return this.#retained.length;
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
        // The relay takes frames in order: everything up to a refused one was taken.
        if (event.frame !== undefined) this.#takenThrough(event.frame);
        return this.#emit("error", new RelayEventError(event.code, event.message, event.frame));
      case "aborted":
        this.#abortedBy = { slot: event.slot, reason: event.reason };
        return this.#emit("aborted", { slot: event.slot, reason: event.reason });
      case "status": {
        const sent = event.sent[this.slot];
        if (sent !== undefined) this.#takenThrough(sent);
        const waiter = this.#statusRequests.shift();
        // The client's own request (bounding kept frames) stays out of the app's view.
        waiter?.resolve({ present: event.present, sent: event.sent, idleMs: event.idle_ms });
        return;
      }
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
    if (code === CLOSE_CODES.aborted) {
      const by = this.#abortedBy;
      return this.#finish(new RelayAbortedError(by?.slot, by?.reason ?? reason));
    }
    if (this.#state === "leaving" && this.#abortedBy?.slot === this.slot) {
      return this.#finish(new RelayAbortedError(this.slot, this.#abortedBy.reason));
    }
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
        this.#takenThrough(welcome.received);
        this.#nextFrame = Math.max(this.#nextFrame, welcome.received + 1);
        // Answers to the client's own requests on the old connection will not come;
        // the application's are asked again below.
        this.#statusRequests = this.#statusRequests.filter((r) => r !== undefined);
        this.#state = "open";
        this.#socket = socket;
        // Exactly the frames the relay has not taken, in order, before anything new.
        for (const { frame } of this.#retained) socket.send(frame);
        for (let i = 0; i < this.#statusRequests.length; i++) socket.send(encodeClientControl({ type: "status" }));
        this.#attach(socket);
        if (this.#state !== "open") return; // the new socket closed at once: handled there
        this.#ack(true);
        this.#emit("reconnected", { attempts });
        if (this.#pendingAbort !== undefined) {
          const reason = this.#pendingAbort;
          this.#pendingAbort = undefined;
          this.#sendAbort(reason);
        } else {
          this.#boundRetained();
        }
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
    for (const w of this.#statusRequests.splice(0)) w?.reject(closed);
    for (const w of this.#waiters.splice(0)) {
      if (error) w.reject(error);
      else w.resolve({ done: true, value: undefined });
    }
    if (error) this.#emit("failed", error);
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
