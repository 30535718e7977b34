//! Unit tests of the room state machine, on paused tokio time.

use super::*;

/// The wall clock the tests pass to [`Rooms::create`], Unix seconds (2026-01-01).
const NOW: u64 = 1_767_225_600;

fn limits() -> Limits {
    Limits::default()
}

fn join(rooms: &Rooms, id: &RoomId) -> Party {
    rooms.join(id, JoinRequest::default()).expect("join")
}

fn resume(rooms: &Rooms, id: &RoomId, token: &str, last_seq: Option<u64>) -> Result<Party, CoreError> {
    rooms.join(
        id,
        JoinRequest {
            slot: None,
            resume: Some(Resume { token: token.to_owned(), last_seq }),
            party_token: None,
        },
    )
}

/// Every event ready now, without waiting.
fn drain(party: &mut Party) -> Vec<PartyEvent> {
    std::iter::from_fn(|| party.try_next_event()).take(100_000).collect()
}

/// The data events ready now, as (seq, from, payload).
fn data(party: &mut Party) -> Vec<(u64, u16, Bytes)> {
    drain(party)
        .into_iter()
        .filter_map(|e| match e {
            PartyEvent::Data(d) => Some((d.seq, d.from, d.payload)),
            _ => None,
        })
        .collect()
}

/// Lets spawned tasks (the room timers) run after a time change.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn ready_is_sent_when_all_joined_and_broadcast_reaches_the_others_only() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(3, None, NOW).unwrap();
    let mut a = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    assert_eq!(b.welcome().present, vec![0, 1]);
    let mut c = join(&rooms, &room.id);
    assert_eq!((a.slot(), b.slot(), c.slot()), (0, 1, 2));
    assert_eq!(c.welcome().present, vec![0, 1, 2]);
    let ready = PartyEvent::Ready { room_size: 3 };
    assert_eq!(drain(&mut a), vec![PartyEvent::Joined(1), PartyEvent::Joined(2), ready.clone()]);
    assert_eq!(drain(&mut b), vec![PartyEvent::Joined(2), ready.clone()]);
    assert_eq!(drain(&mut c), vec![ready]);

    a.send(Destination::Broadcast, Bytes::from_static(b"hi all")).unwrap();
    for p in [&mut b, &mut c] {
        let ev = p.next_event().await;
        assert_eq!(
            ev,
            PartyEvent::Data(Delivery {
                seq: 1,
                from: 0,
                broadcast: true,
                payload: Bytes::from_static(b"hi all")
            })
        );
    }
    assert!(a.try_next_event().is_none(), "a sender never receives its own broadcast");
    assert!(rooms.info(&room.id).unwrap().ready);
}

#[tokio::test(start_paused = true)]
async fn messages_from_one_sender_arrive_in_order_with_contiguous_seq() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(3, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    let b = join(&rooms, &room.id);
    let mut c = join(&rooms, &room.id);
    drain(&mut c);
    for i in 0u32..1000 {
        a.send(Destination::Slot(2), Bytes::from(i.to_le_bytes().to_vec())).unwrap();
        b.send(Destination::Slot(2), Bytes::from(i.to_le_bytes().to_vec())).unwrap();
    }
    let got = data(&mut c);
    assert_eq!(got.len(), 2000);
    assert!(got.iter().enumerate().all(|(i, (seq, _, _))| *seq == i as u64 + 1));
    for sender in [0u16, 1] {
        let from: Vec<u32> = got
            .iter()
            .filter(|(_, f, _)| *f == sender)
            .map(|(_, _, p)| u32::from_le_bytes(p[..4].try_into().unwrap()))
            .collect();
        assert_eq!(from, (0..1000).collect::<Vec<_>>(), "FIFO from slot {sender}");
    }
}

#[tokio::test(start_paused = true)]
async fn messages_for_a_party_not_joined_yet_are_held_until_it_joins() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    for p in [&b"one"[..], b"two", b"three"] {
        a.send(Destination::Slot(1), Bytes::copy_from_slice(p)).unwrap();
    }
    let mut b = join(&rooms, &room.id);
    assert_eq!(b.welcome().next_seq, 1);
    assert_eq!(b.next_event().await, PartyEvent::Ready { room_size: 2 }, "ready comes right after welcome");
    let got: Vec<_> = data(&mut b).into_iter().map(|(s, f, p)| (s, f, p.to_vec())).collect();
    assert_eq!(got, vec![(1, 0, b"one".to_vec()), (2, 0, b"two".to_vec()), (3, 0, b"three".to_vec())]);
}

