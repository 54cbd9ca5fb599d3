//! The accept loop: hyper with a timer, so that slow clients cannot hold connections.
//! `axum::serve` runs hyper without one (no header-read timeout at all) and without
//! a connection cap; this loop adds:
//!
//! - at most `max_connections` connections at once: past that, new connections wait
//!   in the kernel's backlog instead of costing memory here;
//! - at most `max_per_address` of them from one address (one /64 for IPv6, and
//!   [`WIDE_SHARE`] times that from one /48), except from trusted proxies and
//!   127.0.0.1/::1 (a reverse proxy on this machine), so that one machine, or one
//!   home's IPv6 prefix, cannot take every place;
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
//! - what has arrived of request bodies is counted against `body_memory`, in all and
//!   per address ([`super::bodies`]);
//! - an answer whose peer takes nothing of it (a full socket, an HTTP/2 window left
//!   shut) for [`STALLED_AFTER`] has its connection dropped;
//! - HTTP/2 keep-alive pings, so a dead peer's streams are noticed;
//! - a graceful shutdown that lets requests in flight finish, for a bounded time.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
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
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Sleep,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{
    address::{client_address, is_unnamed_local_proxy, ForwardedHeader},
    bodies::{Budget, Charge},
};
use crate::{
    places::{Place, Places},
    ratelimit::Network,
};

/// Bytes of request bodies held at once by default: 128 MiB.
pub const DEFAULT_BODY_MEMORY: usize = 128 << 20;

/// The largest HTTP/1 request head, and an HTTP/1 connection's read buffer: far
/// above any head a client of ours sends (a long consent URL and cookies are a few
/// KiB).
const MAX_HEAD: usize = 64 * 1024;

/// What a request's head costs in memory while its request is open: its URI and
/// headers, each header with some overhead. Charged to the body budget with the body,
/// so that heads (up to 64 KiB on HTTP/1, 16 KiB on each of 100 HTTP/2 streams)
/// count in an address's share as bodies do.
fn head_cost<B>(request: &axum::http::Request<B>) -> usize {
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    let uri = request.uri();
    let scheme = uri.scheme_str().map_or(0, str::len);
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path + headers
}

/// HTTP/2 flow-control windows: the largest body (a console call's 160 KiB), and a
/// few of them per connection.
const H2_STREAM_WINDOW: u32 = 160 * 1024;
const H2_CONNECTION_WINDOW: u32 = 4 * H2_STREAM_WINDOW;

