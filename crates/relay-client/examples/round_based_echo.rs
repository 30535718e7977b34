//! A three-round echo protocol among 3 parties, written against the `round-based`
//! crate's `Delivery` and carried by a relay room. The adapter from a
//! [`RoomConnection`] to `Delivery` is [`delivery`]: a `map` on the message stream and
//! a `with` on the sink, nothing more.
//!
//! Rounds: (1) each party broadcasts a value; (2) each party sends every other party,
//! p2p, the value it got from it; each checks its echoes; (3) each broadcasts the sum
//! of all values; everyone checks that all sums agree.
//!
//! The room is created with party tokens, so each party's slot (the relay-stamped
//! `from` that `round-based` reads as the sender) is the one its token names; a
//! dropped connection is resumed with every message sent and received exactly once.
//! A real protocol that detects a cheater would call [`RoomConnection::abort`] before
//! giving up, so the other parties learn who stopped and why.
//!
//! Run against a relay (keys not enforced, or pass a key):
//! `cargo run -p relay-client --example round_based_echo -- ws://127.0.0.1:8080 [API_KEY]`
//!
//! The e2e test `tests/e2e/client.rs` includes this file as a module and runs
//! [`run_echo_room`] against the real server.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt, future};
use relay_client::{ClientConfig, JoinOptions, OutgoingMessage, RoomClient, RoomConnection, RoomMessage};
use round_based::rounds_router::RoundsRouter;
use round_based::rounds_router::simple_store::RoundInput;
use round_based::{
    Delivery, Incoming, MessageDestination, MessageType, Mpc, MpcParty, Outgoing, PartyIndex,
    ProtocolMessage, RoundMessage,
};

/// Any error of this example.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Round 1: a party's value, broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello(pub u64);
/// Round 2: the value the receiver sent in round 1, echoed back p2p.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo(pub u64);
/// Round 3: the sum of every party's value, broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Total(pub u64);

/// The protocol's message: one variant per round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// Round 1.
    Hello(Hello),
    /// Round 2.
    Echo(Echo),
    /// Round 3.
    Total(Total),
}

impl Msg {
    /// Wire form: round number (1 byte), value (u64 LE).
    pub fn encode(&self) -> Vec<u8> {
        let (round, v) = match *self {
            Msg::Hello(Hello(v)) => (1u8, v),
            Msg::Echo(Echo(v)) => (2, v),
            Msg::Total(Total(v)) => (3, v),
        };
        let mut out = vec![round];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }

    /// Parses the wire form.
    pub fn decode(b: &[u8]) -> Result<Msg, DecodeError> {
        let (&round, rest) = b.split_first().ok_or(DecodeError)?;
        let v = u64::from_le_bytes(rest.try_into().map_err(|_| DecodeError)?);
        match round {
            1 => Ok(Msg::Hello(Hello(v))),
            2 => Ok(Msg::Echo(Echo(v))),
            3 => Ok(Msg::Total(Total(v))),
            _ => Err(DecodeError),
        }
    }
}

/// A payload that is not a [`Msg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("payload is not an echo protocol message")
    }
}

impl std::error::Error for DecodeError {}

/// Why receiving failed: the room connection, or a message that does not decode.
#[derive(Debug)]
pub enum ReceiveError {
    /// The room connection failed.
    Relay(relay_client::Error),
    /// A party sent garbage.
    Decode(DecodeError),
}

impl std::fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReceiveError::Relay(e) => write!(f, "relay: {e}"),
            ReceiveError::Decode(e) => write!(f, "decode: {e}"),
        }
    }
}

impl std::error::Error for ReceiveError {}

impl ProtocolMessage for Msg {
    fn round(&self) -> u16 {
        match self {
            Msg::Hello(_) => 1,
            Msg::Echo(_) => 2,
            Msg::Total(_) => 3,
        }
    }
}

/// Wires one round's message type into [`Msg`].
macro_rules! round_message {
    ($ty:ident, $round:literal) => {
        impl RoundMessage<$ty> for Msg {
            const ROUND: u16 = $round;
            fn to_protocol_message(m: $ty) -> Msg {
                Msg::$ty(m)
            }
            fn from_protocol_message(m: Msg) -> Result<$ty, Msg> {
                match m {
                    Msg::$ty(v) => Ok(v),
                    other => Err(other),
                }
            }
        }
    };
}
round_message!(Hello, 1);
round_message!(Echo, 2);
round_message!(Total, 3);

