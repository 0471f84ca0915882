//! Connections: accepted by hand (rather than `axum::serve`) so that each has a deadline for
//! its request head, which is also how long an idle keep-alive connection may wait; the number
//! of open connections is capped; and shutdown has a deadline, after which requests still in
//! flight get a final error from the engine and the server returns.

use anyhow::Result;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::EngineThread;

/// How long connections may take, and how many there may be.
#[derive(Clone, Debug)]
pub struct Limits {
    /// for a request's head (and for an idle keep-alive connection to send its next one)
    pub header_timeout: Duration,
    /// open connections at once; more are closed as they arrive
    pub max_connections: usize,
    /// how long requests in flight may go on after shutdown begins
    pub shutdown_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` resolves, then stops accepting and waits up to
/// `shutdown_timeout` for requests in flight; past it the engine fails what is left (each
/// client gets an error, not a cut connection) and this returns shortly after.
pub async fn serve_on(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    stop: impl Future<Output = ()>,
    engine: Option<&EngineThread>,
) -> Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // out of file descriptors and the like: back off instead of spinning
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // over the cap: closed at once (the client may retry)
                    continue;
                };
                let conn = http.serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(router.clone()),
                );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(slot);
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down, draining running requests");
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    if tokio::time::timeout(limits.shutdown_timeout, &mut drained)
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running after --shutdown-timeout {} s: ending them",
            limits.shutdown_timeout.as_secs_f64()
        );
        if let Some(e) = engine {
            e.stop();
        }
        // their final error events go out; a connection stuck elsewhere is left behind
        let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
    }
    Ok(())
}

/// SIGINT or SIGTERM.
pub async fn signalled() {
    let term = async {
        #[cfg(unix)]
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
