//! Keeping an instance's in-memory keys current: one dedicated connection LISTENs on
//! [`super::CHANNEL`]; each notification names a key (`k:<name>`) or the admin token
//! (`admin`), whose row is then read and applied. A ping every [`PING_INTERVAL`] finds
//! a dead connection that sends nothing. When the connection is lost the supervisor
//! reports PostgreSQL down, reconnects with a backoff from [`MIN_BACKOFF`] doubling to
//! [`MAX_BACKOFF`], LISTENs again and reloads every key (notifications sent meanwhile
//! were missed), then reports it up.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::{CHANNEL, Health, Target, error_text, load_admin, load_all, load_one};
use crate::error::KeystoreError;
use crate::store::Memory;

/// How often the LISTEN connection is pinged.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may take before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// First wait before a reconnect.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnects.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

enum Event {
    Notified(String),
    Lost(String),
}

/// A connection that LISTENs for key changes.
pub(crate) struct Listener {
    client: tokio_postgres::Client,
    events: mpsc::UnboundedReceiver<Event>,
    driver: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Connects; the connection is driven by a task that forwards notifications.
    pub(crate) async fn connect(target: &Target) -> Result<Listener, KeystoreError> {
        let (client, mut connection) = target.connect().await?;
        let (tx, events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(Event::Notified(n.payload().to_owned())).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let _ = tx.send(Event::Lost(error_text(&e)));
                        return;
                    }
                    None => {
                        let _ = tx.send(Event::Lost("the server closed the connection".to_owned()));
                        return;
                    }
                }
            }
        });
        Ok(Listener { client, events, driver })
    }

    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    pub(crate) fn client_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }

    /// Starts receiving notifications.
    pub(crate) async fn listen(&self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(&format!("LISTEN {CHANNEL}")).await
    }

    /// Applies notifications until the connection is lost (returns why) or the store is
    /// gone (returns `None`).
    async fn run(&mut self, target: &Target, memory: &Weak<Memory>, health: &Health) -> Option<String> {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(Event::Notified(payload)) => {
                        let memory = memory.upgrade()?;
                        if let Err(e) = self.apply(&payload, target, &memory).await {
                            return Some(e.to_string());
                        }
                    }
                    Some(Event::Lost(reason)) => return Some(reason),
                    None => return Some("the connection task ended".to_owned()),
                },
                _ = ping.tick() => {
                    if memory.strong_count() == 0 {
                        return None;
                    }
                    match tokio::time::timeout(PING_TIMEOUT, self.client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => health.report(true, "reachable"),
                        Ok(Err(e)) => return Some(error_text(&e)),
                        Err(_) => return Some(format!("no answer to a ping within {PING_TIMEOUT:?}")),
                    }
                }
            }
        }
    }

    /// Applies one notification: `admin` (the admin token changed) or
    /// `k:<instance>:<name>` (key `name` changed on the store tagged `instance`). A
    /// revocation is passed to the revocation observer only when another instance made
    /// it: this one's own revocations were applied (and acted on) by their writer,
    /// before or after this notification arrives.
    async fn apply(&self, payload: &str, target: &Target, memory: &Memory) -> Result<(), KeystoreError> {
        let location = target.location.as_str();
        if payload == "admin" {
            memory.set_admin(load_admin(&self.client, location).await?);
        } else if let Some((instance, name)) =
            payload.strip_prefix("k:").and_then(|rest| rest.split_once(':'))
            && let Some(key) = load_one(&self.client, name, location).await?
            && memory.apply_key(&key, false)
            && instance != target.instance
        {
            memory.revoked_elsewhere(name);
        }
        Ok(())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Runs `listener` and its successors until the store is dropped.
pub(crate) fn spawn_supervisor(
    listener: Listener,
    target: Target,
    memory: Weak<Memory>,
    health: Arc<Health>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut current = Some(listener);
        let mut backoff = MIN_BACKOFF;
        loop {
            let mut listener = match current.take() {
                Some(listener) => listener,
                None => match reconnect(&target, &memory).await {
                    Ok(Some(listener)) => {
                        tracing::info!(location = %target.location, "PostgreSQL reconnected; LISTENing again, keys reloaded");
                        health.report(true, "reconnected; keys reloaded");
                        backoff = MIN_BACKOFF;
                        listener
                    }
                    Ok(None) => return,
                    Err(e) => {
                        health.report(false, &e.to_string());
                        tracing::warn!(
                            location = %target.location,
                            retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                            "PostgreSQL reconnect failed: {e}"
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            let Some(reason) = listener.run(&target, &memory, &health).await else { return };
            drop(listener);
            health.report(false, &reason);
            tracing::warn!(location = %target.location, "PostgreSQL LISTEN connection lost: {reason}; reconnecting");
        }
    })
}

/// Connects, LISTENs and reloads every key into memory; `Ok(None)` if the store is gone.
async fn reconnect(target: &Target, memory: &Weak<Memory>) -> Result<Option<Listener>, KeystoreError> {
    let listener = Listener::connect(target).await?;
    listener.listen().await.map_err(|e| KeystoreError::DatabaseUnreachable {
        location: target.location.clone(),
        reason: error_text(&e),
    })?;
    let loaded = load_all(listener.client(), &target.location).await?;
    let Some(memory) = memory.upgrade() else { return Ok(None) };
    memory.apply_loaded(&loaded);
    Ok(Some(listener))
}
