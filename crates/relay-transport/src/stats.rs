//! Recent samples of the relay's counters, for the console's charts
//! (`GET /v1/admin/stats`).
//!
//! A sampler task, started by the first [`crate::serve`] of a state and stopped when
//! its shutdown begins (or the state is dropped), reads the same counters `/metrics`
//! serves every `fine_step` and keeps two rings: the last `fine_samples` at that step
//! (default every 5 s for 10 minutes) and the last `coarse_samples` at `coarse_step`
//! (default every minute for a day). Memory is bounded by the two capacities times
//! `max_keys` per-key entries; Prometheus (with `contrib/grafana-dashboard.json`) is
//! the place for longer history.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use relay_keystore::unix_now;
use relay_proto::rest::{KeySample, Stats, StatsSample, StatsSeries};

use crate::state::AppState;

/// How often the counters are sampled and how many samples are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsConfig {
    /// Time between two fine samples (default 5 s); the sampler's tick.
    pub fine_step: Duration,
    /// Fine samples kept (default 120: ten minutes at 5 s).
    pub fine_samples: usize,
    /// Time between two coarse samples (default a minute); rounded to whole ticks.
    pub coarse_step: Duration,
    /// Coarse samples kept (default 1440: a day at a minute).
    pub coarse_samples: usize,
    /// Keys whose usage each sample keeps, the most used (by messages) first
    /// (default 32), so that many keys cannot grow the rings.
    pub max_keys: usize,
}

impl Default for StatsConfig {
    fn default() -> StatsConfig {
        StatsConfig {
            fine_step: Duration::from_secs(5),
            fine_samples: 120,
            coarse_step: Duration::from_secs(60),
            coarse_samples: 1440,
            max_keys: 32,
        }
    }
}

/// The two rings and the sampler's state. One per server state.
pub(crate) struct StatsRing {
    config: StatsConfig,
    /// Unix seconds when the state was built.
    started_at: u64,
    /// Set once the sampler task runs, so several listeners start one task.
    sampling: AtomicBool,
    rings: Mutex<Rings>,
}

struct Rings {
    fine: VecDeque<StatsSample>,
    coarse: VecDeque<StatsSample>,
    /// Fine ticks since the last coarse sample.
    ticks_since_coarse: u64,
}

impl StatsRing {
    /// Empty rings, the server started at `now_unix`.
    pub(crate) fn new(config: StatsConfig, now_unix: u64) -> StatsRing {
        let rings = Rings {
            fine: VecDeque::with_capacity(config.fine_samples),
            coarse: VecDeque::new(),
            ticks_since_coarse: 0,
        };
        StatsRing { config, started_at: now_unix, sampling: AtomicBool::new(false), rings: Mutex::new(rings) }
    }

    /// Fine ticks per coarse sample (at least one).
    fn ticks_per_coarse(&self) -> u64 {
        let fine = self.config.fine_step.as_millis().max(1);
        u64::try_from(self.config.coarse_step.as_millis() / fine).unwrap_or(u64::MAX).max(1)
    }

    /// Keeps `sample` in the fine ring and, every `coarse_step` (and for the first
    /// sample), in the coarse ring; the oldest samples fall out.
    pub(crate) fn record(&self, sample: StatsSample) {
        let per_coarse = self.ticks_per_coarse();
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let rings = &mut *rings;
        if rings.coarse.is_empty() || rings.ticks_since_coarse + 1 >= per_coarse {
            push_bounded(&mut rings.coarse, sample.clone(), self.config.coarse_samples);
            rings.ticks_since_coarse = 0;
        } else {
            rings.ticks_since_coarse += 1;
        }
        push_bounded(&mut rings.fine, sample, self.config.fine_samples);
    }

    /// The answer to `GET /v1/admin/stats`, with `now` as the current counters.
    pub(crate) fn snapshot(&self, now: StatsSample) -> Stats {
        let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let series = |ring: &VecDeque<StatsSample>, step: Duration, capacity: usize| StatsSeries {
            step_secs: step.as_secs().max(1),
            capacity: capacity as u64,
            samples: ring.iter().cloned().collect(),
        };
        Stats {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
            uptime_secs: now.t.saturating_sub(self.started_at),
            fine: series(&rings.fine, self.config.fine_step, self.config.fine_samples),
            coarse: series(&rings.coarse, self.config.coarse_step, self.config.coarse_samples),
            now,
        }
    }
}

fn push_bounded(ring: &mut VecDeque<StatsSample>, sample: StatsSample, capacity: usize) {
    if capacity == 0 {
        return;
    }
    while ring.len() >= capacity {
        ring.pop_front();
    }
    ring.push_back(sample);
}

