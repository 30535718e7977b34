//! The read side of a server WebSocket, beneath tungstenite: it reads a busy socket in
//! large gulps, frees its buffer when the socket goes quiet, and lifts large binary
//! frames out of the stream itself, so that their payload is read once, into the buffer
//! it is relayed from.
//!
//! tungstenite reads at most `read_buffer_size` bytes per call (4 KiB here, so that an
//! idle connection stays under 16 KiB), into a buffer it zeroes before every read. Fed
//! from a burst buffer, a 64 KiB frame cost sixteen reads, 64 KiB of zeroing and 64 KiB
//! of copying (13 % of the relay's CPU in the 64 KiB throughput workload, by `perf`).
//! [`FrameReader`] parses the frame headers as the bytes go by instead:
//! - a large frame (a complete, masked binary frame of at least `large_min` bytes, the
//!   size of tungstenite's read buffer, and at most the message limit, outside a
//!   fragmented message) is read straight from the
//!   socket into a buffer of its own length, never zeroed, and unmasked there in place.
//!   tungstenite is handed an empty masked binary frame in its stead, and
//!   [`FrameReader::on_message`] swaps the payload in when that message comes out of
//!   tungstenite. Both sides count messages in stream order, so the n-th message
//!   tungstenite returns is the n-th the reader saw; a mismatch (a bug) is reported, never
//!   papered over.
//! - everything else (small frames, text, control frames, fragments) goes to
//!   tungstenite byte for byte, through a buffer read in bursts of up to `burst` bytes
//!   while the socket is busy and in reads of the caller's size when it is not. After a
//!   close frame, or anything tungstenite would refuse (reserved bits, an unmasked
//!   frame, a bad opcode), the reader stops parsing and passes everything through, so
//!   tungstenite sees and reports exactly what it did before.
//!
//! A run of large frames costs one read per frame: the read that finishes a payload also
//! takes the next frame's header ([`MAX_HEADER`] bytes), so the next payload is read into
//! its own buffer again.

use std::collections::VecDeque;
use std::io::{self, Cursor};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// The longest frame header a client sends: 2 bytes, an 8-byte length, a 4-byte mask.
pub(crate) const MAX_HEADER: usize = 14;

/// Largest read of a quiet socket, through the stack (see `poll_fill`).
const QUIET_READ: usize = 4096;

/// What tungstenite reads in place of a large frame: FIN and binary, masked (with a key
/// of zeros), empty.
const STAND_IN: [u8; 6] = [0x82, 0x80, 0, 0, 0, 0];

/// Wraps an IO object: reads in bursts of up to `burst` bytes, lifts large binary frames
/// out of the stream (see the module docs); writes pass through.
#[derive(Debug)]
pub struct FrameReader<S> {
    inner: S,
    /// Read from the socket, not yet handed out or lifted. Empty (no allocation) while
    /// the socket idles.
    buf: BytesMut,
    /// Largest read while the socket is busy.
    burst: usize,
    /// Least payload of a frame that is lifted out.
    large_min: usize,
    /// Most payload of a frame that is lifted out: the message limit (larger frames go to
    /// tungstenite, which refuses them).
    large_max: usize,
    /// The last read filled what it was given: more is probably waiting.
    busy: bool,
    /// The last frame was lifted out: read the next header alone, so that a following
    /// large payload starts a buffer of its own.
    after_large: bool,
    state: State,
    /// Bytes of [`STAND_IN`] still to hand out.
    stand_in_left: usize,
    /// Not parsing any more: everything passes through.
    raw: bool,
    /// Inside a fragmented data message (a non-final text or binary frame went by).
    in_fragment: bool,
    /// Messages whose last frame has been parsed, in stream order.
    messages_seen: u64,
    /// Messages tungstenite has returned ([`FrameReader::on_message`]).
    messages_read: u64,
    /// Lifted payloads with the number of their message, oldest first.
    lifted: VecDeque<(u64, Bytes)>,
    /// Frames lifted out so far.
    #[cfg(test)]
    lifted_total: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next byte of `buf` starts a frame.
    Boundary,
    /// This many bytes of the current frame, header included, still go to tungstenite.
    Passing(u64),
    /// A large frame's payload of `len` bytes is being read into `buf`; its header is
    /// consumed.
    Large { mask: [u8; 4], len: usize },
}

/// The message tungstenite returned does not match the frame the reader lifted out in
/// its place: a bug, reported rather than relaying the wrong payload.
#[derive(Debug, thiserror::Error)]
#[error("websocket reader out of step with its frames (message {0})")]
pub struct OutOfStep(u64);

