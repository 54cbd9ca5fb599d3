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
//! What a pool must still do, it does here: connections are reused (last in, first
//! out), one found closed when taken is dropped, a call that could not be written on
//! a reused connection is sent again on a new one, idle connections expire, and there
//! are never more than `max_idle` of them. A connection whose answer is still open
//! when the call is done with it (an SSE stream the upstream has not ended yet) waits
//! in the pool for [`DRAIN`] at most: it is taken again only once its end has come.

use std::{
    collections::VecDeque,
    future::Future,
    pin::{pin, Pin},
    sync::{Arc, Mutex as StdMutex},
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

/// One connection: what sends on it, and what drives it.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Connection<Io, Full<Bytes>>,
}

impl Conn {
    /// Drives the connection once; `false` when it has ended.
    fn poll_alive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.driver).poll(cx).is_pending()
    }
}

/// A connection in the pool: idle, or still reading off the end of an answer.
struct Parked {
    conn: Conn,
    /// The rest of an answer that has not ended yet.
    rest: Option<Incoming>,
    since: Instant,
}

impl Parked {
    /// Whether the connection can take a call now: it is open and what it was still
    /// reading has ended. Polled without waking anyone: what is already in the
    /// socket is read, nothing is waited for.
    fn ready(&mut self) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        loop {
            if !self.conn.poll_alive(&mut cx) {
                return false;
            }
            let Some(rest) = &mut self.rest else {
                return self.conn.sender.is_ready();
            };
            match Pin::new(&mut *rest).poll_frame(&mut cx) {
                // Driven again, the connection reads on (or turns idle at the end).
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(None) => self.rest = None,
                Poll::Ready(Some(Err(_))) | Poll::Pending => return false,
            }
        }
    }
}

/// Connections to one `http://` upstream.
pub struct Pool {
    connector: HttpConnector,
    parked: StdMutex<VecDeque<Parked>>,
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
    pub fn new(connector: HttpConnector, max_idle: usize, idle: Duration) -> Arc<Self> {
        Arc::new(Pool {
            connector,
            parked: StdMutex::new(VecDeque::new()),
            max_idle,
            idle,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Parked>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used connection that can take a call. Those found closed
    /// or expired on the way are dropped; a draining one that has not ended yet is
    /// kept for later.
    fn take(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut parked = self.lock();
        let mut waiting = Vec::new();
        let mut found = None;
        while let Some(mut entry) = parked.pop_back() {
            let limit = if entry.rest.is_some() {
                DRAIN
            } else {
                self.idle
            };
            if now.saturating_duration_since(entry.since) > limit {
                continue;
            }
            if entry.ready() {
                found = Some(entry.conn);
                break;
            }
            if entry.rest.is_some() && !entry.conn.sender.is_closed() {
                waiting.push(entry);
            }
        }
        // Put back, in their order, the ones still draining.
        parked.extend(waiting.into_iter().rev());
        found
    }

    fn park(&self, conn: Conn, rest: Option<Incoming>) {
        if conn.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut parked = self.lock();
        // The oldest first: they expire first, and a full pool drops them.
        while let Some(oldest) = parked.front() {
            let limit = if oldest.rest.is_some() {
                DRAIN
            } else {
                self.idle
            };
            if parked.len() < self.max_idle && now.saturating_duration_since(oldest.since) <= limit
            {
                break;
            }
            parked.pop_front();
        }
        if self.max_idle > 0 {
            parked.push_back(Parked {
                conn,
                rest,
                since: now,
            });
        }
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
        Ok(Conn { sender, driver })
    }

    /// Sends `request` (origin-form URI, with its `Host`) to the upstream at `uri`,
    /// on a pooled connection when one is ready. A request that a reused connection
    /// could not take (it closed meanwhile) is sent again on a new one; one it took
    /// is not, as a call must not run twice.
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
            let sending = conn.sender.try_send_request(request);
            let sent = drive(&mut conn.driver, sending).await;
            match sent {
                Ok(Ok(response)) => {
                    let pool = self.clone();
                    return Ok(response.map(|body| Body {
                        conn: Some(conn),
                        body: Some(body),
                        pool,
                    }));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    Some(again) if reused => request = again,
                    _ => return Err(super::direct::causes(e.error())),
                },
                Err(e) => return Err(e),
            }
        }
    }
}

/// Polls `future` while driving the connection it needs, on the caller's task.
async fn drive<F: Future>(
    driver: &mut Connection<Io, Full<Bytes>>,
    future: F,
) -> Result<F::Output, String> {
    let mut future = pin!(future);
    let mut ended: Option<Result<(), hyper::Error>> = None;
    std::future::poll_fn(|cx| {
        if ended.is_none() {
            if let Poll::Ready(result) = Pin::new(&mut *driver).poll(cx) {
                ended = Some(result);
            }
        }
        match future.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Ok(output)),
            Poll::Pending => match ended.take() {
                // The connection is gone and took the answer with it: hyper's
                // own error says why, if it has one.
                Some(Err(e)) => Poll::Ready(Err(super::direct::causes(&e))),
                Some(Ok(())) => Poll::Ready(Err("the connection closed".into())),
                None => Poll::Pending,
            },
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
                if !conn.poll_alive(cx) {
                    // Ended: the body says how (its end, or an error).
                    this.conn = None;
                }
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
        // Whether ended or not, the pool has it: an answer still open is read off
        // there, and the connection is reused once it has ended.
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
        // Neither held: the expired one was dropped when the pool was next used.
        assert!(pool.lock().len() <= 1);
    }
}
