//! TURN over TCP (RFC 5766 section 2.1, client to server; relaying to peers stays UDP).
//! webrtc-rs's server reads datagrams from one [`Conn`]; [`TcpMux`] is such a conn over
//! every accepted TCP connection: a reader task per connection cuts the stream into
//! STUN messages and ChannelData frames (padded to 4 bytes on a stream) and queues
//! them, tagged with the connection's address; what the server sends to that address
//! goes to the connection's writer task. A connection that closes takes its queue
//! with it; its allocation expires at its lifetime, as one whose UDP client went away.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use webrtc_util::Conn;

/// Frames received from all connections and not yet read by the server loop.
const INBOUND_QUEUE: usize = 1024;
/// Frames queued for one connection's writer; past it, frames to it are dropped (as UDP
/// would), so a slow TCP client never stalls the server loop.
const OUTBOUND_QUEUE: usize = 256;
/// A STUN message or ChannelData frame over TCP has at most this many bytes (a 16-bit
/// length plus its header).
const MAX_FRAME: usize = 20 + 0xffff;

/// Every TURN-over-TCP connection, as one datagram conn.
pub(crate) struct TcpMux {
    local: SocketAddr,
    inbound: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    writers: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    stop: watch::Sender<bool>,
}

impl TcpMux {
    /// Starts accepting on `listener`, serving at most `max_connections` at once and
    /// closing a connection silent for `idle_timeout`.
    pub(crate) fn start(
        listener: TcpListener,
        max_connections: usize,
        idle_timeout: Duration,
    ) -> Arc<TcpMux> {
        let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let (stop, _) = watch::channel(false);
        let mux =
            Arc::new(TcpMux { local, inbound: tokio::sync::Mutex::new(rx), writers: Mutex::default(), stop });
        let slots = Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)));
        let accept =
            accept_loop(Arc::downgrade(&mux), listener, tx, slots, idle_timeout, mux.stop.subscribe());
        tokio::spawn(accept);
        mux
    }

    /// Stops accepting and ends every connection.
    pub(crate) fn shut(&self) {
        self.stop.send_replace(true);
        self.writers.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

async fn accept_loop(
    mux: std::sync::Weak<TcpMux>,
    listener: TcpListener,
    inbound: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    slots: Arc<Semaphore>,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("TURN tcp accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let Some(mux) = mux.upgrade() else { return };
        let _ = stream.set_nodelay(true);
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        mux.writers.lock().unwrap_or_else(PoisonError::into_inner).insert(peer, out_tx);
        let (inbound, stop) = (inbound.clone(), stop.clone());
        let weak = Arc::downgrade(&mux);
        tokio::spawn(async move {
            serve_connection(stream, peer, inbound, out_rx, idle_timeout, stop).await;
            if let Some(mux) = weak.upgrade() {
                mux.writers.lock().unwrap_or_else(PoisonError::into_inner).remove(&peer);
            }
            drop(slot);
        });
    }
}

/// Moves frames between one connection and the mux until either side ends.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    inbound: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    mut outbound: mpsc::Receiver<Vec<u8>>,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let read = async {
        loop {
            let mut header = [0u8; 4];
            tokio::time::timeout(idle_timeout, reader.read_exact(&mut header))
                .await
                .map_err(|_| std::io::ErrorKind::TimedOut)??;
            let len = frame_len(header).ok_or(std::io::ErrorKind::InvalidData)?;
            let mut frame = vec![0u8; len];
            frame[..4].copy_from_slice(&header);
            tokio::time::timeout(idle_timeout, reader.read_exact(&mut frame[4..]))
                .await
                .map_err(|_| std::io::ErrorKind::TimedOut)??;
            if inbound.send((frame, peer)).await.is_err() {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let write = async {
        while let Some(frame) = outbound.recv().await {
            writer.write_all(&frame).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        r = read => if let Err(e) = r { tracing::debug!(%peer, "TURN tcp read: {e}") },
        r = write => if let Err(e) = r { tracing::debug!(%peer, "TURN tcp write: {e}") },
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// The length of the frame whose first four bytes are `header`: a STUN message (top two
/// bits 00: 20-byte header plus its length) or ChannelData (top bits 01: 4-byte header
/// plus its length, padded to 4). `None` for anything else.
fn frame_len(header: [u8; 4]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let total = match header[0] >> 6 {
        0b00 => 20 + len,
        0b01 => 4 + len.next_multiple_of(4),
        _ => return None,
    };
    (total <= MAX_FRAME).then_some(total)
}

#[async_trait]
impl Conn for TcpMux {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("a TURN tcp listener does not connect".to_owned()))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut inbound = self.inbound.lock().await;
        let Some((frame, peer)) = inbound.recv().await else {
            return Err(webrtc_util::Error::Other("the TURN tcp listener closed".to_owned()));
        };
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok((n, peer))
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("a TURN tcp listener sends to an address".to_owned()))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let writer = self.writers.lock().unwrap_or_else(PoisonError::into_inner).get(&target).cloned();
        if let Some(writer) = writer {
            // Full queue or closed connection: dropped, as a datagram would be.
            let _ = writer.try_send(buf.to_vec());
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.shut();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::frame_len;

    #[test]
    fn frames_are_cut_by_their_headers() {
        // A Binding request with 8 bytes of attributes.
        assert_eq!(frame_len([0x00, 0x01, 0x00, 0x08]), Some(28));
        // ChannelData 0x4000 with 5 bytes of data, padded to 8 on a stream.
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x05]), Some(12));
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x08]), Some(12));
        // Neither STUN nor ChannelData.
        assert_eq!(frame_len([0x80, 0x00, 0x00, 0x00]), None);
        assert_eq!(frame_len([0xc0, 0x00, 0x00, 0x00]), None);
    }
}