impl<S> FrameReader<S> {
    /// Wraps `inner`: reads of up to `burst` bytes while busy; binary frames of
    /// `large_min..=large_max` payload bytes are lifted out.
    pub fn new(inner: S, burst: usize, large_min: usize, large_max: usize) -> FrameReader<S> {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            burst: burst.max(MAX_HEADER),
            large_min: large_min.max(1),
            large_max,
            busy: false,
            after_large: false,
            state: State::Boundary,
            stand_in_left: 0,
            raw: false,
            in_fragment: false,
            messages_seen: 0,
            messages_read: 0,
            lifted: VecDeque::new(),
            #[cfg(test)]
            lifted_total: 0,
        }
    }

    /// The wrapped IO object.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Stops lifting frames out: from now on every byte read goes to the caller (the
    /// close handshake's drain counts what it reads).
    pub fn pass_through(&mut self) {
        self.raw = true;
    }

    /// Called with every message tungstenite returns, in order: puts a lifted payload
    /// back in place of its stand-in.
    pub fn on_message(&mut self, message: &mut Message) -> Result<(), OutOfStep> {
        self.messages_read += 1;
        match self.lifted.front() {
            Some((n, _)) if *n == self.messages_read => {
                if !matches!(message, Message::Binary(b) if b.is_empty()) {
                    return Err(OutOfStep(self.messages_read));
                }
                if let Some((_, payload)) = self.lifted.pop_front() {
                    *message = Message::Binary(payload);
                }
                Ok(())
            }
            Some((n, _)) if *n < self.messages_read => Err(OutOfStep(*n)),
            _ => Ok(()),
        }
    }

    /// Decides what the frame starting `buf` is. `None`: its header is not all there.
    fn classify(&mut self) -> Option<State> {
        let mut cursor = Cursor::new(&self.buf[..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return None,
            Err(_) => {
                self.raw = true;
                return Some(State::Passing(0));
            }
        };
        let header_len = cursor.position();
        // A length near 2^64 (tungstenite refuses it) must not wrap.
        let passing = State::Passing(header_len.saturating_add(len));
        let Some(mask) = header.mask else {
            self.raw = true;
            return Some(passing);
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            self.raw = true;
            return Some(passing);
        }
        match header.opcode {
            OpCode::Data(Data::Binary)
                if header.is_final
                    && !self.in_fragment
                    && len >= self.large_min as u64
                    && len <= self.large_max as u64 =>
            {
                self.messages_seen += 1;
                self.buf.advance(header_len as usize);
                return Some(State::Large { mask, len: len as usize });
            }
            OpCode::Data(Data::Text | Data::Binary) if !self.in_fragment => {
                if header.is_final {
                    self.messages_seen += 1;
                } else {
                    self.in_fragment = true;
                }
            }
            OpCode::Data(Data::Continue) if self.in_fragment => {
                if header.is_final {
                    self.in_fragment = false;
                    self.messages_seen += 1;
                }
            }
            OpCode::Control(Control::Ping | Control::Pong) if header.is_final && len <= 125 => {
                self.messages_seen += 1;
            }
            // A close, or something tungstenite refuses: its business from here on.
            _ => self.raw = true,
        }
        self.after_large = false;
        Some(passing)
    }
}