/// What an HTTP/2 stream may queue of its answer beyond what the client has read
/// (hyper's default is 400 KiB). hyper asks an answer's body for more only when
/// there is room, so an answer holding a place until it is sent (the gateway's)
/// holds it until the client reads, whatever window the client advertises.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// How long requests in flight may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_body_timeout: Duration,
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Bytes of request bodies held at once, in all (see [`super::bodies`]).
    pub body_memory: usize,
    /// Peers that carry many people's connections: not held to `max_per_address`;
    /// their requests' bodies count in the share of the client they name.
    pub trusted_proxies: Vec<IpNet>,
    /// Which header those proxies write.
    pub forwarded_header: ForwardedHeader,
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
            body_memory: DEFAULT_BODY_MEMORY,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::Any,
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
    let budget = Budget::new(limits.body_memory);
    let trusted: Arc<[IpNet]> = limits.trusted_proxies.clone().into();
    let stop = CancellationToken::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The largest request head, and what a connection's read buffer may grow to
        // (hyper's default is about 400 KiB): a head stays in memory for as long as
        // its request, and is charged to the body budget (see `head_cost`).
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        // RFC 9113 §6.5.2 asks for at least 100; each may hold a request body being
        // read, 64 KiB at most.
        .max_concurrent_streams(100)
        // What a peer may send before it is read, which the body budget cannot see
        // (hyper's default is 1 MiB each): a stream, one body of the largest kind;
        // a connection, a few.
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER);
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
        // On a `[::]` bind, IPv4 peers (a proxy on 127.0.0.1, say) come as `::ffff:…`.
        let ip = peer.ip().to_canonical();
        // A reverse proxy on this machine carries everyone's connections, configured
        // as trusted or not.
        let proxy = super::address::is_trusted_proxy(ip, &trusted);
        let exempt = ip == IpAddr::from([127, 0, 0, 1])
            || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            || proxy;
        let (budget, trusted) = (budget.clone(), trusted.clone());
        let forwarded_header = limits.forwarded_header;
        let place = if exempt {
            None
        } else {
            match take_places(&addresses, ip, limits.max_per_address) {
                Some(places) => Some(places),
                None => {
                    // Closing at once costs the peer a reconnect, and us nothing.
                    refused_for_address(ip, limits.max_per_address);
                    continue;
                }
            }
        };
        // Small JSON-RPC answers must not wait for Nagle's algorithm (a 40 ms stall
        // against delayed ACKs on every streamed response).
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let body_timeout = limits.request_body_timeout;
        // The peer's address goes in as the request enters the router, and the body
        // gets its deadline and its charge, held until the answer's head is ready and
        // the body is dropped. (A `Router::layer` here would wrap every route again
        // for each connection, and box one more service for every request to clone.)
        let seen = activity.clone();
        let app = app.clone();
        let service = tower::service_fn(move |request: axum::http::Request<Incoming>| {
            if request.version() == axum::http::Version::HTTP_2 {
                seen.http2.store(true, Ordering::Relaxed);
            }
            let open = Open::new(seen.clone());
            // Behind a trusted proxy, the client it names holds the share (see
            // `is_unnamed_local_proxy` for who counts in the whole only).
            let client = if proxy {
                client_address(ip, request.headers(), &trusted, forwarded_header)
            } else {
                ip
            };
            let local = is_unnamed_local_proxy(ip, &trusted);
            let announced = http_body::Body::size_hint(request.body()).exact();
            let charge = Arc::new(budget.charge(client, local, announced));
            let refused = charge.take_head(head_cost(&request)).err();
            let mut request =
                request.map(|body| Body::new(Deadline::new(body, body_timeout, charge.clone())));
            request.extensions_mut().insert(ConnectInfo(peer));
            let answer = app.clone().oneshot(request);
            async move {
                if let Some(refused) = refused {
                    return Ok(
                        super::bodies::refusal(refused).map(|inner| Tracked::body(inner, open))
                    );
                }
                let response: axum::response::Response = answer.await?;
                drop(charge);
                // The request stays open until its answer's body is done or dropped.
                Ok::<_, std::convert::Infallible>(response.map(|inner| Tracked::body(inner, open)))
            }
        });
        let io = TokioIo::new(Watched {
            stream,
            activity: activity.clone(),
        });
        let connection = builder
            .serve_connection_with_upgrades(io, TowerToHyperService::new(service))
            .into_owned();
        let idle_timeout = limits.header_read_timeout;
        let stop = stop.clone();
        tokio::spawn(async move {
            watch(connection, &activity, idle_timeout, &stop).await;
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

/// How long an answer may wait for its peer to take more of it (a full socket, or
/// an HTTP/2 flow-control window left shut) before the connection is dropped. A
/// peer that reads nothing would otherwise keep its connection for ever.
pub const STALLED_AFTER: Duration = Duration::from_secs(60);

/// Serves one connection until it ends, or until it is found doing nothing:
/// - no request head within `idle` of connecting: dropped;
/// - an answer that its peer has taken nothing of for [`STALLED_AFTER`]: dropped;
/// - HTTP/2 with no request open, and none started or ended, for `idle`: shut down
///   gracefully (GOAWAY). HTTP/1's wait between requests is hyper's own header-read
///   timeout, which starts when hyper starts reading the next request head (a check
///   here could close a connection just as its next request arrives).
async fn watch<C>(connection: C, activity: &Activity, idle: Duration, stop: &CancellationToken)
where
    C: Future + GracefulConnection,
{
    tokio::pin!(connection);
    let tick = idle.min(STALLED_AFTER);
    let mut seen = activity.events.load(Ordering::Relaxed);
    let mut first = true;
    // Errors here are the client's (a reset, a timeout): nothing to report.
    loop {
        tokio::select! {
            biased;
            _ = connection.as_mut() => return,
            () = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
                return;
            }
            () = tokio::time::sleep(tick) => {}
        }
        let events = activity.events.load(Ordering::Relaxed);
        if first && events == 0 {
            // Not one request head in all that time.
            return;
        }
        first = false;
        if activity.stalled() {
            tracing::debug!("dropping a connection whose peer takes nothing of its answer");
            return;
        }
        let quiet = events == seen && activity.open.load(Ordering::Relaxed) == 0;
        if quiet && activity.http2.load(Ordering::Relaxed) {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(idle, connection).await;
            return;
        }
        seen = events;
    }
}

/// What the watch needs of hyper-util's connection.
trait GracefulConnection {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E> GracefulConnection for auto::UpgradeableConnection<'static, I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self)
    }
}

