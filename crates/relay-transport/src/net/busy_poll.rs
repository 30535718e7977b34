//! Opt-in busy polling (`ServerConfig::busy_poll`, `--busy-poll-us`): while WebSocket
//! traffic flows, the runtime's workers keep polling for I/O instead of sleeping, so the
//! next frame is picked up at once rather than after a worker (and, on a VM, its halted
//! CPU) is woken. Compiled only with the `busy-poll` cargo feature of relay-transport
//! (on by default); without it `AppState::frames_arrived` and `frames_written` are empty
//! and a nonzero `busy_poll` is refused at start.
//!
//! How: one task per worker, the spinners, sleep until a connection has written frames
//! out ([`BusyPoll::frames_written`]: after the write, so waking them costs the message
//! nothing). They then yield in a loop, and keep at it while connections report frames
//! arriving ([`BusyPoll::frames_arrived`], one load on the hot path).
//!
//! What this assumes of tokio's multi-thread scheduler (checked by the test
//! `tokio_dispatches_io_to_workers_that_yield_without_parking_them`, which fails if a
//! tokio upgrade breaks them):
//!
//! - A multi-thread runtime has one I/O driver (one `epoll` instance), held by whichever
//!   worker parks on it: a worker with nothing to run parks blocked in `epoll_wait`,
//!   holding the driver, and the other workers cannot poll it meanwhile. So there is one
//!   spinner per worker: a single spinner would find the driver taken by a parked worker
//!   and poll nothing.
//! - A task that yields (`tokio::task::yield_now`) is deferred, and a worker with
//!   deferred tasks does not park: it polls the I/O driver without blocking
//!   (`epoll_wait` with a zero timeout), dispatches the readiness it finds, then runs
//!   the deferred task again. So a worker running a spinner never parks, and readiness
//!   is dispatched within a loop turn.
//! - Spinners run only when a worker has nothing else: a yielded task goes behind every
//!   task already queued, so busy workers run connections first.
//! - The worker count is `tokio::runtime::Handle::current().metrics().num_workers()`,
//!   read once when the spinners start ([`BusyPoll::start`]).
//!
//! Spinning must not take the CPU from other threads (a co-located service, or a load
//! generator on the same machine): each turn also calls `sched_yield`, so a thread
//! waiting for this CPU runs first. But a worker that yielded to CPU-bound work waits a
//! whole time slice for its turn, where a sleeping one would have been woken at once;
//! so a spinner stops when one `sched_yield` lasted [`LONG_YIELD`] (a thread ran a
//! slice), or when its CPU went to other threads for more than four fifths of a spell
//! (judged once a spell is [`JUDGE_AFTER`] long), and stays asleep for
//! [`CONTENDED_BACKOFF`], doubled each time the next spell finds the CPU wanted again
//! (up to [`MAX_BACKOFF`]), so on a busy machine it is mostly off.
//! Once no frame has arrived for the configured window, the spinners sleep again. So
//! the cost is bounded: a worker spins only while frames arrive less than a window
//! apart, plus one window after the last, and only while its CPU is not wanted
//! elsewhere.
//!
//! What it buys is measured by `relay-bench --workloads push-latency` and recorded in
//! `docs/BENCHMARKS.md`; `relay_busy_poll_seconds_total` and
//! `relay_busy_poll_backoffs_total` on `/metrics` say what it costs.

use std::future::{Future, poll_fn};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

pub(crate) use super::MAX_BUSY_POLL;

/// How long a spinner that found its CPU wanted by other threads stays asleep; doubled
/// each time the next spell finds it wanted again, up to [`MAX_BACKOFF`].
const CONTENDED_BACKOFF: Duration = Duration::from_millis(10);

/// The longest back-off: a spinner on a CPU that stays busy tries once a second.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The back-off after `current`, when the spell after it found the CPU wanted again.
fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// One `sched_yield` that lasted this long handed the CPU to a thread that ran a whole
/// time slice: CPU-bound work, behind which a spinning worker waits a slice for its turn
/// where a sleeping one would have been woken at once. Such a spell stops at once.
const LONG_YIELD: Duration = Duration::from_micros(500);

/// Spin turns between two checks for contention.
const CHECK_EVERY: u32 = 64;

/// A spell is judged for contention only once it is this long, so a few turns in
/// which another thread happened to run do not stop it.
const JUDGE_AFTER: Duration = Duration::from_millis(1);