#[tokio::test(start_paused = true)]
async fn resume_replays_everything_after_last_seq_exactly_once() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let mut a = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    drain(&mut b);
    for i in 1u8..=5 {
        a.send(Destination::Slot(1), Bytes::from(vec![i])).unwrap();
    }
    let first: Vec<u64> = (0..3)
        .map(|_| match b.try_next_event() {
            Some(PartyEvent::Data(d)) => d.seq,
            other => panic!("expected data, got {other:?}"),
        })
        .collect();
    assert_eq!(first, vec![1, 2, 3]);
    b.ack(2);
    let token = b.welcome().resume_token.clone();
    drop(b);
    drain(&mut a);
    for i in 6u8..=7 {
        a.send(Destination::Slot(1), Bytes::from(vec![i])).unwrap();
    }
    let mut b = resume(&rooms, &room.id, &token, Some(3)).unwrap();
    assert!(b.welcome().resumed);
    assert_eq!(b.welcome().slot, 1);
    assert_eq!(b.welcome().next_seq, 4);
    assert_eq!(b.next_event().await, PartyEvent::Ready { room_size: 2 });
    let got: Vec<(u64, u8)> = data(&mut b).into_iter().map(|(s, _, p)| (s, p[0])).collect();
    assert_eq!(got, vec![(4, 4), (5, 5), (6, 6), (7, 7)]);
    assert_eq!(drain(&mut a), vec![PartyEvent::Joined(1)]);
}

#[tokio::test(start_paused = true)]
async fn resume_older_than_what_is_held_is_a_gap_and_bad_tokens_are_refused() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    for i in 1u8..=4 {
        a.send(Destination::Slot(1), Bytes::from(vec![i])).unwrap();
    }
    assert_eq!(data(&mut b).len(), 4);
    b.ack(3);
    let token = b.welcome().resume_token.clone();
    drop(b);
    assert_eq!(
        resume(&rooms, &room.id, &token, Some(1)).unwrap_err(),
        CoreError::ResumeGap { last_seq: 1, acked: 3 }
    );
    assert_eq!(
        resume(&rooms, &room.id, &token, Some(9)).unwrap_err(),
        CoreError::ResumeAhead { last_seq: 9, last: 4 }
    );
    assert_eq!(resume(&rooms, &room.id, "not-a-token", Some(3)).unwrap_err(), CoreError::BadResumeToken);
    let other = rooms.create(2, None, NOW).unwrap();
    assert_eq!(resume(&rooms, &other.id, &token, Some(3)).unwrap_err(), CoreError::BadResumeToken);
    // Without last_seq, everything not acked is replayed.
    let mut b = resume(&rooms, &room.id, &token, None).unwrap();
    assert_eq!(b.welcome().next_seq, 4);
    assert_eq!(data(&mut b).into_iter().map(|(s, _, _)| s).collect::<Vec<_>>(), vec![4]);
}

