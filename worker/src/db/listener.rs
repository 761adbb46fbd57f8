//! The dedicated LISTEN connection. It only keeps LISTEN alive and turns notifications into
//! wake-ups (`lettuce_jobs`, payload the queue) and control messages (`lettuce_control`,
//! e.g. `cancel:<id>` when an operator cancels a running job); it never claims anything.
//!
//! deadpool's connections drop notifications (the pool drives each connection as a plain
//! future), so LISTEN lives on one connection of its own, driven with `poll_message`. When it
//! drops, we reconnect with backoff, re-issue LISTEN, and wake every queue once, since any NOTIFY
//! sent while we were away is lost (the table is the truth).
//!
//! Behind a transaction pooler (PgBouncer in `transaction` mode) a LISTEN lasts one statement on
//! whichever server connection ran it, so notifications never reach us. [`notifications_arrive`]
//! finds that out at boot with one NOTIFY round trip, and the runtime then only polls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Config as PgConfig};
use tokio_util::sync::CancellationToken;

use super::jobs::{CHANNEL, CONTROL_CHANNEL};
use super::{DbError, DbPool};
use crate::observability::condition::Condition;

/// The first reconnect waits this long, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_millis(500);

/// Wake-up handles per queue name, shared with the producers.
pub type Wakers = Arc<HashMap<String, Arc<Notify>>>;

/// A message on [`CONTROL_CHANNEL`] for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// An operator finished (cancelled) this running job by hand: stop its attempt.
    Cancel(i64),
}

impl Control {
    /// Parses a `lettuce_control` payload (`cancel:<id>`); anything else is ignored.
    pub fn parse(payload: &str) -> Option<Control> {
        let id = payload.strip_prefix("cancel:")?.parse().ok()?;
        Some(Control::Cancel(id))
    }
}

/// Counts shared with `/metrics` and tests.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Successful (re)connections, the first one included.
    pub connects: AtomicU64,
    pub notifications: AtomicU64,
}

/// A notification, by channel.
enum Message {
    Wake(String),
    Control(String),
}

/// Runs until `stop` is cancelled.
pub async fn run(
    mut cfg: PgConfig,
    tls: super::Tls,
    wakers: Wakers,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    stats: Arc<ListenerStats>,
    stop: CancellationToken,
) {
    // A name of its own, so operators (and tests) can tell it apart in pg_stat_activity.
    cfg.application_name("lettuce-listener");
    // A short, flat-topped backoff: after a database restart LISTEN is back within half a second
    // of the server accepting connections (a refused connect costs the server nothing).
    let mut delay = FIRST_RETRY;
    let failing = Condition::new("LISTEN connection");
    'reconnect: loop {
        if stop.is_cancelled() {
            return;
        }
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            c = cfg.connect(tls.clone()) => c,
        };
        let (client, mut conn) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                failing.failed(&super::error_text(&e));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY);
                continue 'reconnect;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match msg {
                    Ok(AsyncMessage::Notification(n)) => {
                        let message = if n.channel() == CONTROL_CHANNEL {
                            Message::Control(n.payload().to_string())
                        } else {
                            Message::Wake(n.payload().to_string())
                        };
                        if tx.send(Some(message)).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %super::error_text(&e), "LISTEN connection lost");
                        break;
                    }
                }
            }
            let _ = tx.send(None);
        });
        if let Err(e) = client
            .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {CONTROL_CHANNEL}"))
            .await
        {
            failing.failed(&super::error_text(&e));
            driver.abort();
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY);
            continue 'reconnect;
        }
        let n = stats.connects.fetch_add(1, Ordering::Relaxed);
        failing.ok();
        if n > 0 {
            tracing::info!("LISTEN connection re-established");
        }
        delay = FIRST_RETRY;
        // Catch up on anything announced while we were not listening.
        for w in wakers.values() {
            w.notify_one();
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    driver.abort();
                    return;
                }
                msg = rx.recv() => match msg {
                    Some(Some(Message::Wake(queue))) => {
                        stats.notifications.fetch_add(1, Ordering::Relaxed);
                        if let Some(w) = wakers.get(&queue) {
                            w.notify_one();
                        }
                    }
                    Some(Some(Message::Control(payload))) => {
                        if let Some(c) = Control::parse(&payload) {
                            // The runtime outlives the listener; a send can only fail in teardown.
                            let _ = control.send(c);
                        }
                    }
                    _ => {
                        drop(client);
                        continue 'reconnect;
                    }
                }
            }
        }
    }
}

/// The channel of [`notifications_arrive`]'s round trip; nothing else listens on it.
const PROBE_CHANNEL: &str = "lettuce_probe";

/// Whether a NOTIFY sent over `pool` (the connections that enqueue and complete) reaches a
/// LISTEN connection opened with `cfg` within `limit`: `Some(how long it took)`, or `None` when
/// it did not arrive (a transaction pooler between us and the server). A payload of its own
/// (a random nonce) tells this round trip from any other. Uses one extra connection, closed
/// before it returns.
pub async fn notifications_arrive(
    cfg: &PgConfig,
    tls: &super::Tls,
    pool: &DbPool,
    limit: Duration,
) -> Result<Option<Duration>, DbError> {
    let mut cfg = cfg.clone();
    cfg.application_name("lettuce-listen-probe");
    let (client, mut conn) = cfg.connect(tls.clone()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(Ok(msg)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = msg
                && tx.send(n.payload().to_string()).is_err()
            {
                break;
            }
        }
    });
    let round_trip = async {
        client
            .batch_execute(&format!("LISTEN {PROBE_CHANNEL}"))
            .await?;
        let nonce = format!("{:016x}", rand::random::<u64>());
        let started = Instant::now();
        pool.get()
            .await?
            .execute_typed(
                "SELECT pg_notify($1, $2)",
                params![PROBE_CHANNEL, nonce.as_str()],
            )
            .await?;
        let arrived = tokio::time::timeout(limit, async {
            while let Some(payload) = rx.recv().await {
                if payload == nonce {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        Ok::<_, DbError>(arrived.then(|| started.elapsed()))
    };
    let result = round_trip.await;
    driver.abort();
    result
}
