/**
 * End-to-end in Node against the real relay-server binary: rooms (create, join, send,
 * broadcast, events, leave), resume across a cut TCP connection with nothing lost or
 * repeated in either direction (sends in flight and sends made while the link is down
 * included), party tokens, abort, status, the mailbox, and typed errors.
 */

import { request } from "node:http";

import { afterAll, beforeAll, describe, expect, test } from "vitest";

import {
  RelayAbortedError,
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
    expect(errors[0]!.frame).toBe(101); // a's 101st data frame in the room

    const left: number[] = [];
    a.on("left", (slot) => left.push(slot));
    await c.close();
    await until(() => left.includes(1), 5000, "left event");
    await Promise.all([a.close(), b.close()]);
    expect(() => a.send(2, utf8("late"))).toThrow();
  });

  test("a dropped connection mid-room resumes on its own: exactly-once, in order, both directions", async () => {
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
      const back: RoomMessage[] = [];
      const readingBack = (async () => {
        for await (const m of sender.messages()) {
          back.push(m);
          if (back.length === total) break;
        }
      })();
      // Both send in bursts while the receiver's link is cut twice, mid-stream: the
      // receiver's own frames are cut in flight (written, then the link reset).
      for (let i = 0; i < total; i++) {
        sender.send(receiver.slot, utf8(`m${i}`));
        receiver.send(sender.slot, utf8(`r${i}`));
        if (i === 150 || i === 400) {
          await until(() => got.length > i - 100, 10_000, "some messages through");
          expect(proxy.cut()).toBeGreaterThan(0);
        }
        if (i % 50 === 0) await new Promise((r) => setTimeout(r, 5));
      }
      await Promise.all([reading, readingBack]);
      expect(reconnects).toBe(2);
      expect(got.map((m) => m.seq)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
      expect(got.map((m) => text(m.payload))).toEqual(Array.from({ length: total }, (_, i) => `m${i}`));
      expect(back.map((m) => m.seq)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
      expect(back.map((m) => text(m.payload))).toEqual(Array.from({ length: total }, (_, i) => `r${i}`));
      // Nothing more arrives (no duplicate of a resent frame), and the relay counts exactly `total`.
      const status = await receiver.status();
      expect(status.sent).toEqual([total, total]);
      receiver.send(sender.slot, utf8("after resume"));
      const [last] = await take(sender, 1);
      expect(text(last!.payload)).toBe("after resume");
      expect(last!.seq).toBe(total + 1);
      await receiver.close();
      await sender.close();
    } finally {
      await proxy.close();
    }
  });

  test("frames sent while the link is down, or cut mid-flight, arrive exactly once, in order, both ways", async () => {
    const proxy = await startProxy(relay.port);
    try {
      const room = await new RelayClient({ url: relay.url, apiKey: KEY }).createRoom({ size: 2 });
      const a = await new RelayClient({ url: proxy.url }).joinRoom(room.roomId);
      const b = await new RelayClient({ url: relay.url }).joinRoom(room.roomId);
      await a.ready();
      let resumes = 0;
      a.on("reconnected", () => resumes++);
      // A burst written and cut at once: part of it is lost on the wire.
      for (let i = 0; i < 200; i++) a.send(b.slot, utf8(`a${i}`));
      for (let i = 0; i < 200; i++) b.send(a.slot, utf8(`b${i}`));
      proxy.cut();
      // While down (the client notices the reset first), both keep sending.
      await new Promise((r) => setTimeout(r, 20));
      for (let i = 200; i < 300; i++) a.send(b.slot, utf8(`a${i}`));
      for (let i = 200; i < 300; i++) b.send(a.slot, utf8(`b${i}`));
      const [atB, atA] = await Promise.all([take(b, 300), take(a, 300)]);
      expect(resumes).toBeGreaterThanOrEqual(1);
      expect(atB.map((m) => text(m.payload))).toEqual(Array.from({ length: 300 }, (_, i) => `a${i}`));
      expect(atB.map((m) => m.seq)).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
      expect(atA.map((m) => text(m.payload))).toEqual(Array.from({ length: 300 }, (_, i) => `b${i}`));
      const status = await b.status();
      expect(status.sent).toEqual([300, 300]);
      expect(status.present.sort()).toEqual([0, 1]);
      expect(status.idleMs.length).toBe(2);
      // Nothing was repeated: the next message carries the next seq.
      a.send(b.slot, utf8("next"));
      const [next] = await take(b, 1);
      expect([text(next!.payload), next!.seq]).toEqual(["next", 301]);
      await Promise.all([a.close(), b.close()]);
    } finally {
      await proxy.close();
    }
  });

  test("kept frames are bounded by the client's own status requests, whose answers stay hidden", async () => {
    const room = await new RelayClient({ url: relay.url, apiKey: KEY }).createRoom({ size: 2 });
    const a = await new RelayClient({ url: relay.url }).joinRoom(room.roomId, { sendQueue: 8 });
    const b = await new RelayClient({ url: relay.url }).joinRoom(room.roomId);
    await a.ready();
    for (let i = 0; i < 100; i++) a.send(b.slot, utf8(`k${i}`));
    const asked = await a.status(); // the application's own request, answered in turn
    expect(asked.sent[a.slot]).toBe(100);
    expect(a.unconfirmedSends).toBe(0);
    const got = await take(b, 100);
    expect(got.map((m) => text(m.payload))).toEqual(Array.from({ length: 100 }, (_, i) => `k${i}`));
    await Promise.all([a.close(), b.close()]);
  });

  test("party tokens: a join without one is refused (403 bad_party_token), with one takes its slot", async () => {
    const backend = new RelayClient({ url: relay.url, apiKey: KEY });
    const room = await backend.createRoom({ size: 2, partyTokens: true });
    expect(room.partyTokens).toHaveLength(2);
    const client = new RelayClient({ url: relay.url });
    // The platform WebSocket hides the status of a refused handshake...
    await expect(client.joinRoom(room.roomId)).rejects.toBeInstanceOf(RelayConnectError);
    await expect(client.joinRoom(room.roomId, { partyToken: "AAAAAAAAAAAAAAAAAAAAAA" })).rejects.toBeInstanceOf(
      RelayConnectError,
    );
    // ...which is the relay's 403 bad_party_token before the upgrade.
    const refusal = await rawHandshake(relay.port, `/v1/rooms/${room.roomId}`, ["relay.v1"]);
    expect(refusal.status).toBe(403);
    expect(JSON.parse(refusal.body).error.code).toBe("bad_party_token");
    const second = await client.joinRoom(room.roomId, { partyToken: room.partyTokens![1]! });
    expect(second.slot).toBe(1);
    const viaQuery = new RelayClient({ url: relay.url, credentials: "query" });
    const first = await viaQuery.joinRoom(room.roomId, { partyToken: room.partyTokens![0]! });
    expect(first.slot).toBe(0);
    await Promise.all([first.ready(), second.ready()]);
    first.send(1, utf8("bound"));
    const [m] = await take(second, 1);
    expect([m!.from, text(m!.payload)]).toEqual([0, "bound"]);
    await Promise.all([first.close(), second.close()]);
  });

  test("abort: the others get aborted with the slot and reason, then RelayAbortedError (4002)", async () => {
    const room = await new RelayClient({ url: relay.url, apiKey: KEY }).createRoom({ size: 3 });
    const client = new RelayClient({ url: relay.url });
    const [a, b, c] = [await client.joinRoom(room.roomId), await client.joinRoom(room.roomId), await client.joinRoom(room.roomId)];
    await Promise.all([a.ready(), b.ready(), c.ready()]);
    const seen: Array<{ slot: number; reason: string }> = [];
    const failed: unknown[] = [];
    a.on("aborted", (info) => seen.push(info));
    b.on("aborted", (info) => seen.push(info));
    a.on("failed", (e) => failed.push(e));
    const atA = take(a, 1).catch((e: unknown) => e);
    await c.abort("bad commitment from slot 1");
    const err = await atA;
    expect(err).toBeInstanceOf(RelayAbortedError);
    expect((err as RelayAbortedError).slot).toBe(c.slot);
    expect((err as RelayAbortedError).reason).toBe("bad commitment from slot 1");
    await until(() => seen.length === 2, 5000, "aborted events");
    expect(seen).toEqual([
      { slot: c.slot, reason: "bad commitment from slot 1" },
      { slot: c.slot, reason: "bad commitment from slot 1" },
    ]);
    expect(failed[0]).toBeInstanceOf(RelayAbortedError);
    const own = await take(c, 1).catch((e: unknown) => e);
    expect((own as RelayAbortedError).slot).toBe(c.slot);
    await expect(take(b, 1)).rejects.toBeInstanceOf(RelayAbortedError);
    expect(() => b.send(0, utf8("late"))).toThrow(RelayAbortedError);
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

/** A bare WebSocket handshake, to read the status and body of a refusal. */
function rawHandshake(port: number, path: string, protocols: string[]): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: "127.0.0.1",
      port,
      path,
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-protocol": protocols.join(", "),
      },
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, body: "" });
    });
    req.on("response", (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}
