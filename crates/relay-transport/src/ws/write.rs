//! The vectored write of binary frames that both connection kinds use for their data.

use futures_util::SinkExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Writes binary messages, each given as one or more parts laid end to end, straight to
/// the socket under `ws` with vectored writes, then flushes: the payloads are never
/// copied into tungstenite's write buffer. Headers are formatted by tungstenite's own
/// [`FrameHeader`]; whatever tungstenite still holds (a pong, say) is flushed first, and
/// every byte is written before this returns, so frames never interleave.
///
/// A server frame is a header of 2 to 10 bytes followed by the unmasked payload (RFC
/// 6455 section 5.2); `messages` yields the parts of each message.
///
/// `torn` is set while bytes of the batch are on the wire but not all of them: while it
/// is, anything else written to the socket (a close frame) would be read as the rest of
/// a frame. A caller that gives up waiting can finish this future first, or drop the
/// socket without writing anything more.
pub(crate) async fn write_binary_vectored<'a, S, I>(
    ws: &mut WebSocketStream<S>,
    messages: I,
    torn: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    I: IntoIterator<Item = &'a [&'a [u8]]>,
{
    use tokio::io::AsyncWriteExt;

    ws.flush().await.map_err(std::io::Error::other)?;
    let messages: Vec<&[&[u8]]> = messages.into_iter().collect();
    let header = FrameHeader { opcode: OpCode::Data(Data::Binary), ..FrameHeader::default() };
    let mut headers = Vec::with_capacity(messages.len() * 10);
    let mut ends = Vec::with_capacity(messages.len());
    for parts in &messages {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        header.format(len as u64, &mut headers).map_err(std::io::Error::other)?;
        ends.push(headers.len());
    }
    let mut slices = Vec::with_capacity(messages.len() * 3);
    let mut start = 0;
    for (parts, end) in messages.iter().zip(ends) {
        slices.push(std::io::IoSlice::new(&headers[start..end]));
        slices.extend(parts.iter().filter(|p| !p.is_empty()).map(|p| std::io::IoSlice::new(p)));
        start = end;
    }
    let io = ws.get_mut();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        // At most IOV_MAX (1024) slices per call.
        let take = rest.len().min(1024);
        let n = io.write_vectored(&rest[..take]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut rest, n);
        torn.store(!rest.is_empty(), std::sync::atomic::Ordering::Relaxed);
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// Messages of every length format (7-bit, 16-bit, 64-bit), one of several parts and
    /// one empty, after a text frame tungstenite still held, through a pipe small enough
    /// that every write is partial: the client reads them all, whole and in order.
    #[tokio::test]
    async fn vectored_messages_arrive_whole_and_in_order_after_what_tungstenite_held() {
        let (server_io, client_io) = tokio::io::duplex(1024);
        let mut server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let sizes = [0usize, 1, 125, 126, 65_535, 65_536, 200_000];
        let payloads: Vec<Vec<u8>> =
            sizes.iter().map(|&n| (0..n).map(|i| (i % 251) as u8).collect()).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 1 + sizes.len() + 1 {
                got.push(client.next().await.expect("a message").expect("a valid frame"));
            }
            got
        });
        server.feed(Message::text("first")).await.unwrap();
        let parts: Vec<Vec<&[u8]>> = payloads.iter().map(|p| vec![&p[..]]).collect();
        let split = [&payloads[4][..10], &payloads[4][10..]];
        let messages = parts.iter().map(|p| &p[..]).chain(std::iter::once(&split[..]));
        let torn = std::sync::atomic::AtomicBool::new(false);
        write_binary_vectored(&mut server, messages, &torn).await.unwrap();
        assert!(!torn.load(std::sync::atomic::Ordering::Relaxed));
        let got = reader.await.unwrap();
        assert_eq!(got[0], Message::text("first"));
        for (msg, want) in got[1..].iter().zip(payloads.iter().chain(std::iter::once(&payloads[4]))) {
            assert_eq!(msg, &Message::binary(want.clone()));
        }
    }

    /// A write cut off by a timeout while the peer does not read leaves `torn` set, so
    /// the caller knows not to write a close frame after half a frame.
    #[tokio::test]
    async fn a_write_cut_off_mid_frame_is_torn() {
        let (server_io, _client_io) = tokio::io::duplex(1024);
        let mut server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let payload = vec![7u8; 10_000];
        let parts = [&payload[..]];
        let torn = std::sync::atomic::AtomicBool::new(false);
        let write = write_binary_vectored(&mut server, [&parts[..]], &torn);
        let cut = tokio::time::timeout(std::time::Duration::from_millis(50), write).await;
        assert!(cut.is_err(), "nobody reads: the write cannot finish");
        assert!(torn.load(std::sync::atomic::Ordering::Relaxed));
    }
}
