//! Outbound HTTP, for client-ID metadata documents only. Fetching a URL that a client
//! chose is a server-side request forgery risk, so every fetch:
//! - resolves the host itself and connects only to public addresses (no loopback,
//!   private, link-local, shared, multicast or reserved ranges), which also defeats
//!   DNS rebinding because the checked address is the one connected to;
//! - connects only to port 443, so that it cannot be made to probe other services;
//! - follows no redirects, and ignores proxy environment variables (a proxy would
//!   make the address check meaningless);
//! - gives up after [`FETCH_TIMEOUT`] and reads at most [`MAX_DOCUMENT_BYTES`];
//! - runs with at most [`MAX_FETCHES`] others: anyone can name a document URL
//!   (`/oauth/authorize?client_id=https://…`), each new one is a fetch, and each
//!   fetch holds a connection (TLS and all) for up to five seconds.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use url::{Host, Url};

pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
pub const MAX_FETCHES: usize = 32;
/// Further fetches only for documents whose clients obtained tokens before (Claude's,
/// say): anonymous callers holding all [`MAX_FETCHES`] places with slow documents of
/// their own cannot hold up a known client's refetch.
pub const RESERVED_FETCHES: usize = 8;

/// Why a fetch was not made: [`MAX_FETCHES`] are under way.
pub const BUSY: &str =
    "too many client metadata documents are being fetched at once; try again in a moment";

/// Why a document could not be had. `transient` failures (this server is busy, the
/// host is slow, unreachable or failing) say nothing about the client: the token
/// endpoint answers them with 503 `temporarily_unavailable`, which a client retries,
/// and never with `invalid_client`, which makes Claude register again. Anyone can
/// keep the fetcher busy for a few seconds, so that difference matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    pub reason: String,
    pub transient: bool,
}

impl FetchError {
    fn lasting(reason: impl Into<String>) -> Self {
        FetchError {
            reason: reason.into(),
            transient: false,
        }
    }

    fn transient(reason: impl Into<String>) -> Self {
        FetchError {
            reason: reason.into(),
            transient: true,
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A fetched document and how long it may be cached.
pub struct Fetched {
    pub body: Vec<u8>,
    /// From `Cache-Control: max-age`; `None` when the response forbids caching.
    pub max_age: Option<Duration>,
}

pub struct DocumentFetcher {
    client: reqwest::Client,
    /// The same, with lookups of its own: for documents whose clients obtained
    /// tokens here, so that names anyone else had looked up (hung, say) never hold
    /// up theirs.
    known_client: reqwest::Client,
    allow_loopback: bool,
    fetches: tokio::sync::Semaphore,
    reserved: tokio::sync::Semaphore,
}

impl DocumentFetcher {
    /// `allow_loopback` admits loopback addresses, for tests that serve documents
    /// locally. Never in production. Fails when the HTTP client cannot be built (no
    /// TLS roots, say): a start-up error, never a client without the guard.
    pub fn new(allow_loopback: bool) -> Result<Self, String> {
        Ok(DocumentFetcher {
            client: Self::client(allow_loopback)?,
            known_client: Self::client(allow_loopback)?,
            allow_loopback,
            fetches: tokio::sync::Semaphore::new(MAX_FETCHES),
            reserved: tokio::sync::Semaphore::new(RESERVED_FETCHES),
        })
    }

    fn client(allow_loopback: bool) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .dns_resolver(Arc::new(GuardedResolver::new(allow_loopback)))
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            // No idle connections kept: anyone may name a document on a host of their
            // own (a wildcard name makes every host new), and reqwest keeps idle
            // connections per host without a bound in all, for 90 s. Documents are
            // cached, so a new connection per fetch costs little.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("cannot build the HTTP client for metadata documents: {e}"))
    }

    /// Fetches `url`; `known` (its client obtained tokens before) may also use the
    /// [`RESERVED_FETCHES`] places.
    pub async fn fetch(&self, url: &Url, known: bool) -> Result<Fetched, FetchError> {
        // IP literals never reach the resolver: check them here.
        match url.host() {
            Some(Host::Ipv4(ip)) if !allowed(IpAddr::V4(ip), self.allow_loopback) => {
                return Err(FetchError::lasting(NOT_PUBLIC))
            }
            Some(Host::Ipv6(ip)) if !allowed(IpAddr::V6(ip), self.allow_loopback) => {
                return Err(FetchError::lasting(NOT_PUBLIC))
            }
            _ => {}
        }
        // A document is served on the https port. Any other would let anyone make
        // this server open connections to any port of any public address (its own
        // included, where a firewall may trust it) and report what it found.
        let loopback = self.allow_loopback && crate::net::is_loopback_url(url);
        if !loopback && url.port_or_known_default() != Some(443) {
            return Err(FetchError::lasting(NOT_HTTPS_PORT));
        }
        // Only then a place: what can never work is refused as such, busy or not.
        let place = match self.fetches.try_acquire() {
            Ok(place) => Ok(place),
            Err(_) if known => self.reserved.try_acquire(),
            Err(e) => Err(e),
        };
        let Ok(_place) = place else {
            return Err(FetchError::transient(BUSY));
        };
        let client = if known {
            &self.known_client
        } else {
            &self.client
        };
        let mut response = client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                // A name with only private addresses reads as one that does not
                // resolve: otherwise anyone could ask which internal names (this
                // server's search domains included) exist.
                if caused_by_not_public(&e) || e.is_connect() {
                    FetchError::transient(UNREACHABLE)
                } else if e.is_timeout() {
                    FetchError::transient("fetching the metadata document timed out")
                } else {
                    FetchError::transient("the metadata document could not be fetched")
                }
            })?;
        let status = response.status();
        if status.is_redirection() {
            return Err(FetchError::lasting(
                "the metadata document URL redirects; redirects are not followed",
            ));
        }
        if status != reqwest::StatusCode::OK {
            let reason = format!("the metadata document answered {}", status.as_u16());
            let failing = status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT;
            return Err(if failing {
                FetchError::transient(reason)
            } else {
                FetchError::lasting(reason)
            });
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::lasting("the metadata document is too large"));
        }
        let max_age = cache_lifetime(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| FetchError::transient("reading the metadata document failed"))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::lasting("the metadata document is too large"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { body, max_age })
    }
}

