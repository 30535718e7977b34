//! Checks the shared test vectors (`vectors/*.json`, format in `vectors/README.md`) both
//! ways: decoding the bytes or text gives the stated meaning, and encoding the meaning
//! gives the same bytes or text. Plus a proptest roundtrip of every frame kind.

use proptest::prelude::*;
use relay_proto::mailbox::{self, FrameKind, MailboxHeader};
use relay_proto::room::{self, ClientControl, Destination, RelayHeader, ServerEvent};
use relay_proto::{CloseCode, ErrorBody, ErrorCode};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex(s: &Value) -> Vec<u8> {
    let s = s.as_str().expect("hex is a string");
    assert!(s.len().is_multiple_of(2), "odd hex {s:?}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

fn list<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key].as_array().unwrap_or_else(|| panic!("{key} is a list"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} is a string in {v}"))
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} is an unsigned number in {v}"))
}

fn u16_of(v: &Value, key: &str) -> u16 {
    u16::try_from(u64_of(v, key)).expect("fits u16")
}

#[test]
fn room_frames() {
    let v = load("room_frames.json");
    for f in list(&v, "client_frames") {
        let name = str_of(f, "name");
        let bytes = hex(&f["hex"]);
        let to = match &f["to"] {
            Value::String(s) if s == "broadcast" => Destination::Broadcast,
            n => Destination::Slot(u16::try_from(n.as_u64().expect("slot")).expect("u16")),
        };
        let payload = hex(&f["payload_hex"]);
        assert_eq!(room::parse_client_frame(&bytes), Some((to, &payload[..])), "{name}");
        assert_eq!(room::encode_client_frame(to, &payload), bytes, "{name}");
        assert_eq!(room::client_header(to)[..], bytes[..room::CLIENT_HEADER_LEN], "{name}");
    }
    for f in list(&v, "relay_frames") {
        let name = str_of(f, "name");
        let bytes = hex(&f["hex"]);
        let header = RelayHeader {
            seq: str_of(f, "seq").parse().expect("seq is a decimal u64"),
            from: u16_of(f, "from"),
            broadcast: f["broadcast"].as_bool().expect("bool"),
        };
        let payload = hex(&f["payload_hex"]);
        assert_eq!(RelayHeader::parse(&bytes), Some((header, &payload[..])), "{name}");
        if f["canonical"].as_bool() != Some(false) {
            assert_eq!(header.encode_frame(&payload), bytes, "{name}");
        }
    }
    for f in list(&v, "invalid_client_frames") {
        assert_eq!(room::parse_client_frame(&hex(&f["hex"])), None, "{}", str_of(f, "name"));
    }
    for f in list(&v, "invalid_relay_frames") {
        assert_eq!(RelayHeader::parse(&hex(&f["hex"])), None, "{}", str_of(f, "name"));
    }
}

#[test]
fn mailbox_frames() {
    let v = load("mailbox_frames.json");
    for f in list(&v, "frames") {
        let name = str_of(f, "name");
        let bytes = hex(&f["hex"]);
        let id: [u8; 32] = hex(&f["id_hex"]).try_into().expect("32-byte id");
        let kind = match str_of(f, "kind") {
            "ask" => FrameKind::Ask,
            "publish" => FrameKind::Publish,
            other => panic!("kind {other:?}"),
        };
        let (ttl_secs, flags) = (u16_of(f, "ttl_secs"), u16_of(f, "flags"));
        let payload = hex(&f["payload_hex"]);
        let header = MailboxHeader::parse(&bytes).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(header, MailboxHeader { id, ttl_secs, flags, kind }, "{name}");
        assert_eq!(header.one_receiver(), f["one_receiver"].as_bool().expect("bool"), "{name}");
        assert_eq!(&bytes[mailbox::HEADER_LEN..], &payload[..], "{name}");
        assert_eq!(header.encode()[..], bytes[..mailbox::HEADER_LEN], "{name}");
        assert_eq!(mailbox::publish_frame(&id, ttl_secs, flags, &payload), bytes, "{name}");
        if kind == FrameKind::Ask && flags == 0 {
            assert_eq!(mailbox::ask_frame(&id, ttl_secs), bytes, "{name}");
        }
    }
    for f in list(&v, "invalid") {
        assert_eq!(MailboxHeader::parse(&hex(&f["hex"])), None, "{}", str_of(f, "name"));
    }
}

#[test]
fn control_events() {
    let v = load("control_events.json");
    for e in list(&v, "server_events") {
        let (name, text) = (str_of(e, "name"), str_of(e, "json"));
        let event: ServerEvent = serde_json::from_value(e["event"].clone()).expect(name);
        assert_eq!(ServerEvent::parse(text).expect(name), event, "{name}");
        assert_eq!(event.to_json(), text, "{name}");
    }
    for e in list(&v, "lenient_server_events") {
        let name = str_of(e, "name");
        let event: ServerEvent = serde_json::from_value(e["event"].clone()).expect(name);
        assert_eq!(ServerEvent::parse(str_of(e, "json")).expect(name), event, "{name}");
    }
    for text in list(&v, "invalid_server_events") {
        let text = text.as_str().expect("string");
        assert!(ServerEvent::parse(text).is_err(), "{text:?} parsed");
    }
    for c in list(&v, "client_controls") {
        let (name, text) = (str_of(c, "name"), str_of(c, "json"));
        let control: ClientControl = serde_json::from_value(c["control"].clone()).expect(name);
        assert_eq!(ClientControl::parse(text), Some(control.clone()), "{name}");
        assert_eq!(control.to_json(), text, "{name}");
    }
    for c in list(&v, "lenient_client_controls") {
        let name = str_of(c, "name");
        let control: ClientControl = serde_json::from_value(c["control"].clone()).expect(name);
        assert_eq!(ClientControl::parse(str_of(c, "json")), Some(control), "{name}");
    }
    for text in list(&v, "invalid_client_controls") {
        let text = text.as_str().expect("string");
        assert_eq!(ClientControl::parse(text), None, "{text:?} parsed");
    }
}

