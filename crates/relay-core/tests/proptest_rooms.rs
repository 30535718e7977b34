//! Property tests of rooms against a model, under random interleavings of joins,
//! sends, reads, acks, dropped connections (with frames lost in flight) and resumes:
//! per sender->receiver FIFO with nothing lost and nothing twice, gapless per-receiver
//! numbering across reconnects, never more parties than the room's size, and held
//! bytes that never pass `max_room_held_bytes` (a send is refused exactly when it
//! would pass it).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use relay_core::rooms::{Destination, HELD_MESSAGE_OVERHEAD, JoinRequest, Party, PartyEvent, Resume, Rooms};
use relay_core::{CoreError, Limits};

/// One step a test client (or the network) takes.
#[derive(Debug, Clone)]
enum Op {
    /// A new party joins without asking for a slot.
    Join,
    /// Party `from` sends `len` payload bytes (plus its 8-byte counter) to `to`, or to
    /// everyone else when `to` is `None`.
    Send { from: usize, to: Option<usize>, len: usize },
    /// Party `who` reads up to `n` ready events.
    Read { who: usize, n: usize },
    /// Party `who` acks the last message it processed.
    Ack { who: usize },
    /// Party `who`'s connection drops; the last `lost` data messages it had received
    /// were never processed (lost in flight), so it resumes before them.
    Drop { who: usize, lost: usize },
    /// Party `who` resumes with its token and the last seq it processed.
    Resume { who: usize },
}

fn op(size: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Join),
        5 => (0..size, proptest::option::weighted(0.7, 0..size), 0usize..200)
            .prop_map(|(from, to, len)| Op::Send { from, to, len }),
        4 => (0..size, 1usize..8).prop_map(|(who, n)| Op::Read { who, n }),
        2 => (0..size).prop_map(|who| Op::Ack { who }),
        1 => (0..size, 0usize..4).prop_map(|(who, lost)| Op::Drop { who, lost }),
        2 => (0..size).prop_map(|who| Op::Resume { who }),
    ]
}

/// What the model knows of one slot.
#[derive(Default)]
struct Model {
    party: Option<Party>,
    token: Option<String>,
    /// Messages held for this slot by the relay, as (seq, payload length), oldest first.
    held: VecDeque<(u64, usize)>,
    /// Next seq the relay will give a message to this slot.
    next_seq: u64,
    /// Everything through this seq was acked.
    acked: u64,
    /// The highest seq this slot's current connection was handed.
    delivered: u64,
    /// Data the client processed, in order: (seq, from, counter).
    processed: Vec<(u64, u16, u64)>,
}

impl Model {
    fn last_processed(&self) -> u64 {
        self.processed.last().map_or(self.acked, |p| p.0).max(self.acked)
    }

    /// The relay drops what it held through `seq`; returns the bytes freed.
    fn drop_through(&mut self, seq: u64) -> usize {
        let mut freed = 0;
        while self.held.front().is_some_and(|h| h.0 <= seq) {
            freed += self.held.pop_front().map_or(0, |h| h.1 + HELD_MESSAGE_OVERHEAD);
        }
        self.acked = self.acked.max(seq);
        freed
    }
}

fn read(model: &mut Model, slot: u16, n: usize) -> Result<(), TestCaseError> {
    let Some(party) = model.party.as_mut() else { return Ok(()) };
    for _ in 0..n {
        match party.try_next_event() {
            None => break,
            Some(PartyEvent::Data(d)) => {
                prop_assert_eq!(d.seq, model.delivered + 1, "gapless numbering to slot {}", slot);
                prop_assert_ne!(d.from, slot, "a party never receives its own message");
                model.delivered = d.seq;
                let counter = u64::from_le_bytes(d.payload[..8].try_into().unwrap());
                model.processed.push((d.seq, d.from, counter));
            }
            Some(PartyEvent::Closed(reason)) => prop_assert!(false, "room closed: {reason:?}"),
            Some(_) => {}
        }
    }
    Ok(())
}

