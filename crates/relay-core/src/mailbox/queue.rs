//! The bounded queue of frames waiting to go out on one connection. Producers are other
//! connections publishing (under a namespace shard's lock); the consumer is the connection's
//! own task. A producer that finds the queue full marks the connection as a slow
//! consumer and drops what it held, so a reader that stalls never grows memory. The
//! queue is bounded in frames and in bytes (`send_queue_frames`, `send_queue_bytes`),
//! and what it holds is charged to the process-wide held-bytes budget (each frame's
//! length plus [`QUEUED_FRAME_OVERHEAD`]) until it is taken or dropped. The charge is
//! taken in steps of at least [`CHARGE_STEP_BYTES`] and given back when the queue
//! empties, so a busy queue touches the shared counter once per step rather than once
//! per frame: the budget over-counts by less than one step per non-empty queue, and an
//! empty queue holds nothing.
//!
//! The queue also keeps the IDs its connection waits for, under the same lock: the
//! asking connection adds one ([`ConnQueue::add_ask`], which enforces
//! `max_pending_asks` and one waiting ask per ID), and whoever answers it takes it out
//! while queuing the answer ([`ConnQueue::answer`]), so a namespace shard keeps no
//! per-connection index and an answer takes no lock beyond the one it already needs. On
//! disconnect, [`ConnQueue::close`] hands the set over, to withdraw exactly those asks,
//! and refuses every later frame, so a one-receiver message is never given to a
//! connection that is going away.
//!
//! The consumer's waker sits under the queue's own lock. A producer that turns the queue
//! from empty to non-empty takes it out and hands it back to its caller instead of waking
//! it there: the caller wakes it after releasing the shard lock, or, for a burst of
//! frames, once after the whole burst ([`super::MailboxConn::handle_frame_deferred`]), so
//! the receiver wakes to many frames and writes them with one system call.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{IdHasher, MailboxError, MessageId};
use crate::budget::HeldBytes;

/// What a queued frame costs against the held-bytes budget on top of its length: its
/// slot in the queue.
pub const QUEUED_FRAME_OVERHEAD: usize = std::mem::size_of::<Bytes>();

/// The least a queue takes from the held-bytes budget at once: a queue charges the
/// budget ahead of its frames by up to this much, and gives everything back when empty.
/// The shared counter is one cache line for every core; charged per frame, it cost
/// small-frame throughput measurably (docs/BENCHMARKS.md).
pub const CHARGE_STEP_BYTES: usize = 16 << 10;

pub(super) struct ConnQueue {
    state: Mutex<QueueState>,
    /// Woken (all waiters) when the queue turns slow, for a writer blocked on a stalled
    /// socket rather than waiting in `poll_recv_many`.
    slow_notify: Notify,
    /// Frames held before the connection counts as a slow consumer.
    capacity: usize,
    /// Bytes (frames' lengths) held before the connection counts as a slow consumer.
    max_bytes: usize,
    /// The process-wide budget the queued frames are charged to.
    budget: HeldBytes,
}

struct QueueState {
    frames: VecDeque<Bytes>,
    /// Sum of the queued frames' lengths.
    bytes: usize,
    /// Taken from the held-bytes budget: at least the cost of what is queued, at most
    /// that plus [`CHARGE_STEP_BYTES`]; zero when the queue is empty.
    charged: usize,
    slow: bool,
    /// The connection is going away ([`ConnQueue::close`]): nothing more is queued.
    closed: bool,
    /// The IDs this connection has an ask waiting for, in every shard of its namespace:
    /// at most `max_pending_asks`.
    asked: HashSet<MessageId, IdHasher>,
    /// The consumer, registered when it found the queue empty; taken by the push that
    /// makes it non-empty (or the one that makes it slow).
    waker: Option<Waker>,
}

/// What a push did.
pub(super) enum Pushed {
    /// Queued; the consumer, if it was waiting, must be woken with this waker.
    Queued(Option<Waker>),
    /// Refused: the connection is (or just became) a slow consumer. Its consumer has
    /// been woken already.
    Slow,
    /// Refused: the connection is going away.
    Closed,
}

impl ConnQueue {
    pub(super) fn new(capacity: usize, max_bytes: usize, budget: HeldBytes) -> ConnQueue {
        ConnQueue {
            state: Mutex::new(QueueState {
                frames: VecDeque::new(),
                bytes: 0,
                charged: 0,
                slow: false,
                closed: false,
                asked: HashSet::default(),
                waker: None,
            }),
            slow_notify: Notify::new(),
            capacity: capacity.max(1),
            max_bytes,
            budget,
        }
    }

    /// What `frames` frames of `bytes` bytes cost against the budget.
    fn cost(frames: usize, bytes: usize) -> usize {
        bytes + frames * QUEUED_FRAME_OVERHEAD
    }

