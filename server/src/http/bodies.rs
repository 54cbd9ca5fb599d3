//! Memory for request bodies, in all. Each body is bounded (64 KiB, 160 KiB for the
//! console's server functions) and must arrive within `--request-body-timeout`, but a
//! body is read before its request is judged, so without a bound in all, memory
//! would follow what callers upload: 256 connections × 100 HTTP/2 streams × 64 KiB
//! from one address.
//!
//! What has arrived of the bodies of requests not yet answered is counted as it
//! arrives (never what a body announces: a trickle of empty bodies would spend a
//! budget charged up front), in all and per address like connections: one IPv6 /64
//! (or IPv4 address) holds at most [`ADDRESS_SHARE`] of the whole, one /48
//! [`WIDE_SHARE`] times that. A body that would go past either is refused at once
//! (its frame dropped): 429 when its address holds its share, 503 when the whole is
//! spent. Without a trusted proxy, 127.0.0.1/::1 count in the whole only. A request gives
//! back what its body took when its answer's head is ready and its body is dropped.
//! A body announced larger than [`SMALL_BODY`], or not announced (chunked), may use
//! only what [`RESERVE_PART`] leaves of the whole: honest large uploads, however
//! many, leave room for the small bodies nearly every request has. (Small bodies
//! that stall are bounded only by their address's share and the deadline.)

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::Response,
};

use crate::{
    http::listener::{BodyTimedOut, WIDE_SHARE},
    ratelimit::Network,
};

/// The part of the whole one address (an IPv6 /64) may hold: 1/32 of it.
pub const ADDRESS_SHARE: usize = 32;

/// A body announced at no more than this, and charged no more (its frames' costs
/// included), may use the whole budget; larger ones only what [`RESERVE_PART`]
/// leaves.
pub const SMALL_BODY: usize = 8 * 1024;

/// The part of the whole kept for small bodies: 1/8.
pub const RESERVE_PART: usize = 8;

/// What each frame costs besides its bytes: a body read whole keeps one `Bytes` per
/// frame, each an allocation of its own (the listener copies a frame out of the
/// buffer it was read into, which one byte per HTTP/1 chunk would otherwise keep).
pub const FRAME_COST: usize = 64;

/// Bytes of request bodies held at once, in all and per network. Clones share it.
#[derive(Clone)]
pub struct Budget(Arc<Counts>);

struct Counts {
    total: usize,
    used: AtomicUsize,
    /// `used`, for `/metrics` (all budgets of the process together).
    gauge: metrics::Gauge,
    by_network: Mutex<HashMap<Network, usize>>,
}

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many request bodies from one address at once")]
    Address,
    #[error("too many request bodies at once")]
    All,
}

impl Budget {
    pub fn new(total: usize) -> Self {
        // The gauge is the recorder's only if it is made after it is installed.
        crate::telemetry::handle();
        Budget(Arc::new(Counts {
            total,
            used: AtomicUsize::new(0),
            gauge: metrics::gauge!(crate::telemetry::BODY_BYTES),
            by_network: Mutex::default(),
        }))
    }

    /// A charge for one request's body from `ip`, of `announced` bytes if it says;
    /// `exempt` counts in the whole only.
    pub fn charge(&self, ip: IpAddr, exempt: bool, announced: Option<u64>) -> Charge {
        Charge {
            budget: self.clone(),
            large: announced.is_none_or(|length| length > SMALL_BODY as u64),
            networks: if exempt {
                [None, None]
            } else {
                Network::of(ip)
            },
            held: AtomicUsize::new(0),
            head: AtomicUsize::new(0),
        }
    }

    /// Bytes held now, in all.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    fn share(&self, network: &Network) -> usize {
        let address = (self.0.total / ADDRESS_SHARE).max(1);
        match network {
            Network::Address(_) => address,
            Network::Wide(_) => address.saturating_mul(WIDE_SHARE),
        }
    }
}

/// What one request's body holds of the [`Budget`], given back when dropped.
pub struct Charge {
    budget: Budget,
    /// Announced larger than [`SMALL_BODY`], or not announced.
    large: bool,
    networks: [Option<Network>; 2],
    held: AtomicUsize,
    /// What of `held` is the request's head.
    head: AtomicUsize,
}

