//! The HTTP server loop: hyper's HTTP/1 connection builder with a header-read
//! timeout (against slowloris: a client trickling its headers holds a connection
//! for at most that long), upgrades enabled, each connection told its peer's
//! address, and a graceful drain at shutdown (as `axum::serve` drains). `axum::serve` sets no timer on
//! hyper, so hyper's header-read timeout never fires there; hence this loop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use futures::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{debug, warn};

/// How long a connection accepted just before the drain may take to send its
/// first request: its client saw the connection succeed and is sending.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(500);

/// Serves `app` on `listener` until `stop` resolves; then stops accepting (new
/// connections are refused), serves the connections already accepted (those the
/// kernel completed but the loop had not taken yet included: their clients saw a
/// connection succeed), lets requests in flight finish and closes idle
/// connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    // Every connection task holds a receiver: all are gone once every connection
    // closed. Dropping `draining`'s sender tells them to finish.
    let (draining, drain_rx) = tokio::sync::watch::channel(());
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    let connections = Connections {
        app,
        header_read_timeout,
        drain: drain_rx,
        open: open_rx,
    };
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pass, do not die.
                    warn!(error = %e, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        connections.spawn(stream, peer);
    }
    // The backlog: connections the kernel completed that were not taken yet.
    while let Some(Ok((stream, peer))) = accept(&listener).now_or_never() {
        connections.spawn(stream, peer);
    }
    drop(listener);
    drop(connections);
    let _ = draining.send(());
    open_tx.closed().await;
}

/// The next connection, ready to serve: Nagle's algorithm off (see [`no_delay`]).
async fn accept(listener: &TcpListener) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    no_delay(&stream);
    Ok((stream, peer))
}

/// Turns Nagle's algorithm off: a response's last segment (and, for a list of
/// megabytes, the short tail of each vectored write) must not wait for the ACK of
/// what went before, which a keep-alive client delays (delayed ACKs in
/// request-response mode). With Nagle, a 6 MB list read on a reused connection
/// took 50-130 ms instead of 12 in one read of a hundred. Go's net/http and
/// nginx (`tcp_nodelay on`) do the same.
fn no_delay(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "failed to set TCP_NODELAY");
    }
}

/// What each connection is served with.
struct Connections {
    app: Router,
    header_read_timeout: Duration,
    drain: tokio::sync::watch::Receiver<()>,
    open: tokio::sync::watch::Receiver<()>,
}

impl Connections {
    fn spawn(&self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let asked = Arc::new(AtomicBool::new(false));
        let asked_in = asked.clone();
        let service = self
            .app
            .clone()
            .map_request(move |mut req: http::Request<Incoming>| {
                asked_in.store(true, Ordering::Relaxed);
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            })
            .map_err(|never: Infallible| match never {});
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let conn = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .with_upgrades();
        let (mut drain, open) = (self.drain.clone(), self.open.clone());
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = drain.changed() => {
                    // A connection that has not asked anything yet may be about
                    // to: hyper would close it as idle at once.
                    let early = if asked.load(Ordering::Relaxed) {
                        None
                    } else {
                        tokio::time::timeout(FIRST_REQUEST_GRACE, conn.as_mut()).await.ok()
                    };
                    match early {
                        Some(ended) => ended,
                        None => {
                            // Finish the request in flight, then close (idle ones close now).
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            };
            if let Err(e) = ended {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = accept(&listener).await.expect("accept");
        assert!(accepted.nodelay().expect("read"), "TCP_NODELAY set");
    }
}
