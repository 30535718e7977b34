/**
 * The mailbox (Silence Labs compatible, docs/protocol.md section 4): publish a message
 * under a 32-byte ID, ask for an ID and get the message when it exists.
 */

import { RelayClosedError, RelayCloseError, RelayError, RelayTimeoutError } from "./errors.js";
import { MAILBOX_ID_LEN, MAILBOX_ONE_RECEIVER, decodeMailboxFrame, encodeMailboxFrame, toHex } from "./proto.js";
import type { Socket, SocketMessage } from "./socket.js";

/** Options of {@link Mailbox.publish}. */
export interface PublishOptions {
  /** Seconds the relay stores the message (capped by its `max_mailbox_ttl`). */
  ttlSecs: number;
  /** Remove the message after its first delivery: exactly one asker gets it. */
  oneReceiver?: boolean;
}

/** Options of {@link Mailbox.ask}. */
export interface AskOptions {
  /** Seconds to wait for the message (default 60); the promise rejects after that. */
  ttlSecs?: number;
}

/** Default wait of an ask, in seconds. */
export const DEFAULT_ASK_TTL_SECS = 60;
/** Slack on top of an ask's TTL before the client gives up on it, in ms. */
const ASK_GRACE_MS = 1000;

interface Waiter {
  resolve: (payload: Uint8Array) => void;
  reject: (e: unknown) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** A mailbox connection. Get one from `RelayClient.mailbox`. */
export class Mailbox {
  readonly #socket: Socket;
  /** Asks waiting, by hex ID. */
  #asks = new Map<string, Waiter[]>();
  #error: RelayError | undefined;
  #closed = false;
  #closeWaiters: Array<() => void> = [];

  /** @internal Use `RelayClient.mailbox`. */
  constructor(socket: Socket) {
    this.#socket = socket;
    socket.attach(
      (m) => this.#onMessage(m),
      (code, reason) => this.#finish(code === 1000 ? undefined : new RelayCloseError(code, reason)),
    );
  }

  /** Publishes `payload` (at least one byte) under `id` (32 bytes). */
  async publish(id: Uint8Array, payload: Uint8Array, options: PublishOptions): Promise<void> {
    this.#check();
    if (payload.length === 0) throw new RangeError("a mailbox message needs at least one byte of payload");
    const flags = options.oneReceiver ? MAILBOX_ONE_RECEIVER : 0;
    const frame = encodeMailboxFrame({ id, ttlSecs: options.ttlSecs, flags, payload });
    if (!this.#socket.send(frame)) throw this.#error ?? new RelayClosedError("mailbox");
  }

  /**
   * Asks for `id` (32 bytes): resolves with the payload once a message with that ID is
   * published (or at once if it is stored); rejects with a timeout after `ttlSecs`.
   */
  ask(id: Uint8Array, options: AskOptions = {}): Promise<Uint8Array> {
    this.#check();
    if (id.length !== MAILBOX_ID_LEN) throw new RangeError(`a mailbox ID is ${MAILBOX_ID_LEN} bytes, got ${id.length}`);
    const ttlSecs = options.ttlSecs ?? DEFAULT_ASK_TTL_SECS;
    const key = toHex(id);
    const promise = new Promise<Uint8Array>((resolve, reject) => {
      const waitMs = ttlSecs * 1000 + ASK_GRACE_MS;
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#remove(key, waiter);
          reject(new RelayTimeoutError(`mailbox message ${key}`, waitMs));
        }, waitMs),
      };
      const list = this.#asks.get(key) ?? [];
      list.push(waiter);
      this.#asks.set(key, list);
    });
    // Asking again for an ID already asked changes nothing at the relay (and renews an
    // ask the relay already forgot); one delivery serves every waiter.
    if (!this.#socket.send(encodeMailboxFrame({ id, ttlSecs, flags: 0, payload: new Uint8Array() }))) {
      this.#finish(this.#error ?? new RelayClosedError("mailbox"));
    }
    return promise;
  }

  /** Closes the connection; asks still waiting reject. Published messages stay until their TTL. */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.#closeWaiters.push(resolve));
    this.#socket.close(1000, "done");
    // Do not wait on a relay that does not answer the close.
    const timer = setTimeout(() => this.#finish(undefined), 2000);
    return done.finally(() => clearTimeout(timer));
  }

  #check(): void {
    if (this.#closed) throw this.#error ?? new RelayClosedError("mailbox");
  }

  #onMessage(m: SocketMessage): void {
    if (typeof m === "string") return; // the relay sends only binary frames
    const frame = decodeMailboxFrame(m);
    if (!frame || frame.kind !== "publish") return;
    const key = toHex(frame.id);
    const waiters = this.#asks.get(key);
    if (!waiters) return;
    this.#asks.delete(key);
    const payload = frame.payload.slice();
    for (const w of waiters) {
      clearTimeout(w.timer);
      w.resolve(payload);
    }
  }

  #remove(key: string, waiter: Waiter): void {
    const list = this.#asks.get(key)?.filter((w) => w !== waiter);
    if (list && list.length > 0) this.#asks.set(key, list);
    else this.#asks.delete(key);
  }

  #finish(error: RelayError | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#error = error;
    this.#socket.detach();
    const reason = error ?? new RelayClosedError("mailbox");
    for (const list of this.#asks.values()) {
      for (const w of list) {
        clearTimeout(w.timer);
        w.reject(reason);
      }
    }
    this.#asks.clear();
    for (const w of this.#closeWaiters.splice(0)) w();
  }
}
