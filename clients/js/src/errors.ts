/**
 * Errors, typed by what the relay said: an HTTP refusal carries its error code and
 * status, a closed WebSocket its close code, an in-room `error` event its code.
 */

import { type CloseCodeName, type ErrorCode, closeCodeName, errorStatus, isRetryableClose } from "./proto.js";

/** Base class of every error this client throws or reports. */
export class RelayError extends Error {
  /** Whether trying again (later) may succeed. */
  readonly retryable: boolean;

  constructor(message: string, retryable = false, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "RelayError";
    this.retryable = retryable;
  }
}

/** The relay refused an HTTP request: `{"error":{"code","message"}}` with a status. */
export class RelayHttpError extends RelayError {
  /** The relay's error code (`"unknown"` for a code from a newer relay: go by `status`). */
  readonly code: ErrorCode;
  /** The HTTP status. */
  readonly status: number;
  /** `Retry-After` in seconds, on a 429. */
  readonly retryAfterSecs: number | undefined;

  constructor(code: ErrorCode, status: number, message: string, retryAfterSecs?: number) {
    super(`${status} ${code}: ${message}`, status === 429 || status >= 500);
    this.name = "RelayHttpError";
    this.code = code;
    this.status = status;
    this.retryAfterSecs = retryAfterSecs;
  }
}

/** A WebSocket closed with a code other than a normal close. */
export class RelayCloseError extends RelayError {
  /** The close code (1006 when the connection dropped without a close frame). */
  readonly closeCode: number;
  /** The relay's name for it (`room_expired`, `replaced`...), if it is one of the relay's. */
  readonly closeName: CloseCodeName | undefined;
  /** The close reason. */
  readonly reason: string;

  constructor(closeCode: number, reason: string) {
    const name = closeCodeName(closeCode);
    super(
      `connection closed with ${closeCode}${name ? ` (${name})` : ""}${reason ? `: ${reason}` : ""}`,
      closeCode === 1006 || isRetryableClose(closeCode),
    );
    this.name = "RelayCloseError";
    this.closeCode = closeCode;
    this.closeName = name;
    this.reason = reason;
  }
}

/** An in-room `error` event: something this party sent was refused; the room goes on. */
export class RelayEventError extends RelayError {
  /** The relay's error code. */
  readonly code: ErrorCode;
  /** The HTTP status the code would have. */
  readonly status: number;
  /**
   * The refused data frame, by this party's own count of its data frames in the room
   * (1, 2, 3... across reconnects); `undefined` when a text frame was refused.
   */
  readonly frame: number | undefined;

  constructor(code: ErrorCode, message: string, frame?: number) {
    super(`${code}: ${message}${frame !== undefined ? ` (data frame ${frame})` : ""}`);
    this.name = "RelayEventError";
    this.code = code;
    this.status = errorStatus(code);
    this.frame = frame;
  }
}

/**
 * A party aborted the room (`abort`, close code 4002): the room is over for everyone.
 * Distinct from a connection that failed ({@link RelayCloseError}, {@link RelayReconnectError}).
 */
export class RelayAbortedError extends RelayError {
  /** The slot that aborted (this party's own when it called `abort`); `undefined` if the relay did not say. */
  readonly slot: number | undefined;
  /** Its reason. */
  readonly reason: string;

  constructor(slot: number | undefined, reason: string) {
    super(`the room was aborted${slot !== undefined ? ` by slot ${slot}` : ""}${reason ? `: ${reason}` : ""}`);
    this.name = "RelayAbortedError";
    this.slot = slot;
    this.reason = reason;
  }
}

/**
 * A WebSocket could not be opened: the network failed, or the relay refused the
 * handshake. The platform WebSocket API hides the HTTP status of a refused handshake,
 * so the relay's code (room_full, bad_resume_token...) cannot be told apart here.
 */
export class RelayConnectError extends RelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, true, options);
    this.name = "RelayConnectError";
  }
}

/** The relay broke the protocol (a frame that does not parse, a seq gap). */
export class RelayProtocolError extends RelayError {
  constructor(message: string) {
    super(message);
    this.name = "RelayProtocolError";
  }
}

/** Something did not happen in time. */
export class RelayTimeoutError extends RelayError {
  constructor(what: string, afterMs: number) {
    super(`timed out after ${afterMs} ms waiting for ${what}`, true);
    this.name = "RelayTimeoutError";
  }
}

/** A dropped room connection could not be resumed within the reconnect budget. */
export class RelayReconnectError extends RelayError {
  /** Attempts made. */
  readonly attempts: number;
  /** The last attempt's error. */
  readonly last: unknown;

  constructor(attempts: number, last: unknown) {
    super(`could not resume the room after ${attempts} attempt(s): ${String((last as Error)?.message ?? last)}`, false, {
      cause: last,
    });
    this.name = "RelayReconnectError";
    this.attempts = attempts;
    this.last = last;
  }
}

/** The connection or mailbox was closed by this side. */
export class RelayClosedError extends RelayError {
  constructor(what = "connection") {
    super(`the ${what} is closed`);
    this.name = "RelayClosedError";
  }
}