/// How long a response may be cached (RFC 9111): `max-age` when given, less its
/// `Age` (capped at a day), nothing for `no-store`/`no-cache` or a `max-age` that
/// cannot be read (stale), and five minutes otherwise. Every `Cache-Control` line
/// counts (a CDN may add one), and of two `max-age`s the shorter.
fn cache_lifetime(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let mut max_age: Option<u64> = None;
    for line in headers.get_all(reqwest::header::CACHE_CONTROL) {
        let line = line.to_str().ok()?.to_ascii_lowercase();
        for directive in line.split(',').map(str::trim) {
            if directive == "no-store" || directive == "no-cache" {
                return None;
            }
            if let Some(value) = directive.strip_prefix("max-age=") {
                let value = value.trim_matches('"');
                // Too large to read is "a very long time" (RFC 9111 §1.2.2),
                // capped below like any other.
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                let secs = match value.parse::<u64>() {
                    Ok(secs) => secs,
                    Err(_) if digits => u64::MAX,
                    Err(_) => return None,
                };
                max_age = Some(max_age.map_or(secs, |m| m.min(secs)));
            }
        }
    }
    let age = headers
        .get(reqwest::header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    match max_age.map(|secs| secs.saturating_sub(age)) {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs.min(24 * 3600))),
        None => Some(Duration::from_secs(300)),
    }
}

/// Why a fetch was refused when the URL names a port other than 443.
pub const NOT_HTTPS_PORT: &str =
    "a metadata document must be served on the https port, 443; pin it to use another";

/// Why a fetch was refused when the host resolves only to addresses that are not
/// public (or is such an address).
pub const NOT_PUBLIC: &str = "the metadata document's host has no public address";
pub const UNREACHABLE: &str = "the metadata document's host is not reachable";

/// The resolver's refusal, recognisable in reqwest's error chain.
#[derive(Debug)]
struct NotPublic;

impl std::fmt::Display for NotPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(NOT_PUBLIC)
    }
}

impl std::error::Error for NotPublic {}

