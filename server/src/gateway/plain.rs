//! The direct path's connections to an `http://` upstream: HTTP/1.1 on hyper's
//! connection API, each connection driven by the call that is using it rather than by
//! a task of its own.
//!
//! Why not hyper's pooled client (`hyper_util::client::legacy`): it runs every
//! connection as a spawned task, so a relayed call crossed tasks four times (the
//! request to the connection's task, the answer's head back, each piece of its body
//! back), and on two busy cores each crossing is a wake-up of another thread. Here the
//! task that serves the client's request writes the call upstream and reads its
//! answer itself: one task from the client's bytes to the upstream and back.
//!
//! What a pool must still do, it does here: idle connections are reused (last in,
//! first out), one found closed when taken is dropped, a call that a reused
//! connection never wrote is sent again on a new one (one it wrote never is), idle
//! connections expire (swept every [`SWEEP`] even when nobody calls), and there are
//! never more than `max_idle` of them. A connection whose answer is still open when
//! the call is done with it (an SSE stream the upstream has not ended yet) waits for
//! [`DRAIN`] at most, [`MAX_DRAINING`] of them at once: it turns idle once its end
//! has come, and is closed if it does not. No pool work happens under its lock:
//! entries are taken out, looked at, and put back.

use std::{
    collections::VecDeque,
    future::Future,
    pin::{pin, Pin},
    sync::{Arc, Mutex as StdMutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    client::conn::http1::{self, Connection, SendRequest},
};
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use tokio::{net::TcpStream, time::Instant};
use tower::ServiceExt;

type Io = TokioIo<TcpStream>;

/// How long an answered SSE response may take to end while its connection waits in
/// the pool; after that the connection is closed.
pub const DRAIN: Duration = Duration::from_millis(250);

/// How many such responses wait at once; past that, a response the call is done
/// with before its end closes its connection. An upstream that never ends its
/// streams costs a connection per call, as it did before the pool waited for them.
const MAX_DRAINING: usize = 32;

/// How many pieces of a waiting response are read in one look; an upstream that
/// streams on and on is closed when its [`DRAIN`] is up, not read for ever.
const DRAIN_PIECES: usize = 16;

/// How many waiting responses one call looks at before it takes an idle connection.
const LOOKS: usize = 4;

/// How often expired connections are closed when nothing else happens.
const SWEEP: Duration = Duration::from_secs(10);

/// One connection: what sends on it, and what drives it.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Connection<Io, Full<Bytes>>,
    /// The connection's future has completed: it is closed, whatever `sender` says.
    ended: bool,
}

impl Conn {
    /// Drives the connection once; `false` when it has ended.
    fn poll_alive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended && Pin::new(&mut self.driver).poll(cx).is_ready() {
            self.ended = true;
        }
        !self.ended
    }

    /// Whether it may take a call now, looked at without waking anyone: what is in
    /// the socket already is read (a close, say), nothing is waited for.
    fn idle(&mut self) -> bool {
        let waker = futures::task::noop_waker();
        self.poll_alive(&mut Context::from_waker(&waker)) && self.sender.is_ready()
    }
}

/// A connection whose answer had not ended when the call was done with it.
struct Draining {
    conn: Conn,
    rest: Incoming,
    since: Instant,
}

/// What became of a draining connection when looked at.
enum Drained {
    /// Its answer has ended: an idle connection.
    Idle(Conn),
    /// Still reading; look again later.
    Waiting(Draining),
    /// Closed, broken, or out of time.
    Gone,
}

impl Draining {
    /// Reads what has arrived of the rest of the answer (at most [`DRAIN_PIECES`]
    /// pieces), without waiting or waking anyone.
    fn look(mut self, now: Instant) -> Drained {
        if now.saturating_duration_since(self.since) > DRAIN {
            return Drained::Gone;
        }
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..DRAIN_PIECES {
            if !self.conn.poll_alive(&mut cx) {
                return Drained::Gone;
            }
            match Pin::new(&mut self.rest).poll_frame(&mut cx) {
                // Driven again, the connection reads on.
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(None) => {
                    // Driven once more, the connection turns idle.
                    return if self.conn.idle() {
                        Drained::Idle(self.conn)
                    } else {
                        Drained::Gone
                    };
                }
                Poll::Ready(Some(Err(_))) => return Drained::Gone,
                Poll::Pending => break,
            }
        }
        Drained::Waiting(self)
    }
}

#[derive(Default)]
struct Parked {
    /// Oldest first; taken from the back.
    idle: VecDeque<(Conn, Instant)>,
    /// In the order they were parked or last looked at.
    draining: VecDeque<Draining>,
}

