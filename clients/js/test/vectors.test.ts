/**
 * Byte compatibility: every frame, event, close code and error body in
 * crates/relay-proto/vectors/*.json encodes and decodes as the vectors say, and the
 * lists this client mirrors (error codes, close codes) are the vectors' lists exactly.
 */

import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, test } from "vitest";

import {
  AUTH_FAILURE_CODES,
  CLOSE_CODES,
  ERROR_CODES,
  type ErrorCode,
  type ServerEvent,
  closeCodeName,
  decodeClientFrame,
  decodeMailboxFrame,
  decodeRelayFrame,
  encodeClientControl,
  encodeClientFrame,
  encodeCredential,
  encodeErrorBody,
  encodeMailboxFrame,
  encodeRelayFrame,
  encodeServerEvent,
  errorCode,
  errorStatus,
  fromHex,
  isRetryableClose,
  parseClientControl,
  parseErrorBody,
  parseServerEvent,
  toHex,
} from "../src/proto.js";
import { REPO_DIR } from "./support.js";

// biome-ignore lint: the vectors are plain JSON
type Json = any;

function vectors(file: string): Json {
  return JSON.parse(readFileSync(path.join(REPO_DIR, "crates/relay-proto/vectors", file), "utf8"));
}

describe("room_frames.json", () => {
  const v = vectors("room_frames.json");

  test.each(v.client_frames as Json[])("client frame $name", (f) => {
    const to = f.to === "broadcast" ? "broadcast" : f.to;
    expect(toHex(encodeClientFrame(to, fromHex(f.payload_hex)))).toBe(f.hex);
    const d = decodeClientFrame(fromHex(f.hex))!;
    expect(d.to).toBe(to);
    expect(toHex(d.payload)).toBe(f.payload_hex);
  });

  test.each(v.relay_frames as Json[])("relay frame $name", (f) => {
    const d = decodeRelayFrame(fromHex(f.hex))!;
    expect(d.seq).toBe(BigInt(f.seq));
    expect(d.from).toBe(f.from);
    expect(d.broadcast).toBe(f.broadcast);
    expect(toHex(d.payload)).toBe(f.payload_hex);
    if (f.canonical !== false) {
      const encoded = encodeRelayFrame({
        seq: BigInt(f.seq),
        from: f.from,
        broadcast: f.broadcast,
        payload: fromHex(f.payload_hex),
      });
      expect(toHex(encoded)).toBe(f.hex);
    }
  });

  test("invalid frames are refused", () => {
    for (const f of v.invalid_client_frames as Json[]) expect(decodeClientFrame(fromHex(f.hex)), f.name).toBeUndefined();
    for (const f of v.invalid_relay_frames as Json[]) expect(decodeRelayFrame(fromHex(f.hex)), f.name).toBeUndefined();
  });
});

describe("mailbox_frames.json", () => {
  const v = vectors("mailbox_frames.json");

  test.each(v.frames as Json[])("mailbox frame $name", (f) => {
    const d = decodeMailboxFrame(fromHex(f.hex))!;
    expect(toHex(d.id)).toBe(f.id_hex);
    expect(d.ttlSecs).toBe(f.ttl_secs);
    expect(d.flags).toBe(f.flags);
    expect(d.kind).toBe(f.kind);
    expect(d.oneReceiver).toBe(f.one_receiver);
    expect(toHex(d.payload)).toBe(f.payload_hex);
    const encoded = encodeMailboxFrame({
      id: fromHex(f.id_hex),
      ttlSecs: f.ttl_secs,
      flags: f.flags,
      payload: fromHex(f.payload_hex),
    });
    expect(toHex(encoded)).toBe(f.hex);
  });

  test("frames shorter than 36 bytes are refused", () => {
    for (const f of v.invalid as Json[]) expect(decodeMailboxFrame(fromHex(f.hex)), f.name).toBeUndefined();
  });
});

describe("control_events.json", () => {
  const v = vectors("control_events.json");

  test.each(v.server_events as Json[])("server event $name", (e) => {
    expect(parseServerEvent(e.json)).toEqual(e.event);
    expect(encodeServerEvent(e.event as ServerEvent)).toBe(e.json);
  });

  test.each(v.lenient_server_events as Json[])("lenient server event $name", (e) => {
    expect(parseServerEvent(e.json)).toEqual(e.event);
  });

  test("invalid server events are refused", () => {
    for (const text of v.invalid_server_events as string[]) expect(parseServerEvent(text), text).toBeUndefined();
  });

  test.each(v.client_controls as Json[])("client control $name", (c) => {
    expect(encodeClientControl(c.control)).toBe(c.json);
    expect(parseClientControl(c.json)).toEqual(c.control);
  });

  test.each(v.lenient_client_controls as Json[])("lenient client control $name", (c) => {
    expect(parseClientControl(c.json)).toEqual(c.control);
  });

  test("invalid client controls are refused", () => {
    for (const text of v.invalid_client_controls as string[]) expect(parseClientControl(text), text).toBeUndefined();
  });
});

describe("close_codes.json", () => {
  const v = vectors("close_codes.json");

  test("every close code, its name and whether it is retryable; nothing else", () => {
    const listed = (v.codes as Json[]).map((c) => [c.name, c.code]);
    expect(Object.entries(CLOSE_CODES)).toEqual(listed);
    for (const c of v.codes as Json[]) {
      expect(closeCodeName(c.code)).toBe(c.name);
      expect(isRetryableClose(c.code), String(c.code)).toBe(c.retryable);
    }
    for (const code of v.unknown as number[]) expect(closeCodeName(code), String(code)).toBeUndefined();
  });
});

describe("error_bodies.json", () => {
  const v = vectors("error_bodies.json");

  test("every error code with its status and auth-failure flag; nothing else", () => {
    const listed = (v.codes as Json[]).map((c) => [c.code, c.status]);
    expect(Object.entries(ERROR_CODES)).toEqual(listed);
    for (const c of v.codes as Json[]) {
      expect(errorCode(c.code)).toBe(c.code);
      expect(errorStatus(c.code as ErrorCode)).toBe(c.status);
      expect(AUTH_FAILURE_CODES.has(c.code), c.code).toBe(c.auth_failure);
    }
  });

  test.each(v.bodies as Json[])("error body $code", (b) => {
    expect(parseErrorBody(b.json)).toEqual({ code: b.code, message: b.message });
    expect(encodeErrorBody({ code: b.code, message: b.message })).toBe(b.json);
    expect(errorStatus(b.code)).toBe(b.status);
  });

  test.each(v.lenient_bodies as Json[])("lenient error body $name", (b) => {
    expect(parseErrorBody(b.json)).toEqual({ code: b.code, message: b.message });
  });
});

describe("subprotocol credentials (docs/protocol.md 1.1)", () => {
  test("base64url without padding of the UTF-8 bytes, as documented", () => {
    expect(encodeCredential("ABEiM0RVZneImaq7zN3u/w==")).toBe("QUJFaU0wUlZabmVJbWFxN3pOM3Uvdz09");
    expect(encodeCredential("\u00ff\u00fe?")).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(encodeCredential("a")).toBe("YQ");
  });
});
