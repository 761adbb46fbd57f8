//! The dedicated LISTEN connection. It only keeps LISTEN alive and turns notifications into
//! wake-ups; it never claims anything.
//!
//! deadpool's connections drop notifications (the pool drives each connection as a plain
//! future), so LISTEN lives on one connection of its own, driven with `poll_message`. When it
//! drops, we reconnect with backoff, re-issue LISTEN, and wake every queue once, since any NOTIFY
//! sent while we were away is lost (the table is the truth).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Config as PgConfig};
use tokio_util::sync::CancellationToken;

use super::jobs::CHANNEL;

/// Wake-up handles per queue name, shared with the producers.
pub type Wakers = Arc<HashMap<String, Arc<Notify>>>;

/// Counts shared with `/metrics` and tests.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Successful (re)connections, the first one included.
    pub connects: AtomicU64,
    pub notifications: AtomicU64,
}

/// Runs until `stop` is cancelled.
pub async fn run(
    mut cfg: PgConfig,
    tls: super::Tls,
    wakers: Wakers,
    stats: Arc<ListenerStats>,
    stop: CancellationToken,
) {
    // A name of its own, so operators (and tests) can tell it apart in pg_stat_activity.
    cfg.application_name("lettuce-listener");
    let mut delay = Duration::from_millis(100);
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
                tracing::warn!(error = %super::error_text(&e), "LISTEN connection failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue 'reconnect;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match msg {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(Some(n.payload().to_string())).is_err() {
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
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            tracing::warn!(error = %super::error_text(&e), "LISTEN failed; reconnecting");
            driver.abort();
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            continue 'reconnect;
        }
        let n = stats.connects.fetch_add(1, Ordering::Relaxed);
        if n > 0 {
            tracing::info!("LISTEN connection re-established");
        }
        delay = Duration::from_millis(100);
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
                    Some(Some(queue)) => {
                        stats.notifications.fetch_add(1, Ordering::Relaxed);
                        if let Some(w) = wakers.get(&queue) {
                            w.notify_one();
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