fn run(size: u16, max_held: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let limits = Limits { max_room_held_bytes: max_held, ..Limits::default() };
    let rooms = Rooms::new(limits, None);
    let room = rooms.create(size, Some(Duration::from_secs(600)), 1_767_225_600).unwrap();
    let n = usize::from(size);
    let mut slots: Vec<Model> = (0..n).map(|_| Model { next_seq: 1, ..Model::default() }).collect();
    let mut held = 0usize;
    // What each sender sent to each receiver, in order: sent[from][to] = counters.
    let mut sent = vec![vec![Vec::<u64>::new(); n]; n];
    let mut counter = 0u64;
    let mut joined = 0usize;

    for op in ops {
        match op {
            Op::Join => match rooms.join(&room.id, JoinRequest::default()) {
                Ok(party) => {
                    prop_assert!(joined < n, "a join past the room's size was accepted");
                    let slot = usize::from(party.slot());
                    prop_assert_eq!(slot, joined, "slots are given in join order");
                    joined += 1;
                    slots[slot].token = Some(party.welcome().resume_token.clone());
                    prop_assert_eq!(party.welcome().next_seq, 1);
                    slots[slot].party = Some(party);
                    let present = rooms.info(&room.id).unwrap().present;
                    prop_assert!(present.len() <= n);
                }
                Err(e) => {
                    prop_assert_eq!(joined, n, "join refused before the room was full: {}", e);
                    prop_assert_eq!(e, CoreError::RoomFull(size));
                }
            },
            Op::Send { from, to, len } => {
                let Some(party) = slots[from].party.as_ref() else { continue };
                counter += 1;
                let mut payload = counter.to_le_bytes().to_vec();
                payload.resize(8 + len, 0xab);
                let receivers: Vec<usize> = match to {
                    Some(t) if t == from => {
                        let got = party.send(Destination::Slot(t as u16), Bytes::from(payload));
                        prop_assert_eq!(got, Err(CoreError::BadDestination(t as u16)));
                        continue;
                    }
                    Some(t) => vec![t],
                    None => (0..n).filter(|&r| r != from).collect(),
                };
                let cost = (8 + len + HELD_MESSAGE_OVERHEAD) * receivers.len();
                let dest = to.map_or(Destination::Broadcast, |t| Destination::Slot(t as u16));
                let got = party.send(dest, Bytes::from(payload));
                if held + cost > max_held {
                    prop_assert_eq!(got, Err(CoreError::RoomBufferFull { max: max_held }));
                    continue;
                }
                prop_assert_eq!(got, Ok(()));
                held += cost;
                for r in receivers {
                    let m = &mut slots[r];
                    m.held.push_back((m.next_seq, 8 + len));
                    m.next_seq += 1;
                    sent[from][r].push(counter);
                }
            }
            Op::Read { who, n: count } => read(&mut slots[who], who as u16, count)?,
            Op::Ack { who } => {
                let m = &mut slots[who];
                let Some(party) = m.party.as_ref() else { continue };
                let seq = m.last_processed();
                party.ack(seq);
                held -= m.drop_through(seq.min(m.delivered));
            }
            Op::Drop { who, lost } => {
                let m = &mut slots[who];
                if m.party.take().is_none() {
                    continue;
                }
                for _ in 0..lost {
                    if m.processed.last().is_some_and(|p| p.0 > m.acked) {
                        m.processed.pop();
                    }
                }
            }
            Op::Resume { who } => {
                let m = &mut slots[who];
                let Some(token) = m.token.clone() else { continue };
                let last = m.last_processed();
                let party = rooms
                    .join(
                        &room.id,
                        JoinRequest {
                            slot: None,
                            resume: Some(Resume { token, last_seq: Some(last) }),
                            party_token: None,
                        },
                    )
                    .map_err(|e| TestCaseError::fail(format!("resume of slot {who} at {last}: {e}")))?;
                prop_assert!(party.welcome().resumed);
                prop_assert_eq!(party.welcome().next_seq, last + 1);
                held -= m.drop_through(last);
                m.delivered = last;
                // The older connection, if any, is replaced.
                m.party = Some(party);
            }
        }
        prop_assert!(held <= max_held, "model holds {held} bytes over {max_held}");
    }

    // Every slot that joined comes back (if dropped) and reads everything: nothing lost,
    // nothing twice, per sender->receiver order kept.
    for (r, m) in slots.iter_mut().enumerate() {
        let Some(token) = m.token.clone() else { continue };
        if m.party.is_none() {
            let last = m.last_processed();
            let resume = Resume { token, last_seq: Some(last) };
            m.party = Some(
                rooms
                    .join(&room.id, JoinRequest { slot: None, resume: Some(resume), party_token: None })
                    .unwrap(),
            );
            m.delivered = last;
        }
        read(m, r as u16, usize::MAX)?;
        let seqs: Vec<u64> = m.processed.iter().map(|p| p.0).collect();
        prop_assert_eq!(seqs, (1..m.next_seq).collect::<Vec<_>>(), "slot {} got every seq once, in order", r);
        for (from, to_r) in sent.iter().enumerate() {
            let got: Vec<u64> =
                m.processed.iter().filter(|p| usize::from(p.1) == from).map(|p| p.2).collect();
            prop_assert_eq!(&got, &to_r[r], "FIFO from {} to {}", from, r);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rooms_keep_fifo_bounds_and_size(
        size in 2u16..5,
        max_held in prop_oneof![Just(1usize << 20), 200usize..4000],
        ops in proptest::collection::vec(op(4), 1..120),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let _guard = rt.enter();
        let n = usize::from(size);
        // Ops name parties 0..4; keep those of this room's size.
        let ops = ops.into_iter().filter(|op| match op {
            Op::Join => true,
            Op::Send { from, to, .. } => *from < n && to.is_none_or(|t| t < n),
            Op::Read { who, .. } | Op::Ack { who } | Op::Drop { who, .. } | Op::Resume { who } => *who < n,
        }).collect();
        run(size, max_held, ops)?;
    }
}
