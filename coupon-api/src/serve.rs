//! The HTTP/1.1 accept loop: `axum::serve` with a bound on reading request headers.
//!
//! `axum::serve` gives hyper no timer, and hyper enforces `header_read_timeout` only with one
//! (<https://docs.rs/hyper/1/hyper/server/conn/http1/struct.Builder.html#method.header_read_timeout>),
//! so a client that sends its headers a byte at a time ("slowloris") would hold a connection
//! open for ever. This loop is the same as axum's (one task per connection, the peer address
//! as `ConnectInfo`, graceful shutdown) with hyper's timer and header timeout set. Bodies are
//! bounded separately (`RequestBodyTimeoutLayer` in [`crate::startup::router`]).

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits up
/// to `grace` for open connections to finish their requests.
///
/// # Errors
/// Never in practice: a failed `accept` (for example, out of file descriptors) is logged and
/// retried after a short pause.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |request: Request<Incoming>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "in-flight requests did not drain in time; stopping anyway");
        }
    }
    Ok(())
}