#[tokio::test(start_paused = true)]
async fn a_send_over_the_held_bound_is_refused_for_every_destination_and_acks_free_space() {
    let unit = 100 + HELD_MESSAGE_OVERHEAD;
    let rooms = Rooms::new(Limits { max_room_held_bytes: 3 * unit, ..limits() }, None);
    let room = rooms.create(3, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    let mut c = join(&rooms, &room.id);
    let payload = Bytes::from(vec![7u8; 100]);
    a.send(Destination::Broadcast, payload.clone()).unwrap(); // 2 units held
    assert_eq!(
        a.send(Destination::Broadcast, payload.clone()).unwrap_err(),
        CoreError::RoomBufferFull { max: 3 * unit }
    );
    a.send(Destination::Slot(2), payload.clone()).unwrap(); // 3 units held
    assert_eq!(
        a.send(Destination::Slot(1), payload.clone()).unwrap_err(),
        CoreError::RoomBufferFull { max: 3 * unit }
    );
    assert_eq!(data(&mut b).len(), 1, "the refused broadcast reached nobody");
    assert_eq!(data(&mut c).len(), 2);
    // Delivered but not acked still counts.
    assert!(a.send(Destination::Slot(1), payload.clone()).is_err());
    b.ack(1);
    a.send(Destination::Slot(1), payload.clone()).unwrap();
    c.ack(2);
    a.send(Destination::Broadcast, payload).unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_room_closes_at_its_ttl_and_leaves_the_registry() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, Some(Duration::from_secs(5)), NOW).unwrap();
    let mut a = join(&rooms, &room.id);
    tokio::time::advance(Duration::from_secs(4)).await;
    settle().await;
    assert_eq!(rooms.len(), 1);
    assert!(a.try_next_event().is_none());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(a.next_event().await, PartyEvent::Closed(CloseReason::Expired));
    assert_eq!(CloseReason::Expired.code(), 4000);
    assert_eq!(rooms.len(), 0);
    assert_eq!(rooms.join(&room.id, JoinRequest::default()).unwrap_err(), CoreError::RoomNotFound);
    assert_eq!(a.send(Destination::Slot(1), Bytes::new()).unwrap_err(), CoreError::PartyClosed);
}