/// What one connection has done, for [`watch`]. Times are ms since it began.
struct Activity {
    began: tokio::time::Instant,
    /// Requests started, plus those ended: any change is activity.
    events: AtomicU64,
    /// Requests not yet answered in full.
    open: AtomicUsize,
    http2: AtomicBool,
    /// For each answer whose body is not done: since when it has waited for the peer
    /// (hyper has not asked it for more since its last frame, or at all), 0 while it
    /// does not. Each its own: an HTTP/2 peer that keeps one stream's window shut
    /// while it reads another (a GET stream, pings) must not keep the first waiting
    /// for ever.
    waits: std::sync::Mutex<Vec<Arc<AtomicU64>>>,
    /// Since when a write to the socket has been waiting (0: none is).
    blocked_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            began: tokio::time::Instant::now(),
            events: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            http2: AtomicBool::new(false),
            waits: std::sync::Mutex::new(Vec::new()),
            blocked_since: AtomicU64::new(0),
        }
    }

    /// Ms since the connection began, at least 1.
    fn now(&self) -> u64 {
        (self.began.elapsed().as_millis() as u64).max(1)
    }

    /// Whether the peer has taken nothing of an answer for [`STALLED_AFTER`].
    fn stalled(&self) -> bool {
        let limit = STALLED_AFTER.as_millis() as u64;
        let now = self.now();
        let blocked = self.blocked_since.load(Ordering::Relaxed);
        let socket = blocked != 0 && now.saturating_sub(blocked) >= limit;
        let waiting = self
            .waits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|since| {
                let since = since.load(Ordering::Relaxed);
                since != 0 && now.saturating_sub(since) >= limit
            });
        socket || waiting
    }

    /// Whether a write to the socket is waiting.
    fn writing(&self, waits: bool) {
        if waits {
            let _ = self.blocked_since.compare_exchange(
                0,
                self.now(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            self.blocked_since.store(0, Ordering::Relaxed);
        }
    }
}

/// One request on a connection, from its head until its answer's body ends.
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: Arc<Activity>) -> Self {
        activity.events.fetch_add(1, Ordering::Relaxed);
        activity.open.fetch_add(1, Ordering::Relaxed);
        Open(activity)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.events.fetch_add(1, Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body, holding its request's [`Open`] until it ends and telling the
/// connection's watch since when it waits for the peer; its length (and so
/// `Content-Length`) is the inner body's.
struct Tracked {
    inner: Body,
    /// What is left of a frame handed on in pieces ([`PIECE`]).
    rest: Bytes,
    open: Open,
    /// Since when its last frame went to hyper (or since it began, when none was
    /// asked for yet) without hyper asking again; 0 while hyper waits for it.
    since: Arc<AtomicU64>,
}

impl Tracked {
    fn body(inner: Body, open: Open) -> Body {
        let since = Arc::new(AtomicU64::new(open.0.now()));
        open.0
            .waits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(since.clone());
        Body::new(Tracked {
            inner,
            rest: Bytes::new(),
            open,
            since,
        })
    }
}

/// The most of an answer handed to hyper at once. Hyper asks for more only once
/// what it holds is written, so the wait judged by [`STALLED_AFTER`] is that of one
/// piece: a slow reader of a large SSE event (an upstream's may be 16 MiB) that
/// keeps reading is not taken for one that reads nothing.
const PIECE: usize = 64 * 1024;

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        if data.len() > PIECE {
                            this.rest = data.split_off(PIECE);
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            }
        } else {
            let piece = this.rest.split_to(this.rest.len().min(PIECE));
            Poll::Ready(Some(Ok(Frame::data(piece))))
        };
        let handed = matches!(frame, Poll::Ready(Some(Ok(_))));
        let since = if handed { this.open.0.now() } else { 0 };
        this.since.store(since, Ordering::Relaxed);
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut waits = self
            .open
            .0
            .waits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = waits.iter().position(|w| Arc::ptr_eq(w, &self.since)) {
            waits.swap_remove(at);
        }
    }
}