/// The adapter: a room connection as `round-based`'s `Delivery` (a `(Stream, Sink)`
/// pair). Slots are party indices; the relay's `seq` is the message id; the relay's
/// broadcast flag is the message type.
pub fn delivery(
    conn: RoomConnection,
) -> impl Delivery<Msg, SendError = relay_client::Error, ReceiveError = ReceiveError> {
    let (sender, messages) = conn.into_messages();
    let incoming = messages.map(|item: relay_client::Result<RoomMessage>| {
        let m = item.map_err(ReceiveError::Relay)?;
        Ok(Incoming {
            id: m.seq,
            sender: m.from,
            msg_type: if m.broadcast { MessageType::Broadcast } else { MessageType::P2P },
            msg: Msg::decode(&m.payload).map_err(ReceiveError::Decode)?,
        })
    });
    let outgoing = sender.with(|o: Outgoing<Msg>| {
        let payload = o.msg.encode();
        future::ready(Ok::<_, relay_client::Error>(match o.recipient {
            MessageDestination::AllParties => OutgoingMessage::broadcast(payload),
            MessageDestination::OneParty(p) => OutgoingMessage::to_slot(p, payload),
        }))
    });
    (incoming, outgoing)
}

/// The protocol, written only against `round-based`: returns the agreed sum.
pub async fn echo_protocol<M>(party: M, i: PartyIndex, n: u16, value: u64) -> Result<u64, BoxError>
where
    M: Mpc<ProtocolMessage = Msg>,
{
    let MpcParty { delivery, .. } = party.into_party();
    let (incoming, mut outgoing) = delivery.split();
    let mut rounds = RoundsRouter::<Msg>::builder();
    let round1 = rounds.add_round(RoundInput::<Hello>::broadcast(i, n));
    let round2 = rounds.add_round(RoundInput::<Echo>::p2p(i, n));
    let round3 = rounds.add_round(RoundInput::<Total>::broadcast(i, n));
    let mut rounds = rounds.listen(incoming);

    outgoing.send(Outgoing::broadcast(Msg::Hello(Hello(value)))).await?;
    let hellos = rounds.complete(round1).await?;

    for (j, _, hello) in hellos.iter_indexed() {
        outgoing.feed(Outgoing::p2p(j, Msg::Echo(Echo(hello.0)))).await?;
    }
    outgoing.flush().await?;
    let echoes = rounds.complete(round2).await?;
    for (j, _, echo) in echoes.iter_indexed() {
        if echo.0 != value {
            return Err(format!("party {j} echoed {} to party {i}, which sent {value}", echo.0).into());
        }
    }

    let total = hellos.iter().map(|h| h.0).sum::<u64>() + value;
    outgoing.send(Outgoing::broadcast(Msg::Total(Total(total)))).await?;
    let totals = rounds.complete(round3).await?;
    for (j, _, t) in totals.iter_indexed() {
        if t.0 != total {
            return Err(format!("party {j} totals {}, party {i} totals {total}", t.0).into());
        }
    }
    Ok(total)
}

/// Creates a room of 3 on the relay at `base_url`, joins it three times, runs the
/// protocol on each party concurrently, and returns every party's result (slot order).
pub async fn run_echo_room(base_url: &str, config: ClientConfig) -> Result<Vec<u64>, BoxError> {
    const PARTIES: u16 = 3;
    let client = RoomClient::new(base_url, config)?;
    let room = client.create_room_with_party_tokens(PARTIES, Some(Duration::from_secs(60))).await?;
    let mut parties = Vec::new();
    for slot in 0..PARTIES {
        // In a deployment the backend hands each party its own token.
        let token = room.party_tokens[usize::from(slot)].clone();
        let conn = client.join(&room.room_uuid, JoinOptions::party_token(token)).await?;
        let value = 1000 + u64::from(slot) * 7;
        parties.push(echo_protocol(MpcParty::connected(delivery(conn)), slot, PARTIES, value));
    }
    // One task drives all three parties: `echo_protocol` is generic over `Mpc`, whose
    // associated types promise no `Send`, so it is not spawned.
    let totals = tokio::time::timeout(Duration::from_secs(20), future::try_join_all(parties))
        .await
        .map_err(|_| "protocol timed out")??;
    Ok(totals)
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080".to_owned());
    let config = match args.next() {
        Some(key) => ClientConfig::with_api_key(key),
        None => ClientConfig::default(),
    };
    let totals = run_echo_room(&url, config).await?;
    println!("every party agreed: {totals:?}");
    Ok(())
}
