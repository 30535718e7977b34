/**
 * A thin layer over the platform `WebSocket` (browsers, React Native, Node 22+, Node 20
 * with `--experimental-websocket`): opening with a timeout, binary frames as
 * `Uint8Array`, and messages held until a handler is attached (some implementations
 * dispatch several messages without running promise callbacks in between).
 */

import { RelayCloseError, RelayConnectError, RelayTimeoutError } from "./errors.js";

/** The constructor of a WebSocket implementation compatible with the WHATWG one. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocket;

/** A message as the client sees it: text for control events, bytes for data. */
export type SocketMessage = string | Uint8Array;

/** One open WebSocket. */
export class Socket {
  readonly #ws: WebSocket;
  #onMessage: ((m: SocketMessage) => void) | undefined;
  #onClose: ((code: number, reason: string) => void) | undefined;
  #held: SocketMessage[] = [];
  #closed: { code: number; reason: string } | undefined;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (ev: MessageEvent) => {
      const data = ev.data as unknown;
      let m: SocketMessage;
      if (typeof data === "string") m = data;
      else if (data instanceof ArrayBuffer) m = new Uint8Array(data);
      else if (ArrayBuffer.isView(data)) m = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      else return; // a Blob cannot arrive: binaryType is "arraybuffer"
      if (this.#onMessage) this.#onMessage(m);
      else this.#held.push(m);
    };
    ws.onclose = (ev: CloseEvent) => {
      this.#closed = { code: ev.code, reason: ev.reason };
      this.#onClose?.(ev.code, ev.reason);
    };
  }

  /**
   * Opens `url` offering `protocols`; resolves once open. A refusal or network failure
   * is a {@link RelayConnectError}; no answer within `timeoutMs` a {@link RelayTimeoutError}.
   */
  static open(ctor: WebSocketConstructor, url: string, protocols: string[], timeoutMs: number): Promise<Socket> {
    return new Promise((resolve, reject) => {
      let ws: WebSocket;
      try {
        ws = new ctor(url, protocols);
      } catch (e) {
        reject(new RelayConnectError(`cannot open ${redact(url)}: ${String(e)}`, { cause: e }));
        return;
      }
      ws.binaryType = "arraybuffer";
      const socket = new Socket(ws);
      const timer = setTimeout(() => {
        ws.onopen = null;
        socket.#onClose = undefined;
        try {
          ws.close();
        } catch {
          // already closing
        }
        reject(new RelayTimeoutError(`the WebSocket handshake with ${redact(url)}`, timeoutMs));
      }, timeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        ws.onerror = null;
        socket.#onClose = undefined;
        resolve(socket);
      };
      // Some implementations (Node 20's) report a refused handshake as an error event
      // and never a close event.
      ws.onerror = () => {
        clearTimeout(timer);
        ws.onopen = null;
        ws.onerror = null;
        socket.#onClose = undefined;
        reject(
          new RelayConnectError(
            `the WebSocket to ${redact(url)} failed: the relay refused the handshake or the network failed`,
          ),
        );
      };
      socket.#onClose = (code, reason) => {
        clearTimeout(timer);
        reject(
          code === 1006
            ? new RelayConnectError(
                `the WebSocket to ${redact(url)} failed: the relay refused the handshake or the network failed`,
              )
            : new RelayCloseError(code, reason),
        );
      };
    });
  }

  /** The subprotocol the relay chose (`relay.v1`), or `""`. */
  get protocol(): string {
    return this.#ws.protocol;
  }

  /** Whether the socket can still send. */
  get isOpen(): boolean {
    return this.#ws.readyState === 1 && this.#closed === undefined;
  }

  /** Attaches the handlers; messages held so far are handed over at once. */
  attach(onMessage: (m: SocketMessage) => void, onClose: (code: number, reason: string) => void): void {
    this.#onMessage = onMessage;
    this.#onClose = onClose;
    while (this.#held.length > 0 && this.#onMessage === onMessage) onMessage(this.#held.shift()!);
    if (this.#closed && this.#onClose === onClose) onClose(this.#closed.code, this.#closed.reason);
  }

  /** Detaches the handlers; later messages are held again. */
  detach(): void {
    this.#onMessage = undefined;
    this.#onClose = undefined;
  }

  /** Sends a frame; false when the socket is no longer open. */
  send(data: SocketMessage): boolean {
    if (!this.isOpen) return false;
    try {
      this.#ws.send(data);
      return true;
    } catch {
      return false;
    }
  }

  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void {
    try {
      this.#ws.close(code, reason);
    } catch {
      // already closed
    }
  }
}

/** `url` without its query string (which may carry a key or token), for messages. */
export function redact(url: string): string {
  const q = url.indexOf("?");
  return q < 0 ? url : `${url.slice(0, q)}?…`;
}

/** The platform WebSocket, or a helpful error when there is none. */
export function platformWebSocket(): WebSocketConstructor {
  const ctor = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!ctor) {
    throw new RelayConnectError(
      "no WebSocket on this platform: use Node 22+, run Node 20 with --experimental-websocket, or pass options.WebSocket",
    );
  }
  return ctor;
}