    /// Takes up to `n` frames off the front into `out`, giving their bytes back: all of
    /// the charge once the queue is empty, else what exceeds the rest by more than a step.
    fn take(&self, state: &mut QueueState, out: &mut Vec<Bytes>, n: usize) {
        let bytes: usize = state.frames.iter().take(n).map(Bytes::len).sum();
        out.extend(state.frames.drain(..n));
        state.bytes -= bytes;
        let cost = Self::cost(state.frames.len(), state.bytes);
        if state.frames.is_empty() || state.charged > cost + CHARGE_STEP_BYTES {
            self.budget.release(state.charged - cost);
            state.charged = cost;
        }
    }

    /// Gives back the whole charge of a queue that was just emptied.
    fn release_all(&self, state: &mut QueueState) {
        self.budget.release(std::mem::take(&mut state.charged));
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame`. The caller wakes the waker it gets back, at once or after a burst.
    pub(super) fn push(&self, frame: Bytes) -> Pushed {
        self.push_locked(self.lock(), frame)
    }

    /// Queues `frame`, the answer to this connection's waiting ask for `id`, and forgets
    /// the ask (whether or not the frame could be queued).
    pub(super) fn answer(&self, id: &MessageId, frame: Bytes) -> Pushed {
        let mut state = self.lock();
        state.asked.remove(id);
        self.push_locked(state, frame)
    }

    /// Records an ask for `id` about to wait: `Ok(false)` if one waits already (one
    /// delivery per connection), an error if `max` wait already.
    pub(super) fn add_ask(&self, id: &MessageId, max: usize) -> Result<bool, MailboxError> {
        let mut state = self.lock();
        if state.asked.contains(id) {
            return Ok(false);
        }
        if state.asked.len() >= max {
            return Err(MailboxError::TooManyAsks { max });
        }
        Ok(state.asked.insert(*id))
    }

    /// Forgets the waiting ask for `id` (it expired, unanswered).
    pub(super) fn forget_ask(&self, id: &MessageId) {
        self.lock().asked.remove(id);
    }

    /// The connection is going away: refuses every later frame and returns the IDs it
    /// still waits for, for the caller to withdraw.
    pub(super) fn close(&self) -> HashSet<MessageId, IdHasher> {
        let mut state = self.lock();
        state.closed = true;
        std::mem::take(&mut state.asked)
    }

    fn push_locked(&self, mut state: MutexGuard<'_, QueueState>, frame: Bytes) -> Pushed {
        if state.closed {
            return Pushed::Closed;
        }
        if state.slow {
            return Pushed::Slow;
        }
        // One frame is always taken into an empty queue, whatever its size (a frame is
        // bounded by `max_message_bytes`).
        let over_bytes = !state.frames.is_empty() && state.bytes + frame.len() > self.max_bytes;
        if state.frames.len() >= self.capacity || over_bytes {
            state.slow = true;
            let dropped = std::mem::take(&mut state.frames);
            state.bytes = 0;
            self.release_all(&mut state);
            let waker = state.waker.take();
            drop(state);
            drop(dropped); // freed outside the lock
            if let Some(w) = waker {
                w.wake();
            }
            self.slow_notify.notify_waiters();
            return Pushed::Slow;
        }
        state.bytes += frame.len();
        let cost = Self::cost(state.frames.len() + 1, state.bytes);
        if cost > state.charged {
            let step = (cost - state.charged).max(CHARGE_STEP_BYTES);
            self.budget.charge(step);
            state.charged += step;
        }
        state.frames.push_back(frame);
        Pushed::Queued(state.waker.take())
    }

    pub(super) fn is_slow(&self) -> bool {
        self.lock().slow
    }

    /// Resolves once the connection is a slow consumer.
    pub(super) async fn wait_slow(&self) {
        loop {
            let mut notified = std::pin::pin!(self.slow_notify.notified());
            notified.as_mut().enable();
            if self.is_slow() {
                return;
            }
            notified.await;
        }
    }

    /// Moves up to `max` queued frames into `out` without waiting.
    pub(super) fn try_recv_many(&self, out: &mut Vec<Bytes>, max: usize) -> Result<usize, MailboxError> {
        let mut state = self.lock();
        if state.slow {
            return Err(MailboxError::SlowConsumer);
        }
        let n = state.frames.len().min(max);
        self.take(&mut state, out, n);
        Ok(n)
    }

    /// Moves up to `max` (at least one) queued frames into `out`, or registers `cx` to be
    /// woken when one is queued. A frame is either moved into `out` or still queued.
    pub(super) fn poll_recv_many(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Bytes>,
        max: usize,
    ) -> Poll<Result<usize, MailboxError>> {
        let mut state = self.lock();
        if state.slow {
            return Poll::Ready(Err(MailboxError::SlowConsumer));
        }
        if state.frames.is_empty() {
            match &mut state.waker {
                Some(w) => w.clone_from(cx.waker()),
                None => state.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        let n = state.frames.len().min(max.max(1));
        self.take(&mut state, out, n);
        Poll::Ready(Ok(n))
    }
}

impl Drop for ConnQueue {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.budget.release(state.charged);
    }
}
