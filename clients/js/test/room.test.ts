/**
 * The room connection's resume logic against a scripted fake WebSocket: what it sends
 * (acks, leave, queued frames, the resume handshake) and what it delivers (each seq
 * once, in order) when the relay replays, drops or closes.
 */

import { describe, expect, test } from "vitest";

import {
  RelayAbortedError,
  RelayClient,
  RelayCloseError,
  RelayProtocolError,
  RelayReconnectError,
  type RoomConnection,
  type RoomMessage,
} from "../src/index.js";
import { encodeRelayFrame, encodeServerEvent } from "../src/proto.js";

/** A fake WebSocket the test drives: every instance is recorded with what it sent. */
class FakeSocket {
  static instances: FakeSocket[] = [];
  static refuse = 0;
  onopen: (() => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: (() => void) | null = null;
  binaryType = "blob";
  readyState = 0;
  protocol = "";
  sent: Array<string | Uint8Array> = [];

  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {
    FakeSocket.instances.push(this);
    setTimeout(() => {
      if (FakeSocket.refuse > 0) {
        FakeSocket.refuse--;
        this.onerror?.();
        return;
      }
      this.readyState = 1;
      this.protocol = "relay.v1";
      this.onopen?.();
    }, 0);
  }

  send(data: string | Uint8Array): void {
    this.sent.push(typeof data === "string" ? data : new Uint8Array(data));
  }

  close(code = 1000, reason = ""): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }

  /** The relay sends text. */
  text(t: string): void {
    this.onmessage?.({ data: t });
  }

  /** The relay sends a data frame with `seq`. */
  data(seq: number, from = 1, payload = `p${seq}`): void {
    const frame = encodeRelayFrame({ seq: BigInt(seq), from, broadcast: false, payload: new TextEncoder().encode(payload) });
    this.onmessage?.({ data: frame.buffer });
  }

  /** The link drops (no close frame). */
  drop(code = 1006): void {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }

  texts(): string[] {
    return this.sent.filter((s): s is string => typeof s === "string");
  }

  frames(): Uint8Array[] {
    return this.sent.filter((s): s is Uint8Array => typeof s !== "string");
  }
}

function welcome(next_seq: number, resumed = false, received = 0): string {
  return encodeServerEvent({
    type: "welcome",
    room_uuid: "1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c9d",
    slot: 0,
    room_size: 2,
    resume_token: resumed ? "token-2" : "token-1",
    expires_at: 1767225600,
    present: [0],
    resumed,
    next_seq,
    received,
  });
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 400 && !cond(); i++) await tick(5);
  expect(cond()).toBe(true);
}

/** Joins through a fake socket and answers the welcome. */
async function join(options: Parameters<RelayClient["joinRoom"]>[1] = {}): Promise<{ party: RoomConnection; ws: FakeSocket }> {
  FakeSocket.instances = [];
  FakeSocket.refuse = 0;
  const client = new RelayClient({
    url: "https://relay.example/prefix",
    WebSocket: FakeSocket as never,
    connectTimeoutMs: 2000,
  });
  const joining = client.joinRoom("1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c9d", {
    reconnect: { initialBackoffMs: 5, maxBackoffMs: 10, deadlineMs: 2000 },
    ...options,
  });
  await until(() => FakeSocket.instances[0]?.readyState === 1);
  const ws = FakeSocket.instances[0]!;
  ws.text(welcome(1));
  return { party: await joining, ws };
}

async function take(party: RoomConnection, n: number): Promise<RoomMessage[]> {
  const out: RoomMessage[] = [];
  for await (const m of party.messages()) {
    out.push(m);
    if (out.length === n) break;
  }
  return out;
}