#[tokio::test(start_paused = true)]
async fn an_empty_room_closes_after_the_reconnect_grace_unless_someone_comes_back() {
    let grace = Duration::from_secs(30);
    let rooms = Rooms::new(Limits { reconnect_grace: grace, ..limits() }, None);
    let room = rooms.create(2, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    let b = join(&rooms, &room.id);
    let token = a.welcome().resume_token.clone();
    drop(a);
    drop(b);
    tokio::time::advance(Duration::from_secs(20)).await;
    settle().await;
    assert_eq!(rooms.len(), 1, "still within the grace");
    let a = resume(&rooms, &room.id, &token, None).unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(rooms.len(), 1, "a party came back, so the room stays");
    drop(a);
    tokio::time::advance(grace - Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(rooms.len(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(rooms.len(), 0, "closed once the grace passed with nobody back");
}

#[tokio::test(start_paused = true)]
async fn the_room_closes_at_once_when_every_party_left() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    drain(&mut b);
    a.leave();
    assert_eq!(b.next_event().await, PartyEvent::Left(0));
    assert_eq!(rooms.len(), 1);
    b.leave();
    assert_eq!(rooms.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_party_that_left_gets_nothing_more_and_cannot_resume() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(3, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    let b = join(&rooms, &room.id);
    let mut c = join(&rooms, &room.id);
    drain(&mut c);
    let token = b.welcome().resume_token.clone();
    b.leave();
    a.send(Destination::Slot(1), Bytes::from_static(b"dropped")).unwrap();
    a.send(Destination::Broadcast, Bytes::from_static(b"to c")).unwrap();
    assert_eq!(data(&mut c).len(), 1);
    assert_eq!(resume(&rooms, &room.id, &token, None).unwrap_err(), CoreError::BadResumeToken);
    assert_eq!(
        rooms.join(&room.id, JoinRequest { slot: Some(1), ..JoinRequest::default() }).unwrap_err(),
        CoreError::SlotTaken(1)
    );
}

#[tokio::test(start_paused = true)]
async fn slots_full_rooms_and_destinations_are_checked() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let b = rooms.join(&room.id, JoinRequest { slot: Some(1), ..JoinRequest::default() }).unwrap();
    assert_eq!(b.slot(), 1);
    assert_eq!(
        rooms.join(&room.id, JoinRequest { slot: Some(1), ..JoinRequest::default() }).unwrap_err(),
        CoreError::SlotTaken(1)
    );
    assert_eq!(
        rooms.join(&room.id, JoinRequest { slot: Some(2), ..JoinRequest::default() }).unwrap_err(),
        CoreError::BadSlot { slot: 2, room_size: 2 }
    );
    let a = join(&rooms, &room.id);
    assert_eq!(a.slot(), 0);
    assert_eq!(rooms.join(&room.id, JoinRequest::default()).unwrap_err(), CoreError::RoomFull(2));
    drop(a);
    assert_eq!(
        rooms.join(&room.id, JoinRequest::default()).unwrap_err(),
        CoreError::RoomFull(2),
        "a dropped party keeps its slot"
    );
    assert_eq!(b.send(Destination::Slot(1), Bytes::new()).unwrap_err(), CoreError::BadDestination(1));
    assert_eq!(b.send(Destination::Slot(2), Bytes::new()).unwrap_err(), CoreError::BadDestination(2));
    let big = Bytes::from(vec![0u8; limits().max_message_bytes + 1]);
    assert!(matches!(b.send(Destination::Slot(0), big).unwrap_err(), CoreError::MessageTooBig { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_for_a_slot_replaces_the_old_one() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let mut old = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    drain(&mut old);
    drain(&mut b);
    let token = old.welcome().resume_token.clone();
    let mut new = resume(&rooms, &room.id, &token, None).unwrap();
    assert_eq!(old.next_event().await, PartyEvent::Closed(CloseReason::Replaced));
    assert_eq!(CloseReason::Replaced.code(), 4001);
    assert_eq!(old.send(Destination::Slot(1), Bytes::new()).unwrap_err(), CoreError::PartyClosed);
    drop(old);
    assert!(
        drain(&mut b).iter().all(|e| *e != PartyEvent::Left(0)),
        "dropping a replaced connection is not a departure"
    );
    b.send(Destination::Slot(0), Bytes::from_static(b"x")).unwrap();
    assert!(matches!(new.next_event().await, PartyEvent::Ready { .. }));
    assert!(matches!(new.next_event().await, PartyEvent::Data(Delivery { seq: 1, from: 1, .. })));
}

#[tokio::test(start_paused = true)]
async fn max_rooms_is_enforced_and_expired_rooms_free_their_place() {
    let rooms = Rooms::new(Limits { max_rooms: 2, ..limits() }, Some("1a2b3c4d".parse().unwrap()));
    let r1 = rooms.create(2, Some(Duration::from_secs(1)), NOW).unwrap();
    assert!(r1.id.to_string().starts_with("1a2b3c4d-"));
    rooms.create(2, None, NOW).unwrap();
    assert_eq!(rooms.create(2, None, NOW).unwrap_err(), CoreError::TooManyRooms(2));
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(rooms.list().len(), 1);
    rooms.create(2, None, NOW).unwrap();
}

#[tokio::test(start_paused = true)]
async fn sizes_and_ttls_out_of_range_are_refused() {
    let rooms = Rooms::new(limits(), None);
    assert!(matches!(rooms.create(1, None, NOW), Err(CoreError::BadRoomSize { got: 1, .. })));
    assert!(matches!(rooms.create(65, None, NOW), Err(CoreError::BadRoomSize { got: 65, .. })));
    assert!(matches!(rooms.create(2, Some(Duration::ZERO), NOW), Err(CoreError::BadTtl { .. })));
    assert!(matches!(rooms.create(2, Some(Duration::from_secs(86_401)), NOW), Err(CoreError::BadTtl { .. })));
    assert!(rooms.is_empty());
}

#[test]
fn creating_a_room_outside_a_runtime_is_an_error_not_a_panic() {
    let rooms = Rooms::new(limits(), None);
    assert_eq!(rooms.create(2, None, NOW).unwrap_err(), CoreError::NoRuntime);
}

#[tokio::test(start_paused = true)]
async fn close_all_closes_every_party() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let mut a = join(&rooms, &room.id);
    drain(&mut a);
    rooms.close_all(CloseReason::Shutdown);
    assert_eq!(a.next_event().await, PartyEvent::Closed(CloseReason::Shutdown));
    assert!(rooms.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_operator_closes_one_room_and_its_parties_get_the_policy_code() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let other = rooms.create(2, None, NOW).unwrap();
    let mut a = join(&rooms, &room.id);
    drain(&mut a);
    assert!(rooms.close(&room.id, CloseReason::ClosedByOperator));
    assert_eq!(a.next_event().await, PartyEvent::Closed(CloseReason::ClosedByOperator));
    assert_eq!(CloseReason::ClosedByOperator.code(), 1008);
    assert!(rooms.info(&room.id).is_none());
    assert!(rooms.info(&other.id).is_some(), "other rooms stay");
    assert!(!rooms.close(&room.id, CloseReason::ClosedByOperator), "a closed room is gone");
}

#[tokio::test(start_paused = true)]
async fn a_flapping_party_leaves_one_pending_event_for_a_reader_that_is_away() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let mut a = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    drain(&mut a);
    let token = b.welcome().resume_token.clone();
    for _ in 0..1000 {
        drop(b);
        b = resume(&rooms, &room.id, &token, None).unwrap();
    }
    assert_eq!(drain(&mut a), vec![PartyEvent::Joined(1)]);
    drop(b);
    assert_eq!(drain(&mut a), vec![PartyEvent::Left(1)]);
}

/// A waker that counts its wake-ups.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_deferred_sends_wakes_each_receiver_once_after_the_burst() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(3, None, NOW).unwrap();
    let mut a = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    let mut c = join(&rooms, &room.id);
    drain(&mut b);
    drain(&mut c);
    let count = Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
    let waker = std::task::Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(b.poll_next_event(&mut cx).is_pending());
    assert!(c.poll_next_event(&mut cx).is_pending());

    for n in 0..5u8 {
        a.send_deferred(Destination::Broadcast, Bytes::from(vec![n])).unwrap();
    }
    let woken = || count.0.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(woken(), 0, "no wake-up before the burst ends");
    a.wake_receivers();
    assert_eq!(woken(), 2, "one wake-up per receiver for the whole burst");
    assert_eq!(data(&mut b).len(), 5);
    assert_eq!(data(&mut c).len(), 5);

    // An immediate send wakes at once; a party dropped mid-burst pays what it owes.
    assert!(b.poll_next_event(&mut cx).is_pending());
    a.send(Destination::Slot(b.slot()), Bytes::from_static(b"now")).unwrap();
    assert_eq!(woken(), 3);
    assert!(matches!(b.poll_next_event(&mut cx), Poll::Ready(PartyEvent::Data(_))));
    assert!(c.poll_next_event(&mut cx).is_pending());
    a.send_deferred(Destination::Slot(c.slot()), Bytes::from_static(b"later")).unwrap();
    assert_eq!(woken(), 3);
    drop(a);
    assert!(woken() >= 4, "dropping the sender wakes what it deferred");
}

#[tokio::test(start_paused = true)]
async fn expires_at_is_the_callers_now_plus_the_ttl() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, Some(Duration::from_secs(90)), NOW).unwrap();
    assert_eq!(room.expires_at, NOW + 90);
    let default = rooms.create(2, None, NOW).unwrap();
    assert_eq!(default.expires_at, NOW + limits().room_ttl_default.as_secs());
    let a = join(&rooms, &room.id);
    assert_eq!(a.welcome().expires_at, NOW + 90);
}

#[test]
fn close_reasons_map_to_the_protocols_close_codes() {
    assert_eq!(CloseReason::Expired.close_code(), CloseCode::RoomExpired);
    assert_eq!(CloseReason::Replaced.code(), 4001);
    assert_eq!(CloseReason::AllLeft.code(), 1000);
    assert_eq!(CloseReason::Shutdown.code(), 1001);
}

#[tokio::test(start_paused = true)]
async fn the_close_hook_hears_each_room_once_with_its_lifetime_and_reason() {
    let rooms = Rooms::new(limits(), None);
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    assert!(rooms.set_on_close(move |lifetime, reason| lock(&sink).push((lifetime, reason))));
    assert!(!rooms.set_on_close(|_, _| {}), "only the first hook is kept");

    let room = rooms.create(2, Some(Duration::from_secs(60)), NOW).unwrap();
    let a = join(&rooms, &room.id);
    let b = join(&rooms, &room.id);
    tokio::time::advance(Duration::from_secs(5)).await;
    a.leave();
    b.leave();
    settle().await;
    let expiring = rooms.create(2, Some(Duration::from_secs(30)), NOW).unwrap();
    // Slept, not advanced: paused time stops at the room's deadline and runs its timer.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(rooms.info(&expiring.id).is_none());
    assert_eq!(
        *lock(&heard),
        [(Duration::from_secs(5), CloseReason::AllLeft), (Duration::from_secs(30), CloseReason::Expired)]
    );
}

fn join_with_party_token(rooms: &Rooms, id: &RoomId, token: &str) -> Result<Party, CoreError> {
    rooms.join(id, JoinRequest { party_token: Some(token.to_owned()), ..JoinRequest::default() })
}

#[tokio::test(start_paused = true)]
async fn party_tokens_bind_slots_and_only_digests_are_kept() {
    let rooms = Rooms::new(limits(), None);
    let (room, tokens) = rooms.create_with_party_tokens(3, None, NOW).unwrap();
    let (_, other_tokens) = rooms.create_with_party_tokens(3, None, NOW).unwrap();
    assert_eq!(tokens.len(), 3);
    for t in &tokens {
        assert!(t.len() >= 22, "at least 128 bits in base64url: {t}");
        assert_eq!(tokens.iter().chain(&other_tokens).filter(|u| *u == t).count(), 1, "tokens are distinct");
    }
    assert_eq!(rooms.join(&room.id, JoinRequest::default()).unwrap_err(), CoreError::BadPartyToken);
    assert_eq!(
        join_with_party_token(&rooms, &room.id, &other_tokens[0]).unwrap_err(),
        CoreError::BadPartyToken
    );
    let c = join_with_party_token(&rooms, &room.id, &tokens[2]).unwrap();
    assert_eq!(c.slot(), 2);
    let wrong_slot = JoinRequest { slot: Some(0), party_token: Some(tokens[1].clone()), resume: None };
    assert_eq!(rooms.join(&room.id, wrong_slot).unwrap_err(), CoreError::BadPartyToken);
    assert_eq!(join_with_party_token(&rooms, &room.id, &tokens[2]).unwrap_err(), CoreError::SlotTaken(2));
    let a = join_with_party_token(&rooms, &room.id, &tokens[0]).unwrap();
    assert_eq!(a.slot(), 0);
    // Resume keeps working with the resume token.
    let token = c.welcome().resume_token.clone();
    drop(c);
    assert_eq!(resume(&rooms, &room.id, &token, None).unwrap().slot(), 2);
}

#[tokio::test(start_paused = true)]
async fn welcome_counts_the_frames_taken_from_the_slot_across_connections() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let mut a = join(&rooms, &room.id);
    let _b = join(&rooms, &room.id);
    assert_eq!(a.welcome().received, 0);
    a.send(Destination::Slot(1), Bytes::from_static(b"1")).unwrap();
    assert_eq!(a.send(Destination::Slot(0), Bytes::from_static(b"2")), Err(CoreError::BadDestination(0)));
    assert_eq!(a.last_frame(), 2, "a refused frame is counted and named");
    assert_eq!(a.refuse_frame(), Some(3));
    a.send_deferred(Destination::Slot(1), Bytes::from_static(b"4")).unwrap();
    a.wake_receivers();
    let token = a.welcome().resume_token.clone();
    drop(a);
    let a = resume(&rooms, &room.id, &token, None).unwrap();
    assert_eq!(a.welcome().received, 4);
    assert_eq!(a.last_frame(), 4);
}

#[tokio::test(start_paused = true)]
async fn status_reports_presence_frames_and_idle_time_per_slot() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(3, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    let b = join(&rooms, &room.id);
    tokio::time::advance(Duration::from_millis(500)).await;
    a.send(Destination::Broadcast, Bytes::from_static(b"x")).unwrap();
    a.send(Destination::Slot(1), Bytes::from_static(b"y")).unwrap();
    tokio::time::advance(Duration::from_millis(200)).await;
    let status = b.status();
    assert_eq!(status.present, vec![0, 1]);
    assert_eq!(status.sent, vec![2, 0, 0]);
    assert_eq!(
        status.idle,
        vec![Duration::from_millis(200), Duration::from_millis(700), Duration::from_millis(700)]
    );
}

#[tokio::test(start_paused = true)]
async fn abort_tells_the_others_closes_everyone_and_lingers_for_resumes() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(3, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    let mut c = join(&rooms, &room.id);
    drain(&mut b);
    let c_token = c.welcome().resume_token.clone();
    drain(&mut c);
    drop(c);
    drain(&mut b);
    b.send(Destination::Slot(0), Bytes::from_static(b"pending")).unwrap();
    b.abort(&"x".repeat(1000));
    settle().await;
    let reason = "x".repeat(relay_proto::room::MAX_ABORT_REASON_BYTES);
    assert_eq!(
        drain(&mut { a }).into_iter().take(2).collect::<Vec<_>>(),
        vec![
            PartyEvent::Aborted { slot: 1, reason: reason.clone() },
            PartyEvent::Closed(CloseReason::Aborted)
        ]
    );
    assert_eq!(b.try_next_event(), Some(PartyEvent::Closed(CloseReason::Aborted)));
    assert_eq!(b.send(Destination::Slot(0), Bytes::new()), Err(CoreError::PartyClosed));
    assert_eq!(rooms.join(&room.id, JoinRequest::default()).unwrap_err(), CoreError::RoomNotFound);
    let mut c = resume(&rooms, &room.id, &c_token, None).unwrap();
    assert!(c.welcome().resumed);
    assert_eq!(c.try_next_event(), Some(PartyEvent::Aborted { slot: 1, reason }));
    assert_eq!(c.try_next_event(), Some(PartyEvent::Closed(CloseReason::Aborted)));
    tokio::time::advance(limits().reconnect_grace + Duration::from_secs(1)).await;
    settle().await;
    assert!(rooms.info(&room.id).is_none(), "forgotten after the grace");
    assert_eq!(resume(&rooms, &room.id, &c_token, None).unwrap_err(), CoreError::RoomNotFound);
}

/// The process-wide budget is charged each held message (payload plus overhead, per
/// receiver), refuses what does not fit with `HeldBytesFull` while the room's own bound
/// still has room, and is back at zero once everything is acked, and again once a room
/// closes with messages still held.
#[tokio::test(start_paused = true)]
async fn the_held_bytes_budget_is_charged_refuses_when_full_and_returns_to_zero() {
    let cost = 100 + HELD_MESSAGE_OVERHEAD;
    let budget = HeldBytes::new(3 * cost);
    let rooms = Rooms::with_budget(limits(), None, budget.clone());
    let room = rooms.create(2, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    for _ in 0..3 {
        a.send(Destination::Slot(1), Bytes::from(vec![1u8; 100])).unwrap();
    }
    assert_eq!(budget.held(), 3 * cost);
    let refused = a.send(Destination::Slot(1), Bytes::from(vec![1u8; 100]));
    assert_eq!(refused, Err(CoreError::HeldBytesFull { max: 3 * cost }));
    // Another room shares the budget: it is refused too, and its own bound is far off.
    let other = rooms.create(2, None, NOW).unwrap();
    let c = join(&rooms, &other.id);
    let _d = join(&rooms, &other.id);
    assert!(matches!(
        c.send(Destination::Slot(1), Bytes::from_static(b"x")),
        Err(CoreError::HeldBytesFull { .. })
    ));
    // Delivered and acked: everything comes back, and the refused send did not count.
    let got = data(&mut b);
    assert_eq!(got.len(), 3);
    b.ack(got[2].0);
    assert_eq!(budget.held(), 0);
    // Held, then the room closes: the close gives it back.
    c.send(Destination::Slot(1), Bytes::from_static(b"held")).unwrap();
    assert_eq!(budget.held(), 4 + HELD_MESSAGE_OVERHEAD);
    assert!(rooms.close(&other.id, CloseReason::ClosedByOperator));
    assert_eq!(budget.held(), 0);
    // A broadcast counts per receiver; a party leaving gives its share back.
    let three = rooms.create(3, None, NOW).unwrap();
    let x = join(&rooms, &three.id);
    let y = join(&rooms, &three.id);
    let _z = join(&rooms, &three.id);
    x.send(Destination::Broadcast, Bytes::from_static(b"bb")).unwrap();
    assert_eq!(budget.held(), 2 * (2 + HELD_MESSAGE_OVERHEAD));
    y.leave();
    assert_eq!(budget.held(), 2 + HELD_MESSAGE_OVERHEAD);
    x.abort("done");
    assert_eq!(budget.held(), 0, "an abort frees what was held");
}

/// A small payload is held in an allocation of its own, not as a view of the (large)
/// buffer it arrived in.
#[tokio::test(start_paused = true)]
async fn a_small_held_payload_does_not_pin_its_read_buffer() {
    let rooms = Rooms::new(limits(), None);
    let room = rooms.create(2, None, NOW).unwrap();
    let a = join(&rooms, &room.id);
    let mut b = join(&rooms, &room.id);
    let buffer = Bytes::from(vec![9u8; 512 << 10]);
    let payload = buffer.slice(100..200);
    a.send(Destination::Slot(1), payload.clone()).unwrap();
    let got = data(&mut b);
    assert_eq!(got[0].2, payload);
    let held = got[0].2.as_ptr() as usize;
    let start = buffer.as_ptr() as usize;
    assert!(held < start || held >= start + buffer.len(), "the held payload points into the read buffer");
}

/// One owner has at most `max_rooms_per_key` live rooms; another owner and ownerless
/// creations are not affected; a closed room frees its place; `close_owned_by` closes
/// only that owner's rooms.
#[tokio::test(start_paused = true)]
async fn rooms_per_owner_are_bounded_and_closed_together() {
    let rooms = Rooms::new(Limits { max_rooms_per_key: 2, ..limits() }, None);
    let (r1, _) = rooms.create_owned(Some("a"), 2, None, NOW, false).unwrap();
    let (_, tokens) = rooms.create_owned(Some("a"), 2, None, NOW, true).unwrap();
    assert_eq!(tokens.map(|t| t.len()), Some(2));
    let third = rooms.create_owned(Some("a"), 2, None, NOW, false);
    assert_eq!(third.map(|_| ()), Err(CoreError::TooManyRoomsForKey(2)));
    let (b1, _) = rooms.create_owned(Some("b"), 2, None, NOW, false).unwrap();
    rooms.create(2, None, NOW).unwrap();
    assert_eq!(rooms.owner(&r1.id).as_deref(), Some("a"));
    assert_eq!(rooms.count_owned_by("a"), 2);
    assert!(rooms.close(&r1.id, CloseReason::ClosedByOperator));
    assert_eq!(rooms.count_owned_by("a"), 1);
    rooms.create_owned(Some("a"), 2, None, NOW, false).unwrap();
    let mut owners: Vec<String> = rooms.owners().iter().map(|o| o.to_string()).collect();
    owners.sort();
    assert_eq!(owners, ["a", "b"]);
    let mut party = join(&rooms, &b1.id);
    assert_eq!(rooms.close_owned_by("a", CloseReason::KeyExpired), 2);
    assert_eq!(rooms.count_owned_by("a"), 0);
    assert_eq!(rooms.len(), 2, "b's room and the ownerless one stay");
    assert!(drain(&mut party).iter().all(|e| !matches!(e, PartyEvent::Closed(_))));
    assert_eq!(rooms.close_owned_by("b", CloseReason::KeyRevoked), 1);
    assert_eq!(party.next_event().await, PartyEvent::Closed(CloseReason::KeyRevoked));
    assert_eq!(CloseReason::KeyExpired.text(), "api key expired");
}

/// A room nobody joins closes at the join timeout; one that someone joined does not.
#[tokio::test(start_paused = true)]
async fn a_room_nobody_joins_closes_at_the_join_timeout() {
    let timeout = Duration::from_secs(60);
    let rooms = Rooms::new(Limits { room_join_timeout: timeout, ..limits() }, None);
    let lonely = rooms.create(2, None, NOW).unwrap();
    let joined = rooms.create(2, None, NOW).unwrap();
    let party = join(&rooms, &joined.id);
    tokio::time::advance(timeout - Duration::from_secs(1)).await;
    settle().await;
    assert!(rooms.info(&lonely.id).is_some(), "closed before the timeout");
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert!(rooms.info(&lonely.id).is_none(), "an unjoined room outlived the join timeout");
    assert!(rooms.info(&joined.id).is_some(), "a joined room closed at the join timeout");
    assert_eq!(rooms.join(&lonely.id, JoinRequest::default()).map(|_| ()), Err(CoreError::RoomNotFound));
    drop(party);
    // Zero turns it off.
    let off = Rooms::new(Limits { room_join_timeout: Duration::ZERO, ..limits() }, None);
    let kept = off.create(2, None, NOW).unwrap();
    tokio::time::advance(Duration::from_secs(500)).await;
    settle().await;
    assert!(off.info(&kept.id).is_some());
}