/// The socket, telling the connection's watch when a write waits (the peer reads
/// nothing and its buffers are full).
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.activity.writing(written.is_pending());
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.activity.writing(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A refusal for too many connections from one address, in the log at most once a
/// minute (a deployment behind a proxy not named by `--trusted-proxy` sees only the
/// proxy's address, and would otherwise not know why connections close).
fn refused_for_address(ip: IpAddr, max: usize) {
    crate::warn_throttled!(
        peer = %ip,
        max,
        "closed a connection: too many from one address (behind a reverse proxy, name it with --trusted-proxy)"
    );
}

/// How many times an address's share one IPv6 /48 gets in all: a home is given a
/// /56 or a /48 (256 or 65,536 /64s), which would otherwise take 256 places each.
pub const WIDE_SHARE: usize = 4;

/// The places a connection from `ip` takes: one of its address's (an IPv6 /64), at
/// most `max` of them, and for IPv6 one of its /48's, at most `max` ×
/// [`WIDE_SHARE`]; `None` when either is full.
fn take_places(places: &Places<Network>, ip: IpAddr, max: usize) -> Option<Vec<Place<Network>>> {
    Network::of(ip)
        .into_iter()
        .flatten()
        .map(|network| {
            let max = match network {
                Network::Address(_) => max,
                Network::Wide(_) => max.saturating_mul(WIDE_SHARE),
            };
            places.take(&network, max)
        })
        .collect()
}

/// A request body that must arrive in full by a deadline, each of its frames charged
/// to the [`Budget`]. What has arrived is delivered unless the budget refuses it: the
/// deadline is looked at only while waiting for more, and its timer is made only then
/// (most bodies arrive with their head and never need one).
struct Deadline {
    inner: Incoming,
    at: tokio::time::Instant,
    timer: Option<Pin<Box<Sleep>>>,
    charge: Arc<Charge>,
}

/// The error a body that missed its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

impl Deadline {
    fn new(inner: Incoming, within: Duration, charge: Arc<Charge>) -> Self {
        Deadline {
            inner,
            at: tokio::time::Instant::now() + within,
            timer: None,
            charge,
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
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                let bytes = data.map_or(0, Bytes::len);
                if let Err(refused) = self.charge.take(bytes) {
                    return Poll::Ready(Some(Err(refused.into())));
                }
            }
            // A frame is a slice of the buffer hyper read it into (8 KiB or more,
            // however little of it the frame is), and a body read whole keeps every
            // frame: one byte per HTTP/1 chunk would keep 8 KiB for every 65 bytes
            // charged. Each frame gets an allocation of its own.
            let frame = frame.map(|f| f.map(|f| f.map_data(|data| Bytes::copy_from_slice(&data))));
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

/// The address a connection came from, as the listener recorded it.
pub fn peer(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large frame goes to hyper in pieces, so that the wait for the peer is judged
    /// per piece (a slow reader of a 16 MiB event that keeps reading is not
    /// dropped); the answer and its length are unchanged.
    #[tokio::test]
    async fn a_large_frame_is_handed_on_in_pieces() {
        use http_body_util::BodyExt;
        let activity = Arc::new(Activity::new());
        let whole: Vec<u8> = (0..PIECE * 3 + 7).map(|i| i as u8).collect();
        let mut body = Tracked::body(Body::from(whole.clone()), Open::new(activity));
        assert_eq!(
            http_body::Body::size_hint(&body).exact(),
            Some(whole.len() as u64)
        );
        let mut got = Vec::new();
        let mut pieces = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.expect("frame").into_data().expect("data");
            assert!(data.len() <= PIECE, "{}", data.len());
            got.extend_from_slice(&data);
            pieces += 1;
        }
        assert_eq!(pieces, 4);
        assert_eq!(got, whole);
    }

    #[test]
    fn an_ipv6_48_gets_a_few_addresses_worth_of_places_and_v4_its_own() {
        let places = Places::default();
        let in_48 = |subnet: u16, host: u16| -> IpAddr {
            format!("2001:db8:7:{subnet:x}::{host:x}")
                .parse()
                .expect("ip")
        };
        // One /64 (any host in it): `max` places.
        let mut held: Vec<_> = (0..2)
            .map(|host| take_places(&places, in_48(0, host), 2).expect("a place"))
            .collect();
        assert!(take_places(&places, in_48(0, 9), 2).is_none());
        // Other /64s of the same /48 (the first has the /48's own first address):
        // WIDE_SHARE times `max` in all.
        for subnet in 1..WIDE_SHARE as u16 {
            for host in 0..2 {
                held.push(take_places(&places, in_48(subnet, host), 2).expect("a place"));
            }
        }
        assert!(
            take_places(&places, in_48(0xff, 1), 2).is_none(),
            "the /48 is full"
        );
        assert!(take_places(&places, "2001:db8:8::1".parse().expect("ip"), 2).is_some());
        // IPv4, and IPv4 written as IPv6, count as one address.
        let v4 = take_places(&places, "192.0.2.1".parse().expect("ip"), 1).expect("a place");
        assert!(take_places(&places, "::ffff:192.0.2.1".parse().expect("ip"), 1).is_none());
        drop((held.pop(), v4));
        assert!(
            take_places(&places, in_48(0xff, 1), 2).is_some(),
            "a place given back"
        );
    }
}