/// Whether a spell in which `yielded` of `elapsed` went to other threads (inside
/// `sched_yield`) found the CPU wanted elsewhere: more than four fifths of a spell of
/// at least [`JUDGE_AFTER`]. A load generator or a neighbour that is busy between
/// messages (half the time, say) does not stop the spinner; one that wants the CPU
/// all the time does.
fn contended(yielded: Duration, elapsed: Duration) -> bool {
    elapsed >= JUDGE_AFTER && yielded * 5 > elapsed * 4
}

/// The shared part of the spinners: what connections signal and what `/metrics` reads.
pub(crate) struct BusyPoll {
    window: Duration,
    /// When the spinners started, the origin of `last_active`.
    origin: Instant,
    /// Set by connections after a burst of frames; cleared by the first spinner to see it.
    active: AtomicBool,
    /// Nanoseconds after `origin` at which a spinner last saw `active`.
    last_active: AtomicU64,
    /// How many spinners sleep, waiting for `active`.
    sleeping: AtomicUsize,
    /// One per spinner, made when they are spawned (one per worker of the runtime that
    /// serves), so a server with several listeners runs one set.
    spinners: OnceLock<Box<[Spinner]>>,
    /// Time spent spinning, summed over the spinners, in microseconds, for `/metrics`.
    spun_us: AtomicU64,
    /// Spells cut short because the CPU was wanted by other threads.
    backoffs: AtomicU64,
}

/// One spinner's wake-up.
#[derive(Default)]
struct Spinner {
    asleep: AtomicBool,
    waker: AtomicWaker,
}

impl BusyPoll {
    /// Spinners that poll for up to `window` after the last frame; `None` when the
    /// window is zero (busy polling off). Nothing spins until [`BusyPoll::start`].
    pub(crate) fn new(window: Duration) -> Option<Arc<BusyPoll>> {
        (!window.is_zero()).then(|| {
            Arc::new(BusyPoll {
                window: window.min(MAX_BUSY_POLL),
                origin: Instant::now(),
                active: AtomicBool::new(false),
                last_active: AtomicU64::new(0),
                sleeping: AtomicUsize::new(0),
                spinners: OnceLock::new(),
                spun_us: AtomicU64::new(0),
                backoffs: AtomicU64::new(0),
            })
        })
    }

    /// A connection handled a burst of frames: keep spinning. Wakes no sleeping spinner:
    /// waking one schedules a task (and, for the second, another worker) ahead of the
    /// connection the frames were for, which would put that cost on the message's path.
    pub(crate) fn frames_arrived(&self) {
        // Store only on a change, so while the spinners are awake the cache lines stay
        // shared and the hot path is one load.
        if !self.active.load(Relaxed) {
            self.active.store(true, SeqCst);
        }
    }

    /// A connection wrote frames out: keep spinning, or start, waking the sleeping
    /// spinners. Called after the write, so the wake-ups cost the message nothing.
    pub(crate) fn frames_written(&self) {
        if !self.active.load(Relaxed) {
            // SeqCst pairs with `sleep`: either it sees `active`, or this sees `asleep`.
            self.active.store(true, SeqCst);
        }
        if self.sleeping.load(SeqCst) > 0 {
            for spinner in self.spinners.get().into_iter().flatten() {
                if spinner.asleep.load(SeqCst) && spinner.asleep.swap(false, SeqCst) {
                    self.sleeping.fetch_sub(1, SeqCst);
                    spinner.waker.wake();
                }
            }
        }
    }

    /// Microseconds spent spinning since start, summed over the spinners.
    pub(crate) fn spun_micros(&self) -> u64 {
        self.spun_us.load(Relaxed)
    }

    /// Spells cut short since start because the CPU was wanted by other threads.
    pub(crate) fn backoffs(&self) -> u64 {
        self.backoffs.load(Relaxed)
    }

    /// Spawns the spinners on the current runtime, one per worker, once per server;
    /// they end when `stop` resolves.
    pub(crate) fn start<F>(self: &Arc<Self>, stop: impl Fn() -> F)
    where
        F: Future<Output = bool> + Send + 'static,
    {
        let workers = tokio::runtime::Handle::current().metrics().num_workers().max(1);
        if self.spinners.set((0..workers).map(|_| Spinner::default()).collect()).is_err() {
            return;
        }
        for index in 0..workers {
            let busy_poll = self.clone();
            let stop = stop();
            tokio::spawn(async move {
                tokio::select! {
                    biased;
                    _ = stop => {}
                    () = busy_poll.run(index) => {}
                }
            });
        }
    }