fn caused_by_not_public(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<NotPublic>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// How many names each HTTP client of the fetcher looks up at once. The system's
/// resolver runs on a blocking thread that a fetch that timed out cannot stop: each
/// lookup keeps its place until the resolver gives up, so names whose servers never
/// answer tie up these places, never the blocking threads the store and Argon2
/// need. Known documents' lookups have places of their own.
const MAX_LOOKUPS: usize = MAX_FETCHES + RESERVED_FETCHES;

/// Resolves names to their public addresses only: a name with none is refused, so
/// the address connected to is the address checked (no DNS-rebinding window).
#[derive(Clone)]
struct GuardedResolver {
    allow_loopback: bool,
    lookups: Arc<tokio::sync::Semaphore>,
}

impl GuardedResolver {
    fn new(allow_loopback: bool) -> Self {
        GuardedResolver {
            allow_loopback,
            lookups: Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS)),
        }
    }

    async fn public_addresses(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let Ok(place) = self.lookups.clone().try_acquire_owned() else {
            return Err("too many names are being looked up".into());
        };
        let name = host.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let _place = place;
            std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 0))
                .map(|found| found.collect::<Vec<SocketAddr>>())
        })
        .await??;
        let addresses: Vec<SocketAddr> = found
            .into_iter()
            .filter(|a| allowed(a.ip(), self.allow_loopback))
            .collect();
        if addresses.is_empty() {
            return Err(Box::new(NotPublic));
        }
        Ok(addresses)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let addresses = resolver.public_addresses(name.as_str()).await?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    is_public(ip) || (allow_loopback && ip.is_loopback())
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link local
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[0] & 0xffc0) == 0xfec0 // site local (deprecated, still routed inside)
        || segments[0] == 0x2002 // 6to4: embeds an IPv4 address that may be private
        || (segments[0] == 0x2001 && segments[1] == 0x0000) // Teredo: likewise
        || (segments[0] == 0x0064 && segments[1] == 0xff9b) // NAT64: may reach private v4
        || ip.to_ipv4().is_some_and(|v4| !is_public_v4(v4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local listener, and the URL of a document it would serve.
    async fn local_document() -> (tokio::net::TcpListener, Url) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = Url::parse(&format!(
            "http://{}/client.json",
            listener.local_addr().expect("addr")
        ))
        .expect("url");
        (listener, url)
    }

    /// Fetches past [`MAX_FETCHES`] are refused at once, not queued: here every
    /// one hangs on a server that accepts and never answers.
    #[tokio::test]
    async fn fetches_past_the_bound_are_refused_at_once() {
        let (listener, url) = local_document().await;
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let fetcher = Arc::new(DocumentFetcher::new(true).expect("fetcher"));
        let hanging: Vec<_> = (0..MAX_FETCHES)
            .map(|_| {
                let (fetcher, url) = (fetcher.clone(), url.clone());
                tokio::spawn(async move { fetcher.fetch(&url, false).await.map(|_| ()) })
            })
            .collect();
        while fetcher.fetches.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let refused = fetcher
            .fetch(&url, false)
            .await
            .map(|_| ())
            .expect_err("busy");
        assert_eq!(refused, FetchError::transient(BUSY));
        assert!(started.elapsed() < Duration::from_secs(1));
        // A known client's document still gets a place of its own.
        let known =
            tokio::time::timeout(Duration::from_millis(500), fetcher.fetch(&url, true)).await;
        assert!(
            known.is_err(),
            "it is fetched (and hangs), not refused as busy"
        );
        for fetch in hanging {
            fetch.abort();
        }
        held.abort();
    }

    /// A fetched document's connection is closed once it is read, not kept idle for
    /// the next fetch from that host: hosts are the caller's to choose, so a pool of
    /// them would have no bound.
    #[tokio::test]
    async fn a_fetch_keeps_no_connection_open() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (listener, url) = local_document().await;
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                socket.read_exact(&mut byte).await.expect("head");
                head.push(byte[0]);
            }
            // Keep-alive offered: only the client's pool decides whether it stays.
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                .await
                .expect("answer");
            // The client closes its side once it has the document.
            let closed = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut byte)).await;
            matches!(closed, Ok(Ok(0)))
        });
        let fetcher = DocumentFetcher::new(true).expect("fetcher");
        let fetched = fetcher.fetch(&url, false).await.expect("fetched");
        assert_eq!(fetched.body, b"{}");
        assert!(served.await.expect("join"), "the connection was kept open");
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "fec0::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(!is_public(private.parse().expect(private)), "{private}");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().expect(public)), "{public}");
        }
    }

    #[tokio::test]
    async fn the_resolver_keeps_public_addresses_only() {
        let guarded = GuardedResolver::new(false);
        let refused = guarded
            .public_addresses("localhost")
            .await
            .expect_err("localhost is loopback");
        assert!(refused.is::<NotPublic>(), "{refused}");
        let refused = guarded
            .public_addresses("10.0.0.1")
            .await
            .expect_err("private");
        assert!(refused.is::<NotPublic>(), "{refused}");
        let testing = GuardedResolver::new(true);
        let found = testing
            .public_addresses("127.0.0.1")
            .await
            .expect("loopback allowed in tests");
        assert!(found.iter().all(|a| a.ip().is_loopback()));
        // Each lookup holds a place until the resolver is done, and gives it back.
        assert_eq!(testing.lookups.available_permits(), MAX_LOOKUPS);
        let held = testing
            .lookups
            .clone()
            .acquire_many_owned(MAX_LOOKUPS as u32)
            .await
            .expect("places");
        let refused = testing
            .public_addresses("127.0.0.1")
            .await
            .expect_err("no place");
        assert!(refused.to_string().contains("too many"), "{refused}");
        drop(held);
        testing
            .public_addresses("127.0.0.1")
            .await
            .expect("a place again");
    }

    /// Asserts that a fetcher for the real world refuses each URL with `refusal`.
    async fn assert_refused_as(urls: &[&str], refusal: FetchError) {
        let fetcher = DocumentFetcher::new(false).expect("client");
        for url in urls {
            let refused = fetcher
                .fetch(&Url::parse(url).expect("url"), false)
                .await
                .err()
                .expect("refused");
            assert_eq!(refused, refusal, "{url}");
        }
    }

    async fn assert_refused(urls: &[&str], reason: &str) {
        assert_refused_as(urls, FetchError::lasting(reason)).await;
    }

    #[tokio::test]
    async fn a_fetch_from_a_private_address_is_refused_for_that_reason() {
        assert_refused(
            &[
                "https://127.0.0.1/doc",
                "https://[::1]/doc",
                "https://10.1.2.3:8443/doc",
            ],
            NOT_PUBLIC,
        )
        .await;
    }

    /// A name with only private addresses is refused as one that does not resolve:
    /// the answer tells nobody which internal names exist.
    #[tokio::test]
    async fn a_name_with_only_private_addresses_reads_as_one_that_does_not_resolve() {
        assert_refused_as(
            &["https://localhost/doc", "https://no-such-host.invalid/doc"],
            FetchError::transient(UNREACHABLE),
        )
        .await;
    }

    /// Nothing is even resolved: the refusal is the same for any host.
    #[tokio::test]
    async fn a_fetch_from_a_port_other_than_443_is_refused_before_connecting() {
        assert_refused(
            &[
                "https://1.1.1.1:6379/doc",
                "https://example.com:8443/doc",
                "https://[2606:4700:4700::1111]:22/doc",
            ],
            NOT_HTTPS_PORT,
        )
        .await;
    }

    #[test]
    fn cache_lifetime_follows_cache_control() {
        let headers = |value: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::CACHE_CONTROL,
                value.parse().expect("header"),
            );
            h
        };
        assert_eq!(
            cache_lifetime(&headers("public, max-age=600")),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            cache_lifetime(&headers("max-age=99999999")),
            Some(Duration::from_secs(86400))
        );
        assert_eq!(cache_lifetime(&headers("no-store")), None);
        assert_eq!(cache_lifetime(&headers("max-age=0")), None);
        assert_eq!(
            cache_lifetime(&reqwest::header::HeaderMap::new()),
            Some(Duration::from_secs(300))
        );
        // Unreadable: stale (RFC 9111 §4.2.1), not five minutes; too large to read,
        // a long time (§1.2.2), capped.
        assert_eq!(cache_lifetime(&headers("max-age=-1")), None);
        assert_eq!(
            cache_lifetime(&headers("max-age=99999999999999999999")),
            Some(Duration::from_secs(86400))
        );
        // A second line (a CDN's) counts; of two max-ages, the shorter.
        let mut two = headers("max-age=86400");
        two.append(
            reqwest::header::CACHE_CONTROL,
            "no-store".parse().expect("h"),
        );
        assert_eq!(cache_lifetime(&two), None);
        let mut two = headers("max-age=86400");
        two.append(
            reqwest::header::CACHE_CONTROL,
            "max-age=60".parse().expect("h"),
        );
        assert_eq!(cache_lifetime(&two), Some(Duration::from_secs(60)));
        // What a cache on the way kept it for is gone from its lifetime.
        let mut aged = headers("max-age=600");
        aged.insert(reqwest::header::AGE, "500".parse().expect("h"));
        assert_eq!(cache_lifetime(&aged), Some(Duration::from_secs(100)));
        aged.insert(reqwest::header::AGE, "900".parse().expect("h"));
        assert_eq!(cache_lifetime(&aged), None);
    }
}
