//! A read adapter that lets a WebSocket keep a small read buffer when idle and still
//! read a busy socket in large gulps.
//!
//! tungstenite reads at most `read_buffer_size` bytes per system call, and that buffer
//! is allocated (and touched) for every connection, idle or not. A small buffer keeps
//! idle connections cheap (the target is under 16 KiB of RSS each) but turns a 64 KiB
//! mailbox frame into sixteen `recv` calls. [`BurstReader`] sits between the socket and
//! tungstenite: when tungstenite asks for a few KiB and nothing is buffered, it reads up
//! to `burst` bytes into a buffer of its own and hands them out from memory; the buffer
//! is freed as soon as the socket has nothing more to give, so an idle connection holds
//! none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps an IO object; reads in bursts of up to `burst` bytes, writes pass through.
#[derive(Debug)]
pub struct BurstReader<S> {
    inner: S,
    /// `burst` bytes while the socket is busy; empty (no allocation) when it idles.
    buf: Vec<u8>,
    /// Start of the bytes not yet handed out in `buf`.
    pos: usize,
    /// End of the bytes read into `buf`.
    end: usize,
    /// Largest single read from the socket.
    burst: usize,
    /// The last read filled what it was given: more is probably waiting, so the next
    /// read goes through the burst buffer. Cleared when the socket runs dry.
    busy: bool,
}

impl<S> BurstReader<S> {
    /// Wraps `inner`, reading up to `burst` bytes per system call.
    pub fn new(inner: S, burst: usize) -> BurstReader<S> {
        BurstReader { inner, buf: Vec::new(), pos: 0, end: 0, burst, busy: false }
    }

    /// The wrapped IO object.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The socket went quiet: give the burst buffer back.
    fn release(&mut self) {
        self.busy = false;
        self.buf = Vec::new();
        (self.pos, self.end) = (0, 0);
    }

    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.end - self.pos);
        out.put_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BurstReader<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.end {
            this.hand_out(out);
            return Poll::Ready(Ok(()));
        }
        if !this.busy || out.remaining() >= this.burst {
            // Idle or a large caller buffer: read straight into it. Only a read that fills
            // it shows a busy socket, worth the burst buffer next time; allocating on
            // every poll of a quiet socket would cost more than it saves.
            let wanted = out.remaining();
            let before = out.filled().len();
            let polled = Pin::new(&mut this.inner).poll_read(cx, out);
            match &polled {
                Poll::Ready(Ok(())) => this.busy = out.filled().len() - before == wanted,
                Poll::Ready(Err(_)) | Poll::Pending => this.release(),
            }
            return polled;
        }
        if this.buf.len() != this.burst {
            // Zeroed once per busy period, not per read.
            this.buf = vec![0; this.burst];
        }
        let mut rb = ReadBuf::new(&mut this.buf);
        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        (this.pos, this.end) = (0, 0);
        match polled {
            Poll::Ready(Ok(())) => {
                this.end = n;
                this.busy = n == this.burst;
                this.hand_out(out);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.release();
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                this.release();
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BurstReader<S> {
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_are_served_from_one_burst_and_the_buffer_is_freed_when_idle() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut reader = BurstReader::new(rx, 64 << 10);
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        tx.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < data.len() {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        // Nothing more to read: the next read is pending, and the burst buffer is gone.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), reader.read(&mut chunk)).await;
        assert!(pending.is_err());
        assert_eq!(reader.buf.capacity(), 0);
        // End of stream still reads as 0.
        drop(tx);
        assert_eq!(reader.read(&mut chunk).await.unwrap(), 0);
    }
}