impl Charge {
    /// Counts a frame of `bytes` more of this body (with its [`FRAME_COST`]), unless
    /// that goes past its address's share or the whole; then nothing is counted.
    pub fn take(&self, bytes: usize) -> Result<(), Refused> {
        if bytes == 0 {
            return Ok(());
        }
        self.take_cost(bytes.saturating_add(FRAME_COST), false)
    }

    /// Counts a request's head (see `listener::head_cost`) as the first of what its
    /// request holds; refused as a body's frame would be. It does not make its body
    /// a large one.
    pub fn take_head(&self, bytes: usize) -> Result<(), Refused> {
        self.take_cost(bytes, true)
    }

    fn take_cost(&self, cost: usize, head: bool) -> Result<(), Refused> {
        let counts = &self.budget.0;
        // The address's share first, so that a caller past it takes nothing of the
        // whole, even for a moment; the lock is held until the whole has said yes.
        let mut by_network = self
            .networks
            .iter()
            .any(Option::is_some)
            .then(|| counts.by_network.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(by_network) = &by_network {
            let over = self.networks.iter().flatten().any(|network| {
                let held = by_network.get(network).copied().unwrap_or(0);
                held.saturating_add(cost) > self.budget.share(network)
            });
            if over {
                return Err(refuse(Refused::Address));
            }
        }
        // A large body leaves the reserve to small ones; so does one that said it
        // was small and is not.
        let body = self.held.load(Ordering::Relaxed) - self.head.load(Ordering::Relaxed);
        let limit = if !self.large && (head || body.saturating_add(cost) <= SMALL_BODY) {
            counts.total
        } else {
            counts.total - counts.total / RESERVE_PART
        };
        // A head is refused by its address's share only: when bodies hold the whole,
        // requests without one (a load balancer's `/healthz`, a consent page) still
        // get in, and the heads they hold are bounded per address.
        let taken = counts
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(cost).filter(|&used| head || used <= limit)
            });
        if taken.is_err() {
            return Err(refuse(Refused::All));
        }
        if let Some(by_network) = &mut by_network {
            for network in self.networks.iter().flatten() {
                *by_network.entry(*network).or_default() += cost;
            }
        }
        if head {
            self.head.fetch_add(cost, Ordering::Relaxed);
        }
        self.held.fetch_add(cost, Ordering::Relaxed);
        counts.gauge.increment(cost as f64);
        Ok(())
    }
}

/// The answer to a request refused before it reached the router (its head past its
/// address's share): 429, as a body's refusal is, in plain text (no endpoint has
/// read it yet to answer in its own language).
pub fn refusal(refused: Refused) -> Response {
    let unread = Unread::of(&refused);
    let mut response = Response::new(axum::body::Body::from(unread.why));
    *response.status_mut() = unread.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    unread.finish(response)
}

/// Counts a refusal, and logs it at most once a minute for each kind (a caller can
/// cause as many as it likes).
fn refuse(refused: Refused) -> Refused {
    match refused {
        Refused::Address => {
            crate::telemetry::rate_limited("body_memory_address");
            crate::warn_throttled!(
                "refused a request body: its address holds its share of request bodies (see --max-body-memory)"
            );
        }
        Refused::All => {
            crate::telemetry::rate_limited("body_memory");
            crate::warn_throttled!(
                "refused a request body: all of --max-body-memory is held by bodies being read"
            );
        }
    }
    refused
}

impl Drop for Charge {
    fn drop(&mut self) {
        let held = *self.held.get_mut();
        if held == 0 {
            return;
        }
        let counts = &self.budget.0;
        counts.used.fetch_sub(held, Ordering::Relaxed);
        counts.gauge.decrement(held as f64);
        if self.networks.iter().any(Option::is_some) {
            let mut by_network = counts.by_network.lock().unwrap_or_else(|e| e.into_inner());
            for network in self.networks.iter().flatten() {
                if let Some(count) = by_network.get_mut(network) {
                    *count = count.saturating_sub(held);
                    if *count == 0 {
                        by_network.remove(network);
                    }
                }
            }
        }
    }
}