    fn nanos_since_origin(&self, at: Instant) -> u64 {
        at.duration_since(self.origin).as_nanos() as u64
    }

    async fn run(&self, index: usize) {
        let window = self.window.as_nanos() as u64;
        let mut backoff = CONTENDED_BACKOFF;
        loop {
            self.sleep(index).await;
            let start = Instant::now();
            self.last_active.fetch_max(self.nanos_since_origin(start), Relaxed);
            let mut yielded = Duration::ZERO;
            let mut turns = 0u32;
            let contended = loop {
                // Lets the worker poll the I/O driver (without blocking) and run what it woke.
                tokio::task::yield_now().await;
                // Lets any other thread waiting for this CPU run first.
                let before = Instant::now();
                std::thread::yield_now();
                let now = Instant::now();
                let took = now - before;
                yielded += took;
                turns += 1;
                if took >= LONG_YIELD
                    || (turns.is_multiple_of(CHECK_EVERY) && contended(yielded, now - start))
                {
                    break true;
                }
                let now = self.nanos_since_origin(now);
                if self.active.load(Relaxed) && self.active.swap(false, Relaxed) {
                    self.last_active.fetch_max(now, Relaxed);
                } else if now.saturating_sub(self.last_active.load(Relaxed)) >= window {
                    break false;
                }
            };
            self.spun_us.fetch_add(start.elapsed().as_micros() as u64, Relaxed);
            if contended {
                self.backoffs.fetch_add(1, Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
            } else {
                backoff = CONTENDED_BACKOFF;
            }
        }
    }

    /// Resolves once a connection wrote frames (at once if frames arrived or were written
    /// since the last spell ended).
    async fn sleep(&self, index: usize) {
        let spinner = &self.spinners.get().expect("spinners exist once started")[index];
        let mut counted = false;
        poll_fn(|cx| {
            spinner.waker.register(cx.waker());
            if !counted {
                counted = true;
                spinner.asleep.store(true, SeqCst);
                self.sleeping.fetch_add(1, SeqCst);
            } else if !spinner.asleep.load(SeqCst) {
                return Poll::Ready(()); // `frames_written` woke it (and uncounted it)
            }
            // SeqCst pairs with `frames_written`: either this sees `active`, or it sees
            // `sleeping` and wakes this spinner.
            if self.active.load(SeqCst) {
                if spinner.asleep.swap(false, SeqCst) {
                    self.sleeping.fetch_sub(1, SeqCst);
                }
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_window_is_off() {
        assert!(BusyPoll::new(Duration::ZERO).is_none());
        let capped = BusyPoll::new(Duration::from_secs(1)).unwrap();
        assert_eq!(capped.window, MAX_BUSY_POLL);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spins_while_frames_arrive_and_sleeps_after_the_window() {
        let poll = BusyPoll::new(Duration::from_millis(20)).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = futures_util::FutureExt::shared(async move { stop_rx.await.is_ok() });
        poll.start(|| stop.clone());
        // Asleep before any traffic: nothing spun.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(poll.spun_micros(), 0);
        assert_eq!(poll.sleeping.load(SeqCst), 2, "the spinners sleep until a frame arrives");

        // Frames 5 ms apart for 100 ms keep it spinning; it stops one window later.
        let begun = Instant::now();
        for _ in 0..20 {
            poll.frames_written();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while poll.sleeping.load(SeqCst) < 2 {
            assert!(Instant::now() < deadline, "the spinner never went back to sleep");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let spun = Duration::from_micros(poll.spun_micros());
        assert!(spun > Duration::ZERO, "frames arrived but nothing spun");
        if poll.backoffs() == 0 {
            // Unless the machine was busy enough to make a spinner back off.
            assert!(spun >= Duration::from_millis(100), "spun {spun:?}: it must span the traffic");
        }
        assert!(spun <= 2 * begun.elapsed(), "spun {spun:?}: more than two spinners for the whole test");

        // Stays asleep without traffic; a second start spawns nothing more.
        poll.start(std::future::pending::<bool>);
        let before = poll.spun_micros();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(poll.spun_micros(), before);
        drop(stop_tx);
    }

    /// The scheduler behaviour the module doc lists, on the tokio in the lock file: the
    /// runtime reports the worker count the spinners are sized by, and with a yielding
    /// spinner on every worker, readiness of a socket (a byte written from outside the
    /// runtime) still reaches the task reading it, within a bounded time and without a
    /// worker parking. If yielding workers stopped polling the I/O driver, the read
    /// would only be dispatched by a parked worker (counted by `worker_park_count`), or
    /// never.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokio_dispatches_io_to_workers_that_yield_without_parking_them() {
        use std::io::Write;
        use tokio::io::AsyncReadExt;

        const ATTEMPTS: usize = 20;
        let metrics = tokio::runtime::Handle::current().metrics();
        assert_eq!(metrics.num_workers(), 2, "the spinners are sized by num_workers");
        let parks = || (0..metrics.num_workers()).map(|w| metrics.worker_park_count(w)).sum::<u64>();

        let stop = Arc::new(AtomicBool::new(false));
        let spinners: Vec<_> = (0..metrics.num_workers())
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    while !stop.load(Relaxed) {
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let (mut writer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
        reader.set_nonblocking(true).unwrap();
        let mut reader = tokio::net::UnixStream::from_std(reader).unwrap();
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let read_task = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            while reader.read_exact(&mut byte).await.is_ok() {
                if seen_tx.send(Instant::now()).is_err() {
                    break;
                }
            }
        });
        // Let the spinners spread over the workers.
        tokio::time::sleep(Duration::from_millis(100)).await;

        let mut without_parking = 0;
        for _ in 0..ATTEMPTS {
            let parked_before = parks();
            let sent = Instant::now();
            writer.write_all(&[1]).unwrap();
            let seen = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
                .await
                .expect("readiness never reached the reader while every worker yields")
                .expect("the reader is alive");
            assert!(seen.duration_since(sent) < Duration::from_secs(5));
            // A worker that woke from a park to dispatch it parks again by now.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if parks() == parked_before {
                without_parking += 1;
            }
        }
        stop.store(true, Relaxed);
        for spinner in spinners {
            spinner.await.unwrap();
        }
        drop(writer);
        read_task.await.unwrap();
        assert!(
            without_parking >= ATTEMPTS / 2,
            "only {without_parking} of {ATTEMPTS} reads were dispatched without a worker parking"
        );
    }

    #[test]
    fn contended_means_over_four_fifths_of_a_long_enough_spell_went_to_other_threads() {
        let us = Duration::from_micros;
        assert!(!contended(us(0), us(1_000)));
        assert!(!contended(us(8_000), us(10_000)));
        assert!(contended(us(8_100), us(10_000)));
        assert!(!contended(us(900), us(900)), "too short a spell to judge");
        assert!(contended(us(1_000), us(1_000)));
    }

    #[test]
    fn back_offs_double_up_to_a_second() {
        let mut backoff = CONTENDED_BACKOFF;
        let mut sequence = vec![backoff];
        while backoff < MAX_BACKOFF {
            backoff = next_backoff(backoff);
            sequence.push(backoff);
        }
        let ms: Vec<u128> = sequence.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000]);
        assert_eq!(next_backoff(MAX_BACKOFF), MAX_BACKOFF);
    }

    #[test]
    fn a_spinner_backs_off_when_other_threads_want_its_cpu() {
        // As many CPU hogs as CPUs: every sched_yield hands the CPU to one of them.
        let hogs = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop_hogs = std::sync::Arc::new(AtomicBool::new(false));
        let hog_threads: Vec<_> = (0..hogs)
            .map(|_| {
                let stop = stop_hogs.clone();
                std::thread::spawn(move || {
                    while !stop.load(Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let backoffs = runtime.block_on(async {
            let poll = BusyPoll::new(Duration::from_millis(5)).unwrap();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let stop = futures_util::FutureExt::shared(async move { stop_rx.await.is_ok() });
            poll.start(|| stop.clone());
            let deadline = Instant::now() + Duration::from_secs(5);
            while poll.backoffs() == 0 && Instant::now() < deadline {
                poll.frames_written();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            drop(stop_tx);
            poll.backoffs()
        });
        stop_hogs.store(true, Relaxed);
        hog_threads.into_iter().for_each(|h| h.join().unwrap());
        assert!(backoffs > 0, "spinning on a CPU that hogs wanted never backed off");
    }
}
