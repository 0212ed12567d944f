//! The HTTP listener: each accepted connection served by hyper's HTTP/1 server, with a deadline
//! for every request's headers and a cap on the connections open at once.
//!
//! `axum::serve` sets neither: a client that sent half a request line, or that kept a connection
//! idle between requests, held its connection (a descriptor, a task) for as long as it liked,
//! so a few thousand of them took every descriptor the process may open (the steps' pipes, the
//! store, the mirrors need them too). Here a request's headers must arrive within
//! [`HEADER_TIMEOUT`] of the connection starting to wait for them, which also ends an idle
//! keep-alive connection, and past [`MAX_CONNECTIONS`] new connections wait in the kernel's
//! accept queue until one closes. A request's body must arrive within [`BODY_TIMEOUT`] of its
//! headers: one that trickled in held its handler, and one of the work runtime's places for
//! requests in flight, for as long as its client liked.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a request's headers may take to arrive, counted from when the connection starts
/// waiting for them (its opening, or the end of the previous answer).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request's body may take to arrive, counted from the end of its headers; past it
/// the body reads as an error (the handler answers 400 and the connection closes).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 2048;

/// Serves `app` on `listener` until `stop`, then lets each connection finish the request it is
/// in and waits for them all.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // A connection that failed before it was accepted is its client's business;
                    // anything else (out of descriptors) passes, given a moment.
                    if !is_connection_error(&e) {
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Small answers go out at once (no Nagle delay waiting for an ACK that is itself delayed).
        let _ = stream.set_nodelay(true);
        let (app, stop) = (app.clone(), stop.clone());
        connections.spawn(async move {
            let _permit = permit;
            connection(stream, peer, app, stop).await;
        });
        // Finished connections leave the set as they go.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One connection, to its end.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    stop: CancellationToken,
) {
    // Handlers see the peer's address as `ConnectInfo`, as with axum's own server.
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let request = request.map(|body| {
            if body.is_end_stream() {
                axum::body::Body::new(body)
            } else {
                axum::body::Body::new(Deadlined {
                    body,
                    deadline: Box::pin(tokio::time::sleep(BODY_TIMEOUT)),
                })
            }
        });
        app.clone().oneshot(request)
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(served);
    tokio::select! {
        _ = served.as_mut() => {}
        () = stop.cancelled() => {
            served.as_mut().graceful_shutdown();
            let _ = served.await;
        }
    }
}

/// Errors of one connection that `accept` reports (the listener is fine).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// A request body that fails once [`BODY_TIMEOUT`] has passed without its end.
struct Deadlined {
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs())]
    TimedOut,
}

impl Body for Deadlined {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BodyError::Http))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::TimedOut))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