/// The first error of type `T` in `error`'s chain of causes, if any.
fn cause<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<T>())
}

/// Why a request's body could not be read, as an endpoint answers it in its own
/// language (OAuth JSON, JSON-RPC, the HTML error page): its status and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unread {
    pub status: StatusCode,
    pub why: &'static str,
}

impl Unread {
    /// `error` from reading a body: past its deadline (408), past its size (413),
    /// refused by the [`Budget`] (429 or 503), else broken off (400).
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Unread {
        let (status, why) = if cause::<BodyTimedOut>(error).is_some() {
            (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            )
        } else if let Some(refused) = cause::<Refused>(error) {
            match refused {
                Refused::Address => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many request bodies from your address at once",
                ),
                Refused::All => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many request bodies at once; try again shortly",
                ),
            }
        } else if cause::<http_body_util::LengthLimitError>(error).is_some() {
            return Unread::TOO_LARGE;
        } else {
            (
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        };
        Unread { status, why }
    }

    /// A body over the size its endpoint takes.
    pub const TOO_LARGE: Unread = Unread {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        why: "the request body is too large",
    };

    /// Adds what every such answer says: the rest of the body is unread, so hyper
    /// closes the connection after the answer (else a client could send its next
    /// request on it and see it closed without an answer); and, for a refusal by the
    /// budget, when to try again.
    pub fn finish(&self, mut response: Response) -> Response {
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    /// A frame whose charge, with its [`FRAME_COST`], is `cost`.
    fn costing(cost: usize) -> usize {
        cost - FRAME_COST
    }

    #[test]
    fn an_address_holds_its_share_and_the_whole_is_shared_out() {
        let share = 1000;
        let budget = Budget::new(ADDRESS_SHARE * share);
        let first = budget.charge(ip("2001:db8:1:1::1"), false, None);
        first.take(costing(share - 100)).expect("within its share");
        // Another host of the same /64 shares it.
        let second = budget.charge(ip("2001:db8:1:1::2"), false, None);
        assert_eq!(second.take(costing(101)), Err(Refused::Address));
        second
            .take(costing(100))
            .expect("what is left of the share");
        assert_eq!(budget.used(), share, "a refused frame counts nothing");
        // Another /64 of the same /48 has a share of its own, up to the /48's.
        let mut wide = Vec::new();
        for subnet in 2..=WIDE_SHARE {
            let charge = budget.charge(ip(&format!("2001:db8:1:{subnet}::1")), false, None);
            charge.take(costing(share)).expect("a share of its own");
            wide.push(charge);
        }
        let past_wide = budget.charge(ip("2001:db8:1:ff::1"), false, None);
        assert_eq!(past_wide.take(1), Err(Refused::Address), "the /48 is full");
        // Another address is not held up by it.
        budget
            .charge(ip("192.0.2.1"), false, None)
            .take(costing(share))
            .expect("another address");
        drop((first, second));
        past_wide
            .take(1)
            .expect("given back when the charge is dropped");
        drop((past_wide, wide));
        assert_eq!(budget.used(), 0, "everything given back");
    }

    /// One byte per frame is charged what a frame holds, not one byte.
    #[test]
    fn tiny_frames_are_charged_what_they_hold() {
        let share = 1000;
        let budget = Budget::new(ADDRESS_SHARE * share);
        let charge = budget.charge(ip("192.0.2.9"), false, None);
        let frames = (0..share).take_while(|_| charge.take(1).is_ok()).count();
        assert_eq!(frames, share / (1 + FRAME_COST));
        // Empty frames hold nothing.
        let empty = budget.charge(ip("192.0.2.9"), false, None);
        empty.take(0).expect("nothing to count");
    }

    /// Each way a read can fail is told apart, through axum's error wrapping.
    #[tokio::test]
    async fn an_unread_body_says_why() {
        let too_large = axum::body::to_bytes(axum::body::Body::from(vec![0u8; 100]), 10)
            .await
            .expect_err("over the limit");
        assert_eq!(Unread::of(&too_large).status, StatusCode::PAYLOAD_TOO_LARGE);
        for (refused, status) in [
            (Refused::Address, StatusCode::TOO_MANY_REQUESTS),
            (Refused::All, StatusCode::SERVICE_UNAVAILABLE),
        ] {
            let stream = futures::stream::iter([Err::<bytes::Bytes, _>(refused)]);
            let error = axum::body::to_bytes(axum::body::Body::from_stream(stream), 10)
                .await
                .expect_err("refused");
            assert_eq!(Unread::of(&error).status, status);
        }
        let broken =
            futures::stream::iter([Err::<bytes::Bytes, _>(std::io::Error::other("reset"))]);
        let error = axum::body::to_bytes(axum::body::Body::from_stream(broken), 10)
            .await
            .expect_err("broken off");
        let unread = Unread::of(&error);
        assert_eq!(unread.status, StatusCode::BAD_REQUEST);
        let response = unread.finish(Response::default());
        assert_eq!(response.headers()[header::CONNECTION], "close");
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    /// Large bodies, however many, leave an eighth of the whole to small ones.
    #[test]
    fn large_bodies_leave_a_reserve_for_small_ones() {
        let total = 64 * SMALL_BODY;
        let budget = Budget::new(total);
        let proxy = |announced: usize| budget.charge(ip("127.0.0.1"), true, Some(announced as u64));
        let mut large = Vec::new();
        // Uploads of large bodies, 4 KiB a frame, as many as are let in.
        'uploads: loop {
            let upload = proxy(16 * costing(4096));
            for _ in 0..16 {
                if upload.take(costing(4096)).is_err() {
                    break 'uploads;
                }
            }
            large.push(upload);
        }
        // Each upload is charged 64 KiB: seven fill all but the reserve, and the
        // eighth is refused once past its first 8 KiB.
        let reserve = total / RESERVE_PART;
        assert_eq!(large.len(), 7);
        assert_eq!(budget.used(), total - reserve);
        // Small bodies use the reserve, up to the whole.
        let mut small = Vec::new();
        while budget.used() + SMALL_BODY <= total {
            let body = proxy(costing(SMALL_BODY));
            body.take(costing(SMALL_BODY)).expect("a small body");
            small.push(body);
        }
        assert_eq!(small.len(), reserve / SMALL_BODY);
        assert_eq!(
            proxy(costing(SMALL_BODY)).take(costing(SMALL_BODY)),
            Err(Refused::All)
        );
        // A request without a body still gets in: its head is bounded per address.
        proxy(0)
            .take_head(500)
            .expect("a head when bodies hold the whole");
        // A small body behind a large head (big cookies, say) is still a small one.
        drop((small.pop(), small.pop()));
        let behind_cookies = proxy(100);
        behind_cookies
            .take_head(SMALL_BODY + 1024)
            .expect("a head in the reserve");
        behind_cookies.take(100).expect("its small body, too");
        drop(behind_cookies);
        // A body that said it was small and is not is held to the large ones' part.
        drop(small);
        let liar = proxy(100);
        liar.take(costing(SMALL_BODY))
            .expect("within what it may say");
        assert_eq!(liar.take(costing(4096)), Err(Refused::All));
        // Not announced (chunked): large.
        let chunked = budget.charge(ip("127.0.0.1"), true, None);
        assert_eq!(chunked.take(costing(4096)), Err(Refused::All));
    }

    #[test]
    fn the_whole_is_a_bound_for_exempt_peers_too() {
        let budget = Budget::new(ADDRESS_SHARE * 1000);
        // Small bodies, 31,000 in all, through one proxy.
        let proxy: Vec<_> = (0..4)
            .map(|_| {
                let body = budget.charge(ip("127.0.0.1"), true, Some(7750));
                body.take(costing(7750))
                    .expect("a proxy is not held to an address's share");
                body
            })
            .collect();
        let other = budget.charge(ip("::1"), true, Some(1001));
        assert_eq!(other.take(costing(1001)), Err(Refused::All));
        other.take(costing(1000)).expect("up to the whole");
        let outsider = budget.charge(ip("192.0.2.7"), false, None);
        assert_eq!(outsider.take(1), Err(Refused::All));
        drop(proxy);
        outsider.take(1).expect("room again");
    }
}