/// The server's counters now, as one sample.
pub(crate) fn sample(state: &AppState) -> StatsSample {
    let totals = state.metrics().totals();
    let max_keys = state.stats().config.max_keys;
    let mut keys: Vec<KeySample> = state
        .keystore()
        .map(|store| {
            store
                .list()
                .into_iter()
                .map(|k| KeySample {
                    name: k.name,
                    messages: k.usage.messages,
                    bytes: k.usage.bytes,
                    rooms: k.usage.rooms,
                })
                .collect()
        })
        .unwrap_or_default();
    keys.sort_by(|a, b| b.messages.cmp(&a.messages).then_with(|| a.name.cmp(&b.name)));
    keys.truncate(max_keys);
    StatsSample {
        t: unix_now(),
        connections_open: state.open_connections() as u64,
        websockets_open: totals.websockets_open,
        rooms_open: state.rooms().len() as u64,
        connections: totals.connections,
        rooms_created: totals.rooms_created,
        messages: totals.messages,
        bytes: totals.bytes,
        auth_failures: totals.auth_failures,
        rate_limited: totals.rate_limited,
        keys,
    }
}

/// Starts `state`'s sampler task unless it runs already. It samples at once, then every
/// `fine_step`, and ends when shutdown begins or the state is gone (it holds the state
/// weakly, so it never keeps a dropped server alive).
pub(crate) fn start_sampler(state: &AppState) {
    if state.stats().sampling.swap(true, Ordering::SeqCst) {
        return;
    }
    let weak = Arc::downgrade(&state.inner);
    let stop = state.shutting_down();
    let step = state.stats().config.fine_step.max(Duration::from_millis(100));
    tokio::spawn(async move {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => return,
            }
            let Some(inner) = weak.upgrade() else { return };
            let state = AppState { inner };
            state.stats().record(sample(&state));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: u64) -> StatsSample {
        StatsSample {
            t,
            connections_open: 0,
            websockets_open: 0,
            rooms_open: 0,
            connections: t,
            rooms_created: 0,
            messages: 0,
            bytes: 0,
            auth_failures: 0,
            rate_limited: 0,
            keys: Vec::new(),
        }
    }

    #[test]
    fn rings_keep_their_capacity_and_the_coarse_one_every_coarse_step() {
        let config = StatsConfig {
            fine_step: Duration::from_secs(5),
            fine_samples: 4,
            coarse_step: Duration::from_secs(15),
            coarse_samples: 2,
            max_keys: 1,
        };
        let ring = StatsRing::new(config, 100);
        for i in 0..10 {
            ring.record(at(100 + 5 * i));
        }
        let stats = ring.snapshot(at(150));
        let times = |s: &StatsSeries| s.samples.iter().map(|x| x.t).collect::<Vec<_>>();
        assert_eq!(times(&stats.fine), [130, 135, 140, 145]);
        // Coarse: the first sample, then every third tick: 100, 115, 130, 145; keep 2.
        assert_eq!(times(&stats.coarse), [130, 145]);
        assert_eq!((stats.fine.step_secs, stats.coarse.step_secs, stats.coarse.capacity), (5, 15, 2));
        assert_eq!(stats.uptime_secs, 50);
    }

    /// Real time (this crate's tests have no paused clock), with a 100 ms step.
    #[tokio::test]
    async fn the_sampler_samples_every_fine_step_once_per_state_and_stops_at_shutdown() {
        let step = Duration::from_millis(100);
        let stats = StatsConfig { fine_step: step, ..StatsConfig::default() };
        let state = AppState::new(crate::ServerConfig { stats, ..crate::ServerConfig::default() }).unwrap();
        let started = tokio::time::Instant::now();
        start_sampler(&state);
        start_sampler(&state); // a second listener starts no second task
        let samples = |s: &AppState| s.stats().snapshot(sample(s)).fine.samples.len();
        let deadline = started + Duration::from_secs(10);
        while samples(&state) < 6 {
            assert!(tokio::time::Instant::now() < deadline, "no samples every {step:?}");
            tokio::time::sleep(step / 2).await;
        }
        // One task: at most one sample per step (two tasks would take twice as many).
        let most = started.elapsed().as_millis() / step.as_millis() + 2;
        assert!(samples(&state) as u128 <= most, "{} samples, at most {most}", samples(&state));
        state.begin_shutdown();
        tokio::time::sleep(step).await;
        let stopped = samples(&state);
        tokio::time::sleep(step * 4).await;
        assert_eq!(samples(&state), stopped, "no sample after shutdown began");
    }
}