describe("room connection", () => {
  test("joins under the base path with relay.v1 offered and no credential in the URL", async () => {
    const { ws, party } = await join({ slot: 1 });
    expect(ws.url).toBe("wss://relay.example/prefix/v1/rooms/1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c9d?slot=1");
    expect(ws.protocols).toEqual(["relay.v1"]);
    expect(party.slot).toBe(0);
    expect(party.roomSize).toBe(2);
  });

  test("acks every ackEvery messages taken, and on the timer", async () => {
    const { party, ws } = await join({ ackEvery: 4, ackIntervalMs: 50 });
    for (let seq = 1; seq <= 10; seq++) ws.data(seq);
    await take(party, 9);
    expect(ws.texts()).toEqual(['{"type":"ack","seq":4}', '{"type":"ack","seq":8}']);
    await until(() => ws.texts().length === 3);
    expect(ws.texts()[2]).toBe('{"type":"ack","seq":9}');
  });

  test("resumes after a drop with the token and last seq, dropping replayed frames", async () => {
    const { party, ws } = await join();
    const reconnected: number[] = [];
    party.on("reconnected", ({ attempts }) => reconnected.push(attempts));
    ws.data(1);
    ws.data(2);
    ws.data(3);
    await take(party, 1);
    ws.drop();
    party.send(1, new Uint8Array([42])); // queued while down
    FakeSocket.refuse = 1; // the first attempt fails
    await until(() => FakeSocket.instances.length === 3 && FakeSocket.instances[2]!.readyState === 1);
    const again = FakeSocket.instances[2]!;
    expect(again.url).toMatch(/\?last_seq=3$/);
    expect(again.protocols).toEqual(["relay.v1", "relay.resume.dG9rZW4tMQ"]);
    again.text(welcome(7, true));
    await until(() => reconnected.length === 1);
    expect(reconnected).toEqual([2]);
    expect(again.frames().map((f) => [...f])).toEqual([[1, 0, 42]]);
    again.data(3); // already delivered: dropped
    again.data(4);
    const rest = await take(party, 3);
    expect(rest.map((m) => m.seq)).toEqual([2, 3, 4]);
    expect(party.resumeToken).toBe("token-2");
  });

  test("a seq gap aborts with a protocol error", async () => {
    const { party, ws } = await join();
    const failed: unknown[] = [];
    const aborted: unknown[] = [];
    party.on("failed", (e) => failed.push(e));
    party.on("aborted", (e) => aborted.push(e));
    ws.data(1);
    ws.data(3);
    await expect(take(party, 2)).rejects.toBeInstanceOf(RelayProtocolError);
    expect(failed[0]).toBeInstanceOf(RelayProtocolError);
    expect(aborted).toEqual([]);
  });

  test("a close the relay means (room expired) aborts with the close code, without resuming", async () => {
    const { party, ws } = await join();
    ws.text(encodeServerEvent({ type: "closing", code: 4000, reason: "room expired" }));
    ws.drop(4000);
    const err = await take(party, 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RelayCloseError);
    expect((err as RelayCloseError).closeName).toBe("room_expired");
    expect((err as RelayCloseError).reason).toBe("room expired");
    expect(FakeSocket.instances.length).toBe(1);
  });

  test("gives up when the budget is spent", async () => {
    const { party, ws } = await join({ reconnect: { maxAttempts: 2, initialBackoffMs: 5, deadlineMs: 2000 } });
    FakeSocket.refuse = 5;
    ws.drop();
    const err = await party.ready().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RelayReconnectError);
    expect((err as RelayReconnectError).attempts).toBe(2);
  });

  test("after a resume sends again exactly the frames past welcome.received, in order", async () => {
    const { party, ws } = await join();
    for (let i = 1; i <= 5; i++) party.send(1, new Uint8Array([i]));
    expect(ws.frames().length).toBe(5);
    expect(party.unconfirmedSends).toBe(5);
    ws.drop();
    party.send(1, new Uint8Array([6])); // while down
    await until(() => FakeSocket.instances.length === 2 && FakeSocket.instances[1]!.readyState === 1);
    const again = FakeSocket.instances[1]!;
    again.text(welcome(1, true, 3)); // the relay took frames 1..3
    await until(() => again.frames().length === 3);
    expect(again.frames().map((f) => [...f])).toEqual([
      [1, 0, 4],
      [1, 0, 5],
      [1, 0, 6],
    ]);
    expect(party.unconfirmedSends).toBe(3);
    // An error naming frame 5 confirms everything up to it.
    const errors: Array<number | undefined> = [];
    party.on("error", (e) => errors.push(e.frame));
    again.text('{"type":"error","code":"bad_destination","message":"m","frame":5}');
    expect(errors).toEqual([5]);
    expect(party.unconfirmedSends).toBe(1);
  });

  test("past sendQueue kept frames it asks status itself and hides the answer", async () => {
    const { party, ws } = await join({ sendQueue: 2 });
    for (let i = 1; i <= 3; i++) party.send(1, new Uint8Array([i]));
    expect(ws.texts()).toEqual(['{"type":"status"}']);
    const asked = party.status();
    expect(ws.texts()).toEqual(['{"type":"status"}', '{"type":"status"}']);
    ws.text('{"type":"status","present":[0,1],"sent":[3,0],"idle_ms":[1,2]}'); // the client's own
    expect(party.unconfirmedSends).toBe(0);
    ws.text('{"type":"status","present":[0,1],"sent":[3,0],"idle_ms":[5,6]}');
    expect(await asked).toEqual({ present: [0, 1], sent: [3, 0], idleMs: [5, 6] });
  });

  test("aborted: the event names slot and reason, the 4002 close ends with RelayAbortedError", async () => {
    const { party, ws } = await join();
    const aborted: unknown[] = [];
    party.on("aborted", (info) => aborted.push(info));
    ws.text('{"type":"aborted","slot":1,"reason":"cheater"}');
    ws.drop(4002);
    const err = await take(party, 1).catch((e: unknown) => e);
    expect(aborted).toEqual([{ slot: 1, reason: "cheater" }]);
    expect(err).toBeInstanceOf(RelayAbortedError);
    expect((err as RelayAbortedError).slot).toBe(1);
    expect((err as RelayAbortedError).reason).toBe("cheater");
    expect(FakeSocket.instances.length).toBe(1);
  });

  test("abort sends the reason, cut to 256 bytes", async () => {
    const { party, ws } = await join();
    const done = party.abort("é".repeat(200));
    const sent = JSON.parse(ws.texts()[0]!) as { type: string; reason: string };
    expect(sent.type).toBe("abort");
    expect(new TextEncoder().encode(sent.reason).length).toBe(256);
    ws.drop(4002);
    await done;
    const err = await take(party, 1).catch((e: unknown) => e);
    expect((err as RelayAbortedError).slot).toBe(0);
  });

  test("status and abort asked while the link is down go out on the resumed connection, after kept frames", async () => {
    const { party, ws } = await join();
    party.send(1, new Uint8Array([1]));
    ws.drop();
    const asked = party.status();
    const aborting = party.abort("late");
    await until(() => FakeSocket.instances.length === 2 && FakeSocket.instances[1]!.readyState === 1);
    const again = FakeSocket.instances[1]!;
    again.text(welcome(1, true, 0));
    await until(() => again.texts().includes('{"type":"abort","reason":"late"}'));
    expect(again.sent.map((m) => (typeof m === "string" ? m : [...m]))).toEqual([
      [1, 0, 1],
      '{"type":"status"}',
      '{"type":"abort","reason":"late"}',
    ]);
    again.text('{"type":"status","present":[0],"sent":[1,0],"idle_ms":[0,9]}');
    expect(await asked).toEqual({ present: [0], sent: [1, 0], idleMs: [0, 9] });
    again.drop(4002);
    await aborting;
    const err = await take(party, 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RelayAbortedError);
    expect((err as RelayAbortedError).reason).toBe("late");
  });

  test("a party token is offered as relay.party-token.<base64url> on the first join only", async () => {
    const { ws } = await join({ partyToken: "q3Jx8Vd0nT1bC2rQ7mZ9aw" });
    expect(ws.protocols).toEqual(["relay.v1", "relay.party-token.cTNKeDhWZDBuVDFiQzJyUTdtWjlhdw"]);
    ws.drop();
    await until(() => FakeSocket.instances.length === 2);
    expect(FakeSocket.instances[1]!.protocols).toEqual(["relay.v1", "relay.resume.dG9rZW4tMQ"]);
  });

  test("close acks what was taken, sends leave and ends the stream", async () => {
    const { party, ws } = await join();
    ws.data(1);
    await take(party, 1);
    const closing = party.close();
    await until(() => ws.texts().includes('{"type":"leave"}'));
    expect(ws.texts()).toEqual(['{"type":"ack","seq":1}', '{"type":"leave"}']);
    ws.drop(1000);
    await closing;
    const next = await party.messages().next();
    expect(next.done).toBe(true);
    expect(() => party.broadcast(new Uint8Array([1]))).toThrow();
  });
});
