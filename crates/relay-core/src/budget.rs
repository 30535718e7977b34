//! The process-wide budget of held bytes ([`Limits::max_held_bytes`]): one counter that
//! rooms' held messages, the mailbox's stored messages and the mailbox connections' send
//! queues all charge, so that what the relay holds for clients is bounded as a whole,
//! not only per room, per namespace and per connection.
//!
//! Each holder charges what it keeps: a payload's length plus its bookkeeping
//! ([`crate::rooms::HELD_MESSAGE_OVERHEAD`], [`crate::mailbox::STORED_MESSAGE_OVERHEAD`],
//! [`crate::mailbox::QUEUED_FRAME_OVERHEAD`]), and gives it back when the bytes go
//! (delivered and acked, taken, expired, the room closed, the connection gone). The
//! counter is one atomic: a reservation is one `fetch_add` (and a `fetch_sub` when it
//! does not fit), never a lock. Send queues, the busiest holders, charge it in steps of
//! [`crate::mailbox::CHARGE_STEP_BYTES`] rather than per frame, since every core
//! touching one cache line per message cost measurable throughput.
//!
//! A payload that arrived in a large read buffer shares it ([`Bytes`] slices are
//! reference-counted views): kept as is, a 100-byte message could keep a whole
//! megabyte-sized buffer alive while being charged 100 bytes. [`detach`] copies a
//! payload shorter than [`COPY_BELOW_BYTES`] into its own allocation before it is held.
//!
//! [`Limits::max_held_bytes`]: crate::Limits::max_held_bytes

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

/// Payloads shorter than this are copied out of the buffer they arrived in before they
/// are held ([`detach`]). A longer payload is held as is (copying every large message
/// would cost throughput): what it can keep alive beyond its own size is the one read
/// buffer it arrived in, which grows no larger than a frame of `max_message_bytes` plus
/// what was read with it.
pub const COPY_BELOW_BYTES: usize = 64 << 10;

/// The shared counter of held bytes and its bound. Cheap to clone; clones share the
/// counter.
#[derive(Clone, Debug)]
pub struct HeldBytes {
    inner: Arc<Counter>,
}

#[derive(Debug)]
struct Counter {
    held: AtomicUsize,
    max: usize,
}

impl HeldBytes {
    /// A budget of `max` bytes, nothing held.
    pub fn new(max: usize) -> HeldBytes {
        HeldBytes { inner: Arc::new(Counter { held: AtomicUsize::new(0), max }) }
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.inner.held.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit under the bound; returns whether they did. One
    /// atomic add (and a subtract when refused). Two racing reservations near the bound
    /// may both be refused, never both granted past it.
    #[inline]
    pub fn try_reserve(&self, n: usize) -> bool {
        let before = self.inner.held.fetch_add(n, Ordering::Relaxed);
        if before.checked_add(n).is_some_and(|total| total <= self.inner.max) {
            return true;
        }
        self.inner.held.fetch_sub(n, Ordering::Relaxed);
        false
    }

    /// Takes `n` bytes whether or not they fit: for what is bounded elsewhere too (a
    /// send queue has its own byte bound) and must be counted, not refused.
    #[inline]
    pub fn charge(&self, n: usize) {
        self.inner.held.fetch_add(n, Ordering::Relaxed);
    }

    /// Gives back `n` bytes taken by [`HeldBytes::try_reserve`] or [`HeldBytes::charge`].
    #[inline]
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.inner.held.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// `payload` in an allocation of its own when it is shorter than [`COPY_BELOW_BYTES`]
/// (a copy), else another view of it: a small held message never keeps a large read
/// buffer alive. Called where a payload is kept until a client acts or a TTL runs out
/// (a room's held messages, the mailbox's stored ones), not on the way through a send
/// queue, which the consumer drains or is closed for (`send_queue_frames`,
/// `--ws-idle-timeout-secs`).
#[inline]
pub fn detach(payload: &Bytes) -> Bytes {
    if payload.len() < COPY_BELOW_BYTES && !payload.is_empty() {
        Bytes::copy_from_slice(payload)
    } else {
        payload.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_bound_and_come_back() {
        let budget = HeldBytes::new(100);
        assert!(budget.try_reserve(60));
        assert!(!budget.try_reserve(41), "60 + 41 is over 100");
        assert_eq!(budget.held(), 60, "a refused reservation takes nothing");
        assert!(budget.try_reserve(40));
        budget.release(100);
        assert_eq!(budget.held(), 0);
        budget.charge(150);
        assert!(!budget.try_reserve(1), "charged past the bound: nothing more fits");
        budget.release(150);
        assert!(!budget.try_reserve(usize::MAX), "no overflow");
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn small_payloads_are_copied_out_of_their_buffer() {
        let buffer = Bytes::from(vec![7u8; 1 << 20]);
        let small = detach(&buffer.slice(10..110));
        assert_eq!(small, buffer.slice(10..110));
        assert_ne!(small.as_ptr(), buffer.slice(10..110).as_ptr(), "copied");
        let large = buffer.slice(0..COPY_BELOW_BYTES);
        assert_eq!(detach(&large).as_ptr(), large.as_ptr(), "a large payload is shared");
    }
}
