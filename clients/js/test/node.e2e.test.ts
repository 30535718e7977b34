/**
 * End-to-end in Node against the real relay-server binary: rooms (create, join, send,
 * broadcast, events, leave), resume across a cut TCP connection with nothing lost or
 * repeated, the mailbox, and typed errors.
 */

import { afterAll, beforeAll, describe, expect, test } from "vitest";

import {
  RelayClient,
  RelayConnectError,
  RelayEventError,
  RelayHttpError,
  type RoomConnection,
  type RoomMessage,
} from "../src/index.js";
import { type Relay, relayMissing, skipWithout, startProxy, startRelay, text, until, utf8 } from "./support.js";

const KEY = "ABEiM0RVZneImaq7zN3u/w==";
const skip = skipWithout(relayMissing());

/** Takes `n` messages from `party`. */
async function take(party: RoomConnection, n: number): Promise<RoomMessage[]> {
  const out: RoomMessage[] = [];
  if (n === 0) return out;
  for await (const m of party.messages()) {
    out.push(m);
    if (out.length === n) break;
  }
  return out;
}

describe.skipIf(skip)("node, keys enforced", () => {
  let relay: Relay;
  beforeAll(async () => {
    relay = await startRelay(["--api-key", `${KEY},js`]);
  });
  afterAll(async () => relay?.stop());

  test("a three-party room: direct sends, broadcasts, events, in order", async () => {
    const backend = new RelayClient({ url: relay.url, apiKey: KEY });
    const room = await backend.createRoom({ size: 3, ttlSecs: 120 });
    expect(room.size).toBe(3);
    expect(room.roomId).toMatch(/^[0-9a-f-]{36}$/);
    expect(room.expiresAt).toBeGreaterThan(Date.now() / 1000);

    const client = new RelayClient({ url: relay.url });
    const a = await client.joinRoom(room.roomId);
    const joined: number[] = [];
    a.on("joined", (slot) => joined.push(slot));
    const b = await client.joinRoom(room.roomId, { slot: 2 });
    const c = await client.joinRoom(room.roomId);
    expect([a.slot, b.slot, c.slot]).toEqual([0, 2, 1]);
    await Promise.all([a.ready(), b.ready(), c.ready()]);
    await until(() => joined.length === 2, 5000, "joined events");
    expect(joined.sort()).toEqual([1, 2]);

    for (let i = 0; i < 100; i++) a.send(2, utf8(`a${i}`));
    c.broadcast(utf8("from c"));
    const atB = await take(b, 101);
    expect(atB.map((m) => m.seq)).toEqual(Array.from({ length: 101 }, (_, i) => i + 1));
    const fromA = atB.filter((m) => m.from === 0).map((m) => text(m.payload));
    expect(fromA).toEqual(Array.from({ length: 100 }, (_, i) => `a${i}`));
    const fromC = atB.filter((m) => m.from === 1);
    expect(fromC.map((m) => [text(m.payload), m.broadcast])).toEqual([["from c", true]]);
    const [atA] = await take(a, 1);
    expect(atA).toMatchObject({ from: 1, seq: 1, broadcast: true });

    const errors: RelayEventError[] = [];
    a.on("error", (e) => errors.push(e));
    a.send(0, utf8("to myself"));
    await until(() => errors.length === 1, 5000, "error event");
    expect(errors[0]).toBeInstanceOf(RelayEventError);
    expect(errors[0]!.code).toBe("bad_destination");
    expect(errors[0]!.status).toBe(400);

    const left: number[] = [];
    a.on("left", (slot) => left.push(slot));
    await c.close();
    await until(() => left.includes(1), 5000, "left event");
    await Promise.all([a.close(), b.close()]);
    expect(() => a.send(2, utf8("late"))).toThrow();
  });

  test("a dropped connection mid-room resumes on its own, losing and repeating nothing", async () => {
    const proxy = await startProxy(relay.port);
    try {
      const backend = new RelayClient({ url: relay.url, apiKey: KEY });
      const room = await backend.createRoom({ size: 2 });
      const sender = await new RelayClient({ url: relay.url }).joinRoom(room.roomId);
      const receiver = await new RelayClient({ url: proxy.url }).joinRoom(room.roomId, { ackEvery: 16 });
      await receiver.ready();
      let reconnects = 0;
      receiver.on("reconnected", () => reconnects++);
      const total = 600;
      const got: RoomMessage[] = [];
      const reading = (async () => {
        for await (const m of receiver.messages()) {
          got.push(m);
          if (got.length === total) break;
        }
      })();
      // Sends in bursts while the receiver's link is cut twice, mid-stream.
      for (let i = 0; i < total; i++) {
        sender.send(receiver.slot, utf8(`m${i}`));
        if (i === 150 || i === 400) {
          await until(() => got.length > i - 100, 10_000, "some messages through");
          expect(proxy.cut()).toBeGreaterThan(0);
        }
        if (i % 50 === 0) await new Promise((r) => setTimeout(r, 5));
      }
      await reading;
      expect(reconnects).toBe(2);
      expect(got.map((m) => m.seq)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
      expect(got.map((m) => text(m.payload))).toEqual(Array.from({ length: total }, (_, i) => `m${i}`));
      // The resumed receiver sends too: its messages reach the sender after the resume.
      receiver.send(sender.slot, utf8("after resume"));
      const [back] = await take(sender, 1);
      expect(text(back!.payload)).toBe("after resume");
      await receiver.close();
      await sender.close();
    } finally {
      await proxy.close();
    }
  });

  test("sends made while the link is down go out after the resume", async () => {
    const proxy = await startProxy(relay.port);
    try {
      const room = await new RelayClient({ url: relay.url, apiKey: KEY }).createRoom({ size: 2 });
      const a = await new RelayClient({ url: proxy.url }).joinRoom(room.roomId);
      const b = await new RelayClient({ url: relay.url }).joinRoom(room.roomId);
      await a.ready();
      const resumed = new Promise<void>((r) => a.on("reconnected", () => r()));
      proxy.cut();
      await new Promise((r) => setTimeout(r, 20));
      for (let i = 0; i < 10; i++) a.send(b.slot, utf8(`queued${i}`));
      await resumed;
      const got = await take(b, 10);
      expect(got.map((m) => text(m.payload))).toEqual(Array.from({ length: 10 }, (_, i) => `queued${i}`));
      await Promise.all([a.close(), b.close()]);
    } finally {
      await proxy.close();
    }
  });

  test("mailbox: publish, ask, one receiver, and the room's mailbox", async () => {
    const client = new RelayClient({ url: relay.url, apiKey: KEY });
    const publisher = await client.mailbox();
    const asker = await client.mailbox();
    const id = new Uint8Array(32).fill(7);
    const waiting = asker.ask(id, { ttlSecs: 30 });
    await new Promise((r) => setTimeout(r, 50));
    await publisher.publish(id, utf8("share 1"), { ttlSecs: 60 });
    expect(text(await waiting)).toBe("share 1");
    // Stored: a later ask is answered at once.
    expect(text(await asker.ask(id))).toBe("share 1");

    const once = new Uint8Array(32).fill(9);
    await publisher.publish(once, utf8("only once"), { ttlSecs: 60, oneReceiver: true });
    expect(text(await asker.ask(once))).toBe("only once");
    await expect(asker.ask(once, { ttlSecs: 0 })).rejects.toThrow(/timed out/);

    const room = await client.createRoom({ size: 2 });
    const roomless = new RelayClient({ url: relay.url });
    const inRoom = await roomless.mailbox({ roomId: room.roomId });
    const other = await roomless.mailbox({ roomId: room.roomId });
    const rid = new Uint8Array(32).fill(1);
    await inRoom.publish(rid, utf8("room scoped"), { ttlSecs: 60 });
    expect(text(await other.ask(rid))).toBe("room scoped");
    // Another namespace does not see it.
    await expect(asker.ask(rid, { ttlSecs: 0 })).rejects.toThrow(/timed out/);

    const pending = asker.ask(new Uint8Array(32).fill(3), { ttlSecs: 30 });
    await asker.close();
    await expect(pending).rejects.toThrow(/closed/);
    await Promise.all([publisher.close(), inRoom.close(), other.close()]);
  });

  test("errors are typed by the relay's codes", async () => {
    const noKey = new RelayClient({ url: relay.url });
    const err = await noKey.createRoom({ size: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RelayHttpError);
    expect((err as RelayHttpError).code).toBe("missing_api_key");
    expect((err as RelayHttpError).status).toBe(401);

    const badSize = await new RelayClient({ url: relay.url, apiKey: KEY }).createRoom({ size: 1 }).catch((e) => e);
    expect((badSize as RelayHttpError).code).toBe("bad_request");

    const wrongKey = new RelayClient({ url: relay.url, apiKey: "/+7dzLuqmYh3ZlVEMyIRAA==" });
    const unknown = await wrongKey.createRoom({ size: 2 }).catch((e: unknown) => e);
    expect((unknown as RelayHttpError).code).toBe("unknown_api_key");
    // A refused WebSocket handshake: the platform hides its status.
    await expect(wrongKey.mailbox()).rejects.toBeInstanceOf(RelayConnectError);
    await expect(noKey.joinRoom("00000000-0000-4000-8000-000000000000")).rejects.toBeInstanceOf(RelayConnectError);

    // The query-string transport for older relays works too.
    const viaQuery = new RelayClient({ url: relay.url, apiKey: KEY, credentials: "query" });
    const mb = await viaQuery.mailbox();
    await mb.close();
  });
});
