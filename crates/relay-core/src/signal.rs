//! A wake-up flag for one consumer task: producers raise it, the consumer polls it.
//!
//! It is what a room connection waits on. Unlike a `tokio::sync::Notify`, polling it
//! builds no future and takes no lock, so a connection task can poll it on every turn
//! of its loop for nothing; and raising it is split from waking, so a producer that
//! queues many messages in a burst wakes each consumer once, after the burst
//! ([`Signal::raise`] under the room lock, [`Signal::wake`] later).

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Raises the flag; true when it was down, in which case the caller owes the
    /// consumer a [`Signal::wake`]. When it was up, a wake-up is already owed or done,
    /// and the consumer has not looked since, so it will see what was queued.
    pub(crate) fn raise(&self) -> bool {
        !self.raised.swap(true, Ordering::AcqRel)
    }

    /// Wakes the consumer if it is waiting.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// Raises the flag and wakes the consumer at once.
    pub(crate) fn notify(&self) {
        if self.raise() {
            self.wake();
        }
    }

    /// Ready (and lowered) if the flag was raised; otherwise registers `cx` for the next
    /// [`Signal::wake`].
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.raised.swap(false, Ordering::AcqRel) { Poll::Ready(()) } else { Poll::Pending }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_raise_while_waiting_is_one_wake_up_and_one_ready() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let signal = Signal::default();
        assert!(signal.poll(&mut cx).is_pending());
        assert!(signal.raise(), "the first raise owes a wake-up");
        assert!(!signal.raise(), "the second does not");
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        signal.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(signal.poll(&mut cx).is_ready());
        assert!(signal.poll(&mut cx).is_pending(), "lowered by the poll that saw it");
        signal.notify();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(signal.poll(&mut cx).is_ready());
    }
}
