//! The accept loop: hyper with a timer, so that slow clients cannot hold connections.
//! `axum::serve` runs hyper without one (no header-read timeout at all) and without
//! a connection cap; this loop adds:
//!
//! - at most `max_connections` connections at once: past that, new connections wait
//!   in the kernel's backlog instead of costing memory here;
//! - at most `max_per_address` of them from one address (one /64 for IPv6), except
//!   from trusted proxies, so that one machine cannot take every place;
//! - a deadline for a connection's first request: a request head must arrive within
//!   `header_read_timeout` of connecting. Hyper's own header-read timeout starts
//!   only once it knows the protocol, so a silent socket, or one that sends part of
//!   the HTTP/2 preface, would otherwise be kept for ever;
//! - the same wait between requests: HTTP/1 through hyper's header-read timeout (it
//!   closes a keep-alive connection idle that long), HTTP/2 here, since hyper's
//!   HTTP/2 server has no idle timeout and any client answers its pings. An idle
//!   HTTP/2 connection (no request open, none new) is shut down gracefully;
//! - a request body must arrive in full within `request_body_timeout` of its head
//!   (an absolute deadline: a timer reset at every byte would let one byte every few
//!   seconds keep a request, and its connection, for weeks);
//! - HTTP/2 keep-alive pings, so a dead peer's streams are noticed;
//! - a graceful shutdown that lets requests in flight finish, for a bounded time.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, extract::ConnectInfo, Router};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use ipnet::IpNet;
use tokio::{net::TcpListener, sync::Semaphore, time::Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::places::Places;

/// How long requests in flight may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_body_timeout: Duration,
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Peers that carry many people's connections: not held to `max_per_address`.
    pub trusted_proxies: Vec<IpNet>,
}

impl Limits {
    /// `max_connections` with the defaults for everything else (tests and the
    /// metrics listener).
    pub fn new(header_read_timeout: Duration, max_connections: usize) -> Self {
        Limits {
            header_read_timeout,
            request_body_timeout: Duration::from_secs(30),
            max_connections,
            max_per_address: max_connections,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let total = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(total));
    let addresses = Places::default();
    let stop = CancellationToken::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(256);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let trusted = limits
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer.ip()));
        let place = if trusted {
            None
        } else {
            match addresses.take(&address_key(peer.ip()), limits.max_per_address) {
                Some(place) => Some(place),
                None => {
                    // Closing at once costs the peer a reconnect, and us nothing.
                    tracing::debug!(peer = %peer.ip(), "too many connections from one address");
                    continue;
                }
            }
        };
        // Small JSON-RPC answers must not wait for Nagle's algorithm (a 40 ms stall
        // against delayed ACKs on every streamed response).
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let body_timeout = limits.request_body_timeout;
        // The peer's address goes in as the request enters the router, and the body
        // gets its deadline. (A `Router::layer` here would wrap every route again for
        // each connection, and box one more service for every request to clone.)
        let seen = activity.clone();
        let service = app
            .clone()
            .map_request(move |request: axum::http::Request<Incoming>| {
                let mut request = request.map(|body| Body::new(Deadline::new(body, body_timeout)));
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            })
            .map_future(move |answer| {
                let open = Open::new(seen.clone());
                async move {
                    let response: axum::response::Response = answer.await?;
                    // The request stays open until its answer's body is done or dropped.
                    Ok::<_, std::convert::Infallible>(
                        response.map(|inner| Body::new(Tracked { inner, _open: open })),
                    )
                }
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let idle_timeout = limits.header_read_timeout;
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let mut seen = 0;
            let idle = tokio::time::sleep(idle_timeout);
            tokio::pin!(idle);
            // Errors here are the client's (a reset, a timeout): nothing to report.
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    () = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.as_mut().await;
                        break;
                    }
                    () = &mut idle => {
                        let started = activity.started.load(Ordering::Relaxed);
                        if started == 0 {
                            // Not one request head in all that time: drop the socket.
                            break;
                        }
                        if started == seen && activity.open.load(Ordering::Relaxed) == 0 {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.as_mut().await;
                            break;
                        }
                        seen = started;
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    }
                }
            }
            drop(place);
            drop(permit);
        });
    }
    drop(listener);
    stop.cancel();
    // Every connection holds one place until it ends: all of them back means all done.
    let all = u32::try_from(total).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open after the shutdown grace period; closing");
        }
    }
}

/// What one connection has done: requests started, and those not yet answered in full.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    open: AtomicUsize,
}

/// One request on a connection, from its head until its answer's body ends.
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.open.fetch_add(1, Ordering::Relaxed);
        Open(activity)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body, holding its request's [`Open`] until it ends; its length (and
/// so `Content-Length`) is the inner body's.
struct Tracked {
    inner: Body,
    _open: Open,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The key an address's connections are counted under: IPv6 addresses per /64,
/// which one machine usually has whole.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// A request body that must arrive in full by a deadline. What has arrived is always
/// delivered: the deadline is looked at only while waiting for more, and its timer
/// is made only then (most bodies arrive with their head and never need one).
struct Deadline {
    inner: Incoming,
    at: tokio::time::Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

/// The error a body that missed its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

impl Deadline {
    fn new(inner: Incoming, within: Duration) -> Self {
        Deadline {
            inner,
            at: tokio::time::Instant::now() + within,
            timer: None,
        }
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let at = self.at;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether reading a body failed because it missed its deadline.
pub fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The address a connection came from, as the listener recorded it.
pub fn peer(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}
