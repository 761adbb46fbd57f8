//! The HTTP server on `LETTUCE_HTTP_ADDR`: `/healthz` (the process is alive), `/readyz` (gates
//! passed, database reachable, not draining; 503 with a general reason otherwise) and `/metrics`
//! (Prometheus, OpenMetrics text). It starts before the database gates so orchestrators see a
//! live-but-not-ready process while boot waits, and stops only after the drain.
//!
//! Whoever can reach the port cannot hurt the worker through it: at most
//! [`MAX_CONNECTIONS`] connections are served at once (more are closed as soon as they are
//! accepted), a request's head must arrive within [`HEADER_READ_TIMEOUT`] (an idle keep-alive
//! connection is closed after the same time), and a request is answered within
//! [`REQUEST_TIMEOUT`] or gets a 503. The database probes behind `/readyz` and `/metrics` use
//! their own small pool (see `boot::run`), never the job pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;

/// Connections served at once; one more is accepted and closed at once. Probes and scrapers
/// need a handful; the cap bounds the descriptors and memory a flood of clients can take.
pub const MAX_CONNECTIONS: usize = 64;
/// Time for a request's head to arrive, and for an idle keep-alive connection to send its next
/// one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to answer a request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After `stop`, time left to in-flight requests before their connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the handlers read.
#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

#[cfg(feature = "testing")]
/// Binds and serves until `stop` fires. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, health, metrics, stop)
}

/// [`serve`] on a listener the caller bound (a test binds `127.0.0.1:0` and reads the port
/// back). Returns the address it answers on.
pub fn serve_on(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(axum::middleware::from_fn(request_timeout))
        .with_state(AppState { health, metrics });
    tokio::spawn(accept_loop(listener, app, stop));
    tracing::info!(addr = %bound, "http server listening");
    Ok(bound)
}

/// Accepts until `stop`; a failed accept (out of descriptors, say) is logged and retried after
/// a pause, never the end of the server.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = MAX_CONNECTIONS, "http connection refused: too many open");
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                        Ok(served) => served,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "http connection ended");
            }
        });
    }
}

/// Answers 503 when a handler takes longer than [`REQUEST_TIMEOUT`].
async fn request_timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.health.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render().await,
    )
}