impl<S: AsyncRead + Unpin> FrameReader<S> {
    /// Reads at most `limit` more bytes into `buf`, without zeroing them first. `Ok(0)`
    /// is the end of the stream. A quiet socket is read through the stack first, so that
    /// polling it while it has nothing to give allocates nothing.
    fn poll_fill(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() && !self.busy && !matches!(self.state, State::Large { .. }) {
            let mut stack = [MaybeUninit::<u8>::uninit(); QUIET_READ];
            let mut rb = ReadBuf::uninit(&mut stack[..limit.min(QUIET_READ)]);
            let polled = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
            if !matches!(polled, Poll::Ready(Ok(()))) || rb.filled().is_empty() {
                // Quiet, ended or failed: give the buffer back.
                self.buf = BytesMut::new();
            }
            ready!(polled)?;
            self.buf.extend_from_slice(rb.filled());
            return Poll::Ready(Ok(rb.filled().len()));
        }
        self.buf.reserve(limit);
        let mut limited = (&mut self.buf).limit(limit);
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut limited);
        if !matches!(polled, Poll::Ready(Ok(n)) if n > 0) && self.buf.is_empty() {
            // Quiet, ended or failed: give the buffer back.
            self.buf = BytesMut::new();
            self.busy = false;
        }
        polled
    }

    /// How much to read at a frame boundary, `wanted` being what the caller asked for.
    fn boundary_read(&self, wanted: usize) -> usize {
        if self.after_large && !self.raw {
            MAX_HEADER.saturating_sub(self.buf.len()).max(1)
        } else if self.busy {
            self.burst
        } else {
            wanted.max(MAX_HEADER)
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameReader<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Hands out as much as `out` takes and `buf` holds, frame after frame: tungstenite
        // zeroes its buffer once per read, so one read should carry many small frames.
        // Reads the socket only while nothing has been handed out yet.
        let start = out.filled().len();
        loop {
            let handed = out.filled().len() > start;
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.stand_in_left > 0 {
                let from = STAND_IN.len() - this.stand_in_left;
                let n = out.remaining().min(this.stand_in_left);
                out.put_slice(&STAND_IN[from..from + n]);
                this.stand_in_left -= n;
                continue;
            }
            match this.state {
                State::Passing(left) if left > 0 || this.raw => {
                    if this.buf.is_empty() {
                        if handed {
                            return Poll::Ready(Ok(()));
                        }
                        let limit = if this.busy { this.burst } else { out.remaining() };
                        let n = ready!(this.poll_fill(cx, limit))?;
                        if n == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        this.busy = n == limit;
                    }
                    let mut n = out.remaining().min(this.buf.len());
                    if !this.raw {
                        n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                        this.state = State::Passing(left - n as u64);
                    }
                    out.put_slice(&this.buf[..n]);
                    this.buf.advance(n);
                }
                State::Passing(_) => this.state = State::Boundary,
                State::Boundary => {
                    if this.raw {
                        this.state = State::Passing(0);
                        continue;
                    }
                    if let Some(next) = this.classify() {
                        this.state = next;
                        continue;
                    }
                    if handed {
                        return Poll::Ready(Ok(()));
                    }
                    let limit = this.boundary_read(out.remaining());
                    let n = ready!(this.poll_fill(cx, limit))?;
                    if n == 0 {
                        // Ended inside a header: tungstenite gets what there is.
                        this.raw = true;
                        continue;
                    }
                    this.busy = n == limit;
                }
                State::Large { mask, len } => {
                    if this.buf.len() < len {
                        if handed {
                            return Poll::Ready(Ok(()));
                        }
                        // The rest of the payload, and the next frame's header with it.
                        let limit = len - this.buf.len() + MAX_HEADER;
                        if ready!(this.poll_fill(cx, limit))? == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    let mut payload = this.buf.split_to(len);
                    unmask(&mut payload, mask);
                    this.lifted.push_back((this.messages_seen, payload.freeze()));
                    #[cfg(test)]
                    {
                        this.lifted_total += 1;
                    }
                    this.after_large = true;
                    this.busy = true;
                    this.state = State::Boundary;
                    this.stand_in_left = STAND_IN.len();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameReader<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Unmasks `payload` in place (RFC 6455 section 5.3), eight bytes at a time; the
/// compiler turns the word loop into vector instructions.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let masked = u64::from_ne_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    // Chunks of eight keep the mask's phase: the tail starts at mask[0].
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    use super::*;

    const MAX: usize = 1 << 20;

    /// xorshift64: a reproducible stream of test choices without another dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// One client frame as it goes on the wire: masked with a key from `rng`.
    fn client_frame(rng: &mut Rng, opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut frame = match opcode {
            OpCode::Control(Control::Ping) => Frame::ping(payload.to_vec()),
            OpCode::Control(Control::Pong) => Frame::pong(payload.to_vec()),
            OpCode::Data(data) => Frame::message(payload.to_vec(), OpCode::Data(data), fin),
            other => unreachable!("{other:?}"),
        };
        frame.header_mut().mask = Some((rng.next() as u32).to_ne_bytes());
        let mut wire = Vec::new();
        frame.format(&mut wire).unwrap();
        wire
    }

    fn payload(rng: &mut Rng, len: usize) -> Vec<u8> {
        (0..len).map(|_| rng.next() as u8).collect()
    }

    /// A random client session: whole binary and text messages of every length format
    /// (some right at the lifting threshold), empty ones, pings and pongs, and fragmented
    /// binary messages with a ping between their fragments. Returns the bytes on the wire
    /// and the messages a server must read from them.
    fn session(rng: &mut Rng, messages: usize) -> (Vec<u8>, Vec<Message>) {
        let sizes = [0, 1, 125, 126, 4095, 4096, 4097, 65_535, 65_536, 100_000];
        let (mut wire, mut want) = (Vec::new(), Vec::new());
        for _ in 0..messages {
            match rng.below(10) {
                0..=4 => {
                    let len =
                        if rng.below(2) == 0 { sizes[rng.below(sizes.len())] } else { rng.below(150_000) };
                    let body = payload(rng, len);
                    wire.extend(client_frame(rng, OpCode::Data(Data::Binary), true, &body));
                    want.push(Message::binary(body));
                }
                5 => {
                    let len = rng.below(10_000);
                    let text: String = (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
                    wire.extend(client_frame(rng, OpCode::Data(Data::Text), true, text.as_bytes()));
                    want.push(Message::text(text));
                }
                6 => {
                    let len = rng.below(126);
                    let body = payload(rng, len);
                    wire.extend(client_frame(rng, OpCode::Control(Control::Ping), true, &body));
                    want.push(Message::Ping(body.into()));
                }
                7 => {
                    let len = rng.below(126);
                    let body = payload(rng, len);
                    wire.extend(client_frame(rng, OpCode::Control(Control::Pong), true, &body));
                    want.push(Message::Pong(body.into()));
                }
                _ => {
                    let count = 2 + rng.below(3);
                    let parts: Vec<Vec<u8>> = (0..count)
                        .map(|_| {
                            let len = rng.below(20_000);
                            payload(rng, len)
                        })
                        .collect();
                    for (i, part) in parts.iter().enumerate() {
                        let opcode = if i == 0 { Data::Binary } else { Data::Continue };
                        wire.extend(client_frame(rng, OpCode::Data(opcode), i + 1 == parts.len(), part));
                        if i == 0 {
                            wire.extend(client_frame(rng, OpCode::Control(Control::Ping), true, b"mid"));
                            want.push(Message::Ping(Bytes::from_static(b"mid")));
                        }
                    }
                    want.push(Message::binary(parts.concat()));
                }
            }
        }
        (wire, want)
    }

    async fn server(io: tokio::io::DuplexStream) -> WebSocketStream<FrameReader<tokio::io::DuplexStream>> {
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .max_message_size(Some(MAX))
            .max_frame_size(Some(MAX));
        WebSocketStream::from_raw_socket(
            FrameReader::new(io, 64 << 10, 4096, MAX),
            Role::Server,
            Some(config),
        )
        .await
    }

    async fn next(
        ws: &mut WebSocketStream<FrameReader<tokio::io::DuplexStream>>,
    ) -> Option<Result<Message, WsError>> {
        std::future::poll_fn(|cx| crate::ws::poll_next_message(ws, cx)).await
    }

    /// Writes `wire` in chunks of random sizes, sometimes pausing so the reader finds the
    /// socket quiet mid-frame, then closes the stream.
    fn write_in_pieces(
        mut tx: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        wire: Vec<u8>,
        seed: u64,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut rng = Rng(seed);
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let most = if rng.below(4) == 0 { 20 } else { 90_000 };
                let n = rest.len().min(1 + rng.below(most));
                tx.write_all(&rest[..n]).await.unwrap();
                rest = &rest[n..];
                if rng.below(8) == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    }

    /// Whatever the frames and however the bytes are cut, a server reads through the
    /// reader exactly the messages the client sent, in order, large binary ones lifted
    /// out and put back in their place.
    #[tokio::test]
    async fn every_message_arrives_whole_and_in_order_however_the_stream_is_cut() {
        for seed in 1..=24u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let (wire, want) = session(&mut rng, 40);
            let (client_io, server_io) = tokio::io::duplex(256 << 10);
            let (mut client_rx, client_tx) = tokio::io::split(client_io);
            // Pongs the server owes go to the client side: read and dropped.
            tokio::spawn(async move { while client_rx.read(&mut [0u8; 1024]).await.is_ok_and(|n| n > 0) {} });
            let mut ws = server(server_io).await;
            let writer = write_in_pieces(client_tx, wire, seed);
            for (i, want) in want.iter().enumerate() {
                let got = next(&mut ws).await.expect("a message").expect("a valid message");
                assert_eq!(&got, want, "seed {seed}, message {i}");
            }
            writer.await.unwrap();
            let want_lifted =
                want.iter().filter(|m| matches!(m, Message::Binary(b) if b.len() >= 4096)).count();
            assert!(ws.get_ref().lifted_total > 0 && ws.get_ref().lifted_total <= want_lifted, "seed {seed}");
            assert!(ws.get_ref().lifted.is_empty(), "seed {seed}: every lifted payload was handed out");
        }
    }

    /// What tungstenite refuses is refused as before: a large frame without a mask
    /// (protocol error) and one over the message limit (too big) are not lifted out.
    #[tokio::test]
    async fn frames_tungstenite_refuses_reach_it_unchanged() {
        let mut rng = Rng(7);
        let mut unmasked = Vec::new();
        Frame::message(vec![1u8; 10_000], OpCode::Data(Data::Binary), true).format(&mut unmasked).unwrap();
        let too_big = client_frame(&mut rng, OpCode::Data(Data::Binary), true, &vec![2u8; MAX + 1]);
        // Headers claiming lengths near 2^64: nothing wraps, tungstenite refuses them.
        let mut huge = vec![0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
        huge.extend([0u8; 64]);
        let mut huger = huge.clone();
        huger[2] = 0xff;
        for (wire, protocol_error) in [(unmasked, true), (too_big, false), (huge, false), (huger, false)] {
            let (mut client, server_io) = tokio::io::duplex(4 << 20);
            let mut ws = server(server_io).await;
            client.write_all(&wire).await.unwrap();
            let got = next(&mut ws).await.expect("an answer");
            match got {
                Err(WsError::Protocol(_)) if protocol_error => {}
                Err(WsError::Capacity(_)) if !protocol_error => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(ws.get_ref().lifted_total, 0);
        }
    }

    /// After a close frame nothing is lifted: the drain after the close handshake counts
    /// every byte it reads.
    #[tokio::test]
    async fn nothing_is_lifted_after_a_close_frame() {
        let mut rng = Rng(9);
        let mut close = Frame::close(None);
        close.header_mut().mask = Some([1, 2, 3, 4]);
        let mut wire = Vec::new();
        close.format(&mut wire).unwrap();
        wire.extend(client_frame(&mut rng, OpCode::Data(Data::Binary), true, &[3u8; 50_000]));
        let (mut client, server_io) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(server_io, 64 << 10, 4096, MAX);
        client.write_all(&wire).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, wire, "passed through byte for byte");
        assert_eq!(reader.lifted_total, 0);
    }

    /// A stand-in met by anything but an empty binary message is a bug, reported as
    /// such, never relayed as another message's payload.
    #[test]
    fn a_reader_out_of_step_says_so() {
        let mut reader = FrameReader::new(tokio::io::empty(), 64 << 10, 4096, MAX);
        reader.lifted.push_back((1, Bytes::from_static(b"lifted")));
        reader.messages_seen = 1;
        let mut text = Message::text("not the stand-in");
        assert!(reader.on_message(&mut text).is_err());
        assert_eq!(text, Message::text("not the stand-in"));
    }

    /// Once the socket has nothing more to give, the reader holds no buffer.
    #[tokio::test]
    async fn the_buffer_is_freed_when_the_socket_goes_quiet() {
        let (mut client, server_io) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(server_io, 64 << 10, 4096, MAX);
        let mut rng = Rng(3);
        let mut wire = Vec::new();
        for len in [300, 200_000, 10, 3000] {
            wire.extend(client_frame(&mut rng, OpCode::Data(Data::Binary), true, &vec![5u8; len]));
        }
        client.write_all(&wire).await.unwrap();
        // Three small frames passed through (headers of 8, 6 and 8 bytes), a stand-in in
        // place of the large one.
        let want = (8 + 300) + STAND_IN.len() + (6 + 10) + (8 + 3000);
        let mut chunk = [0u8; 4096];
        let mut total = 0;
        while total < want {
            total += reader.read(&mut chunk).await.unwrap();
        }
        assert_eq!(total, want);
        assert_eq!(reader.lifted_total, 1);
        let pending = tokio::time::timeout(Duration::from_millis(20), reader.read(&mut chunk)).await;
        assert!(pending.is_err(), "nothing more to read");
        assert_eq!(reader.buf.capacity(), 0);
        drop(client);
        assert_eq!(reader.read(&mut chunk).await.unwrap(), 0, "the end of the stream reads as 0");
    }

    /// Unmasking in words gives what the byte-wise definition does, at every length.
    #[test]
    fn unmasking_matches_the_definition() {
        let mask = [0x6d, 0xb6, 0xb2, 0x80];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(fast, slow, "length {len}");
        }
    }
}