/// `TryAgainLater` -> `try_again_later`, the vectors' name for a close code.
fn snake_case(code: CloseCode) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{code:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

#[test]
fn close_codes() {
    let v = load("close_codes.json");
    let listed = list(&v, "codes");
    assert_eq!(listed.len(), CloseCode::ALL.len(), "every close code is in the vectors");
    for c in listed {
        let number = u16_of(c, "code");
        let code = CloseCode::from_code(number).unwrap_or_else(|| panic!("{number} unknown"));
        assert_eq!(code.code(), number);
        assert_eq!(snake_case(code), str_of(c, "name"), "{number}");
        assert_eq!(code.is_retryable(), c["retryable"].as_bool().expect("bool"), "{number}");
    }
    for n in list(&v, "unknown") {
        let number = u16::try_from(n.as_u64().expect("number")).expect("u16");
        assert_eq!(CloseCode::from_code(number), None, "{number}");
    }
}

#[test]
fn error_codes_and_bodies() {
    let v = load("error_bodies.json");
    let listed = list(&v, "codes");
    assert_eq!(listed.len(), ErrorCode::ALL.len(), "the vectors list every code, and only those");
    for c in listed {
        let text = str_of(c, "code");
        let code: ErrorCode = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(ErrorCode::ALL.contains(&code), "{text}");
        assert_eq!(code.as_str(), text);
        assert_eq!(code.status(), u16_of(c, "status"), "{text}");
        assert_eq!(code.is_auth_failure(), c["auth_failure"].as_bool().expect("bool"), "{text}");
    }
    for b in list(&v, "bodies") {
        let text = str_of(b, "json");
        let body = ErrorBody::new(str_of(b, "code").parse().expect("known code"), str_of(b, "message"));
        assert_eq!(ErrorBody::parse(text.as_bytes()).expect(text), body, "{text}");
        assert_eq!(body.to_json(), text);
        assert_eq!(body.error.code.status(), u16_of(b, "status"), "{text}");
    }
    for b in list(&v, "lenient_bodies") {
        let text = str_of(b, "json");
        let body = ErrorBody::parse(text.as_bytes()).expect(text);
        assert_eq!(body.error.code.as_str(), str_of(b, "code"), "{text}");
        assert_eq!(body.error.message, str_of(b, "message"), "{text}");
    }
}

fn destination() -> impl Strategy<Value = Destination> {
    prop_oneof![any::<u16>().prop_map(Destination::from_wire), Just(Destination::Broadcast)]
}

proptest! {
    #[test]
    fn client_frames_roundtrip(to in destination(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let frame = room::encode_client_frame(to, &payload);
        prop_assert_eq!(room::parse_client_frame(&frame), Some((to, &payload[..])));
    }

    #[test]
    fn relay_frames_roundtrip(seq: u64, from: u16, broadcast: bool, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let header = RelayHeader { seq, from, broadcast };
        let frame = header.encode_frame(&payload);
        prop_assert_eq!(RelayHeader::parse(&frame), Some((header, &payload[..])));
    }

    #[test]
    fn mailbox_frames_roundtrip(id: [u8; 32], ttl_secs: u16, flags: u16, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let frame = mailbox::publish_frame(&id, ttl_secs, flags, &payload);
        let kind = if payload.is_empty() { FrameKind::Ask } else { FrameKind::Publish };
        prop_assert_eq!(MailboxHeader::parse(&frame), Some(MailboxHeader { id, ttl_secs, flags, kind }));
    }

    #[test]
    fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
        let _ = room::parse_client_frame(&bytes);
        let _ = RelayHeader::parse(&bytes);
        let _ = MailboxHeader::parse(&bytes);
        prop_assert_eq!(MailboxHeader::parse(&bytes).is_some(), bytes.len() >= mailbox::HEADER_LEN);
    }

    #[test]
    fn server_events_roundtrip(slot: u16, seq: u64, code in proptest::sample::select(ErrorCode::ALL), message in ".{0,16}") {
        for event in [
            ServerEvent::Joined { slot },
            ServerEvent::Left { slot },
            ServerEvent::Ready { room_size: slot },
            ServerEvent::Error { code, message: message.clone(), frame: None },
            ServerEvent::Error { code, message: message.clone(), frame: Some(seq) },
            ServerEvent::Aborted { slot, reason: message.clone() },
            ServerEvent::Closing { code: slot, reason: message.clone() },
        ] {
            prop_assert_eq!(ServerEvent::parse(&event.to_json()).unwrap(), event);
        }
        let ack = ClientControl::Ack { seq };
        prop_assert_eq!(ClientControl::parse(&ack.to_json()), Some(ack));
        let abort = ClientControl::Abort { reason: message.clone() };
        prop_assert_eq!(ClientControl::parse(&abort.to_json()), Some(abort));
    }
}