/// Connections to one `http://` upstream.
pub struct Pool {
    connector: HttpConnector,
    parked: StdMutex<Parked>,
    max_idle: usize,
    idle: Duration,
}

/// An answer's body, read on the task that reads it; at its end (or dropped before
/// it) its connection goes back to the pool.
pub struct Body {
    conn: Option<Conn>,
    /// `None` once given to the pool.
    body: Option<Incoming>,
    pool: Arc<Pool>,
}

impl Pool {
    /// A pool that keeps at most `max_idle` idle connections, each for `idle`; a
    /// task (while the pool lives) closes expired ones every [`SWEEP`].
    pub fn new(connector: HttpConnector, max_idle: usize, idle: Duration) -> Arc<Self> {
        let pool = Arc::new(Pool {
            connector,
            parked: StdMutex::default(),
            max_idle,
            idle,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Parked> {
        super::lock(&self.parked)
    }

    /// A connection that can take a call: one whose answer has ended since it was
    /// parked (the oldest of those first, looking at no more than [`LOOKS`]), else
    /// the most recently used idle one. Closed and expired ones met on the way are
    /// dropped, outside the lock.
    fn take(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut waiting = Vec::new();
        let mut found = None;
        for _ in 0..LOOKS {
            let Some(draining) = self.lock().draining.pop_front() else {
                break;
            };
            match draining.look(now) {
                Drained::Idle(conn) => {
                    found = Some(conn);
                    break;
                }
                Drained::Waiting(draining) => waiting.push(draining),
                Drained::Gone => {}
            }
        }
        if !waiting.is_empty() {
            self.lock().draining.extend(waiting);
        }
        if found.is_some() {
            return found;
        }
        loop {
            let (mut conn, since) = self.lock().idle.pop_back()?;
            if now.saturating_duration_since(since) <= self.idle && conn.idle() {
                return Some(conn);
            }
        }
    }

    /// Puts a connection back: idle when `rest` is `None`, else to wait for the end
    /// of that answer. One that has ended, or that there is no room for, is closed
    /// (outside the lock).
    fn park(&self, conn: Conn, rest: Option<Incoming>) {
        if conn.ended || conn.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut parked = self.lock();
        let closed = match rest {
            None => {
                let mut closed = self.expired(&mut parked, now);
                if parked.idle.len() >= self.max_idle {
                    closed.extend(parked.idle.pop_front().map(|(conn, _)| conn));
                }
                if self.max_idle > 0 {
                    parked.idle.push_back((conn, now));
                } else {
                    closed.push(conn);
                }
                closed
            }
            Some(rest) if parked.draining.len() < MAX_DRAINING => {
                parked.draining.push_back(Draining {
                    conn,
                    rest,
                    since: now,
                });
                Vec::new()
            }
            Some(_) => vec![conn],
        };
        drop(parked);
        drop(closed);
    }

    /// Takes the idle connections that have expired out of `parked` (the oldest
    /// are at the front), for the caller to drop once it has let go of the lock.
    fn expired(&self, parked: &mut Parked, now: Instant) -> Vec<Conn> {
        let mut closed = Vec::new();
        while let Some((_, since)) = parked.idle.front() {
            if now.saturating_duration_since(*since) <= self.idle {
                break;
            }
            closed.extend(parked.idle.pop_front().map(|(conn, _)| conn));
        }
        closed
    }

    async fn connect(&self, uri: &http::Uri) -> Result<Conn, String> {
        let io = self
            .connector
            .clone()
            .oneshot(uri.clone())
            .await
            .map_err(|e| super::direct::causes(&e))?;
        let (sender, driver) = http1::handshake(io)
            .await
            .map_err(|e| super::direct::causes(&e))?;
        Ok(Conn {
            sender,
            driver,
            ended: false,
        })
    }

    /// Sends `request` (origin-form URI, with its `Host`) to the upstream at `uri`,
    /// on a pooled connection when one is ready. A request that a reused connection
    /// never wrote (it closed meanwhile) is sent again on a new one; one it wrote is
    /// not, as a call must not run twice.
    pub async fn send(
        self: &Arc<Self>,
        uri: &http::Uri,
        mut request: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Body>, String> {
        loop {
            let (mut conn, reused) = match self.take() {
                Some(conn) => (conn, true),
                None => (self.connect(uri).await?, false),
            };
            // The future does not borrow the sender: it outlives the connection.
            let mut sending = pin!(conn.sender.try_send_request(request));
            let sent = match drive(&mut conn, sending.as_mut()).await {
                Ok(sent) => sent,
                Err(ended) => {
                    // Dropped, the connection hands back a request it never wrote.
                    drop(conn);
                    match sending.await.err().and_then(|mut e| e.take_message()) {
                        Some(again) if reused => {
                            request = again;
                            continue;
                        }
                        _ => return Err(ended),
                    }
                }
            };
            match sent {
                Ok(response) => {
                    let pool = self.clone();
                    return Ok(response.map(|body| Body {
                        conn: Some(conn),
                        body: Some(body),
                        pool,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(again) if reused => request = again,
                    _ => return Err(super::direct::causes(e.error())),
                },
            }
        }
    }
}

/// Closes expired connections every [`SWEEP`] while the pool lives.
async fn sweep(pool: Weak<Pool>) {
    let mut every = tokio::time::interval(SWEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut parked = pool.lock();
        let closed = pool.expired(&mut parked, now);
        let (old, young): (Vec<_>, Vec<_>) = parked
            .draining
            .drain(..)
            .partition(|d| now.saturating_duration_since(d.since) > DRAIN);
        parked.draining.extend(young);
        drop(parked);
        drop((closed, old));
    }
}

/// Polls `future` while driving the connection it needs, on the caller's task; an
/// error (hyper's, if it has one) when the connection ends before the future does.
async fn drive<F: Future + Unpin>(conn: &mut Conn, mut future: F) -> Result<F::Output, String> {
    let mut ended: Option<Result<(), hyper::Error>> = None;
    std::future::poll_fn(|cx| {
        if !conn.ended {
            if let Poll::Ready(result) = Pin::new(&mut conn.driver).poll(cx) {
                conn.ended = true;
                ended = Some(result);
            }
        }
        match Pin::new(&mut future).poll(cx) {
            Poll::Ready(output) => Poll::Ready(Ok(output)),
            Poll::Pending if conn.ended => Poll::Ready(Err(match ended.take() {
                Some(Err(e)) => super::direct::causes(&e),
                _ => "the connection closed".to_owned(),
            })),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

impl Body {
    /// The number of bytes the upstream announced, if it did.
    pub fn exact_len(&self) -> Option<u64> {
        self.body.as_ref().and_then(|b| b.size_hint().exact())
    }
}

impl futures::Stream for Body {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(body) = &mut this.body else {
            return Poll::Ready(None);
        };
        loop {
            if let Some(conn) = &mut this.conn {
                // Ended, it stays until the body says how (its end, or an error).
                conn.poll_alive(cx);
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(std::io::Error::other(e))));
                }
                Poll::Ready(None) => {
                    this.body = None;
                    if let Some(mut conn) = this.conn.take() {
                        // Driven once more, the connection turns idle.
                        if conn.poll_alive(cx) {
                            this.pool.park(conn, None);
                        }
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // An answer still open waits in the pool for its end.
        let rest = self.body.take().filter(|body| !body.is_end_stream());
        self.pool.park(conn, rest);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// How the test upstream answers each request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// A whole answer; the connection stays open.
        Whole,
        /// A whole answer, then the connection closes (as an upstream reaping an idle
        /// connection does), without saying so in the answer.
        ThenClose,
        /// A chunked answer whose end follows after the given milliseconds (never,
        /// for `None`).
        EndLater(Option<u64>),
        /// A chunked answer that goes on with a one-byte piece every millisecond.
        Endless,
    }

    /// An upstream that answers as `answer` says, counting its connections.
    async fn upstream(answer: Answer) -> (http::Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buffer = [0u8; 4096];
                    loop {
                        // One request: its head, and a body of the length it says.
                        let request = loop {
                            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                                let length = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .and_then(|n| n.trim().parse::<usize>().ok())
                                    .unwrap_or(0);
                                if seen.len() >= end + 4 + length {
                                    break seen.drain(..end + 4 + length).count();
                                }
                            }
                            match stream.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buffer[..n]),
                            }
                        };
                        assert!(request > 0);
                        match answer {
                            Answer::Whole | Answer::ThenClose => {
                                let whole = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(whole).await.is_err() {
                                    return;
                                }
                                if let Answer::ThenClose = answer {
                                    return;
                                }
                            }
                            Answer::EndLater(after) => {
                                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";
                                if stream.write_all(head).await.is_err() {
                                    return;
                                }
                                let Some(after) = after else {
                                    // Never ends; reads nothing more.
                                    std::future::pending::<()>().await;
                                    return;
                                };
                                tokio::time::sleep(Duration::from_millis(after)).await;
                                if stream.write_all(b"0\r\n\r\n").await.is_err() {
                                    return;
                                }
                            }
                            Answer::Endless => {
                                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";
                                if stream.write_all(head).await.is_err() {
                                    return;
                                }
                                while stream.write_all(b"1\r\na\r\n").await.is_ok() {
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        let uri = format!("http://127.0.0.1:{port}/mcp").parse().expect("uri");
        (uri, accepted)
    }

    fn pool() -> Arc<Pool> {
        Pool::new(HttpConnector::new(), 8, Duration::from_secs(30))
    }

    fn request(uri: &http::Uri) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::new(Full::new(Bytes::from_static(b"{}")));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static("/mcp");
        let host = uri.authority().expect("authority").as_str();
        request.headers_mut().insert(
            http::header::HOST,
            HeaderValue::from_str(host).expect("host"),
        );
        request
    }

    /// Sends one request and reads its first piece of body; the rest of the body is
    /// returned unread.
    async fn first_piece(pool: &Arc<Pool>, uri: &http::Uri) -> (Bytes, Body) {
        let response = pool.send(uri, request(uri)).await.expect("an answer");
        let mut body = response.into_body();
        let piece = body.next().await.expect("a piece").expect("no error");
        (piece, body)
    }

    use http::HeaderValue;

    #[tokio::test]
    async fn calls_one_after_another_share_one_connection() {
        let (uri, accepted) = upstream(Answer::Whole).await;
        let pool = pool();
        for _ in 0..5 {
            let (piece, mut body) = first_piece(&pool, &uri).await;
            assert_eq!(piece, "ok");
            assert!(body.next().await.is_none());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
        let (uri, accepted) = upstream(Answer::ThenClose).await;
        let pool = pool();
        for round in 1..=3 {
            let (piece, body) = first_piece(&pool, &uri).await;
            assert_eq!(piece, "ok");
            drop(body);
            // The upstream's close reaches us before the next call.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test]
    async fn an_answer_ending_late_is_read_off_in_the_pool_and_its_connection_reused() {
        let (uri, accepted) = upstream(Answer::EndLater(Some(40))).await;
        let pool = pool();
        // The caller stops reading after the first piece; the end comes later.
        let (_, body) = first_piece(&pool, &uri).await;
        drop(body);
        // Not ended yet: the next call gets a connection of its own.
        let (_, second) = first_piece(&pool, &uri).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(120)).await;
        // The first connection's end has come: taken again while the second is busy.
        let (_, third) = first_piece(&pool, &uri).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        drop((second, third));
    }

    #[tokio::test]
    async fn an_answer_that_never_ends_costs_its_connection_after_a_while() {
        let (uri, accepted) = upstream(Answer::EndLater(None)).await;
        let pool = pool();
        let (_, body) = first_piece(&pool, &uri).await;
        drop(body);
        tokio::time::sleep(DRAIN + Duration::from_millis(50)).await;
        let (_, body) = first_piece(&pool, &uri).await;
        drop(body);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Only the second is held: the expired one was closed when the pool was next
        // used.
        let parked = pool.lock();
        assert_eq!((parked.idle.len(), parked.draining.len()), (0, 1));
    }

    #[tokio::test]
    async fn an_answer_that_streams_on_and_on_is_read_a_little_then_closed() {
        let (uri, accepted) = upstream(Answer::Endless).await;
        let pool = pool();
        let calls = async {
            let (_, body) = first_piece(&pool, &uri).await;
            drop(body);
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Never ends: each look reads a little of it and moves on.
            let (_, body) = first_piece(&pool, &uri).await;
            drop(body);
            tokio::time::sleep(DRAIN + Duration::from_millis(50)).await;
            let (_, body) = first_piece(&pool, &uri).await;
            drop(body);
        };
        tokio::time::timeout(Duration::from_secs(5), calls)
            .await
            .expect("no call waits on another's stream");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // Both out of time were closed; only the last waits.
        assert_eq!(pool.lock().draining.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_when_they_expire_though_nobody_calls() {
        let (uri, _) = upstream(Answer::Whole).await;
        let pool = Pool::new(HttpConnector::new(), 8, Duration::from_secs(1));
        let (_, mut body) = first_piece(&pool, &uri).await;
        assert!(body.next().await.is_none());
        assert_eq!(pool.lock().idle.len(), 1);
        tokio::time::sleep(SWEEP * 2 + Duration::from_secs(1)).await;
        assert_eq!(pool.lock().idle.len(), 0);
    }
}
