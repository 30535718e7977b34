//! The bounded queue of frames waiting to go out on one connection. Producers are other
//! connections publishing (under their namespace lock); the consumer is the connection's
//! own task. A producer that finds the queue full marks the connection as a slow
//! consumer and drops what it held, so a reader that stalls never grows memory.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

use super::MailboxError;

pub(super) struct ConnQueue {
    state: Mutex<QueueState>,
    /// Woken when the queue goes from empty to non-empty, or turns slow. One consumer,
    /// so `notify_one` stores a permit when it is not waiting and no wakeup is lost.
    notify: Notify,
    /// Woken (all waiters) when the queue turns slow, for a writer blocked on a stalled
    /// socket rather than waiting in `recv_many`.
    slow_notify: Notify,
    /// Frames held before the connection counts as a slow consumer.
    capacity: usize,
}

struct QueueState {
    frames: VecDeque<Bytes>,
    slow: bool,
}

impl ConnQueue {
    pub(super) fn new(capacity: usize) -> ConnQueue {
        ConnQueue {
            state: Mutex::new(QueueState { frames: VecDeque::new(), slow: false }),
            notify: Notify::new(),
            slow_notify: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame`; false when the connection is (or just became) a slow consumer.
    pub(super) fn push(&self, frame: Bytes) -> bool {
        let mut state = self.lock();
        if state.slow {
            return false;
        }
        if state.frames.len() >= self.capacity {
            state.slow = true;
            state.frames = VecDeque::new();
            drop(state);
            self.notify.notify_one();
            self.slow_notify.notify_waiters();
            return false;
        }
        let was_empty = state.frames.is_empty();
        state.frames.push_back(frame);
        drop(state);
        if was_empty {
            self.notify.notify_one();
        }
        true
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
        out.extend(state.frames.drain(..n));
        Ok(n)
    }

    /// Waits until at least one frame is queued, then moves up to `max` into `out`.
    /// Cancel-safe: a frame is either moved into `out` or still queued.
    pub(super) async fn recv_many(&self, out: &mut Vec<Bytes>, max: usize) -> Result<usize, MailboxError> {
        let max = max.max(1);
        loop {
            let n = self.try_recv_many(out, max)?;
            if n > 0 {
                return Ok(n);
            }
            self.notify.notified().await;
        }
    }
}
