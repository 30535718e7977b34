//! Room frames from clients: binary data frames through the protocol's parser
//! (relay-proto's `parse_client_frame`, which the server runs) into a real room, and
//! text control frames through `ClientControl::parse`,
//! for a room of three parties with small limits. Checks: never a panic; a frame under
//! 2 bytes is refused by the parser; a send over the held-bytes bound is refused rather
//! than stored.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use relay_core::rooms::{Destination, JoinRequest, Rooms};
use relay_core::{CoreError, Limits};
use relay_proto::room::{BROADCAST_SLOT, CLIENT_HEADER_LEN, ClientControl, parse_client_frame};

#[derive(Debug, Arbitrary)]
enum Frame {
    /// A binary frame from party `party`.
    Binary { party: u8, bytes: Vec<u8> },
    /// A text frame from party `party` (any bytes; invalid UTF-8 is what tungstenite
    /// refuses before the server sees it, so it is skipped here).
    Text { party: u8, bytes: Vec<u8> },
    /// Party `party` reads everything ready.
    Read { party: u8 },
}

fuzz_target!(|frames: Vec<Frame>| {
    // A runtime per input, never driven: the room's timer task is spawned but never
    // polled, and dropping the runtime at the end drops it (a shared runtime would keep
    // every input's room alive).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let _guard = runtime.enter();
    let limits = Limits { max_message_bytes: 64, max_room_held_bytes: 2048, ..Limits::default() };
    let rooms = Rooms::new(limits, None);
    let room = rooms.create(3, Some(Duration::from_secs(60)), 1_767_225_600).unwrap();
    let mut parties: Vec<_> = (0..3).map(|_| rooms.join(&room.id, JoinRequest::default()).unwrap()).collect();
    for frame in frames.into_iter().take(512) {
        match frame {
            Frame::Binary { party, bytes } => {
                let p = &parties[usize::from(party) % 3];
                let bytes = Bytes::from(bytes);
                match parse_client_frame(&bytes) {
                    None => assert!(bytes.len() < CLIENT_HEADER_LEN),
                    Some((to, payload)) => {
                        assert_eq!(payload.len(), bytes.len() - CLIENT_HEADER_LEN);
                        if let Destination::Slot(slot) = to {
                            assert_ne!(slot, BROADCAST_SLOT);
                        }
                        match p.send(to, bytes.slice(CLIENT_HEADER_LEN..)) {
                            Ok(())
                            | Err(
                                CoreError::BadDestination(_)
                                | CoreError::MessageTooBig { .. }
                                | CoreError::RoomBufferFull { .. }
                                | CoreError::PartyClosed,
                            ) => {}
                            Err(e) => panic!("unexpected refusal {e:?}"),
                        }
                    }
                }
            }
            Frame::Text { party, bytes } => {
                let Ok(text) = std::str::from_utf8(&bytes) else { continue };
                let p = &parties[usize::from(party) % 3];
                match ClientControl::parse(text) {
                    Some(ClientControl::Ack { seq }) => p.ack(seq),
                    Some(ClientControl::Leave | ClientControl::Abort { .. } | ClientControl::Status) | None => {}
                }
            }
            Frame::Read { party } => {
                let p = &mut parties[usize::from(party) % 3];
                while p
                    .try_next_event()
                    .is_some_and(|e| !matches!(e, relay_core::rooms::PartyEvent::Closed(_)))
                {}
            }
        }
    }
});
