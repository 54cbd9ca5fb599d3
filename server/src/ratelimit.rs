//! In-memory limits per client address. Kept in memory on purpose: a limit per
//! instance is still a limit, and it must not depend on the store (an attacker must
//! not be able to fill the store, nor slow every request with a store write). Time is
//! tokio's, so tests pause it instead of sleeping.

use std::{collections::HashMap, hash::Hash, net::IpAddr, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// Addresses tracked at once; past this the oldest entries go.
pub const MAX_TRACKED: usize = 100_000;

/// When the next attempt is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, at least one, for a `Retry-After` header.
    pub fn seconds(self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// The key an address is limited under: IPv4 addresses alone, IPv6 addresses by
/// their /64, because one host usually holds a whole /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6([s[0], s[1], s[2], s[3], 0, 0, 0, 0].into())
            }
        },
    }
}

/// What a client counts as: its address (an IPv6 one by its /64, [`address_key`]),
/// and for IPv6 also the /48 around it, which a home or a tunnel broker hands out
/// whole (65,536 /64s). Two kinds, so that a /64 and its /48 never share a key even
/// when their first addresses are the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    Address(IpAddr),
    Wide(IpAddr),
}

impl Network {
    /// The networks `address` counts in.
    pub fn of(address: IpAddr) -> [Option<Network>; 2] {
        let own = address_key(address);
        let wide = match own {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Some(Network::Wide(IpAddr::V6(
                    [s[0], s[1], s[2], 0, 0, 0, 0, 0].into(),
                )))
            }
            IpAddr::V4(_) => None,
        };
        [Some(Network::Address(own)), wide]
    }

    /// The same, the wider first (its /48 before an IPv6 address's /64).
    pub fn wide_first(address: IpAddr) -> impl Iterator<Item = Network> {
        let [own, wide] = Network::of(address.to_canonical());
        [wide, own].into_iter().flatten()
    }
}

/// At most `limit` events per key (a client address by default) in each fixed window.
pub struct WindowLimiter<K = IpAddr> {
    limit: u32,
    window: Duration,
    state: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Clone + Eq + Hash> WindowLimiter<K> {
    pub fn new(limit: u32, window: Duration) -> Self {
        WindowLimiter {
            limit: limit.max(1),
            window,
            state: Mutex::default(),
        }
    }

    /// Counts an event of `key`, or says when the next one is allowed.
    pub fn hit_key(&self, key: &K) -> Result<(), RetryAfter> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() >= MAX_TRACKED && !state.contains_key(key) {
            let window = self.window;
            state.retain(|_, (start, _)| now.duration_since(*start) < window);
            if state.len() >= MAX_TRACKED {
                if let Some(oldest) = state
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(k, _)| k.clone())
                {
                    state.remove(&oldest);
                }
            }
        }
        let entry = state.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return Err(RetryAfter(self.window - now.duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }

    /// Whether an event of `key` would be counted now, without counting it.
    pub fn check_key(&self, key: &K) -> Result<(), RetryAfter> {
        let now = Instant::now();
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.get(key) {
            Some((start, count))
                if now.duration_since(*start) < self.window && *count >= self.limit =>
            {
                Err(RetryAfter(self.window - now.duration_since(*start)))
            }
            _ => Ok(()),
        }
    }

    /// Takes back one event of `key` in the current window, if it holds any (what
    /// the event stood for is gone again).
    pub fn give_back(&self, key: &K) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, count)) = state.get_mut(key) {
            *count = count.saturating_sub(1);
        }
    }
}

impl WindowLimiter<IpAddr> {
    /// Counts an event from `ip`, or says when the next one is allowed.
    pub fn hit(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        self.hit_key(&address_key(ip))
    }
}

impl WindowLimiter<Network> {
    /// Counts an event from `ip` against its address (an IPv6 /64) and, for IPv6,
    /// against its /48 as well (anyone can get a /48, and its 65,536 /64s, each
    /// a key of its own); see [`Self::hit_all`].
    pub fn hit_networks(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        let networks: Vec<Network> = Network::wide_first(ip).collect();
        self.hit_all(&networks).map_err(|(_, wait)| wait)
    }

    /// Counts an event against each of `networks` in turn (the /48 first, so that a
    /// refusal there leaves nothing counted for a new /64); once one is full,
    /// nothing is counted, and it says which and when to try again.
    pub fn hit_all(&self, networks: &[Network]) -> Result<(), (Network, RetryAfter)> {
        for (counted, network) in networks.iter().enumerate() {
            if let Err(wait) = self.hit_key(network) {
                for earlier in &networks[..counted] {
                    self.give_back(earlier);
                }
                return Err((*network, wait));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn windows_limit_per_address_and_reset() {
        let limiter = WindowLimiter::new(2, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        assert!(limiter.hit(a).is_ok());
        assert!(limiter.hit(a).is_ok());
        let wait = limiter.hit(a).expect_err("third in the window");
        assert_eq!(wait.seconds(), 60);
        assert!(limiter.hit(b).is_ok(), "another address is not affected");
        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(limiter.hit(a).expect_err("still limited").seconds(), 15);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(limiter.hit(a).is_ok(), "a new window");
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_given_back_makes_room_and_a_check_counts_nothing() {
        let limiter = WindowLimiter::new(2, Duration::from_secs(60));
        let key = "client";
        assert!(limiter.check_key(&key).is_ok());
        limiter.hit_key(&key).expect("first");
        limiter.hit_key(&key).expect("second");
        assert_eq!(limiter.check_key(&key).expect_err("full").seconds(), 60);
        limiter.give_back(&key);
        assert!(limiter.check_key(&key).is_ok());
        limiter.hit_key(&key).expect("the place given back");
        assert!(limiter.hit_key(&key).is_err());
        // Given back more often than counted: never below none.
        for _ in 0..5 {
            limiter.give_back(&key);
        }
        limiter.hit_key(&key).expect("one");
        limiter.hit_key(&key).expect("two");
        assert!(limiter.hit_key(&key).is_err());
        limiter.give_back(&"never counted");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(limiter.check_key(&key).is_ok(), "a new window");
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(one), address_key(other));
        assert_ne!(address_key(one), address_key(elsewhere));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(
            address_key(mapped),
            "192.0.2.1".parse::<IpAddr>().expect("ip")
        );
    }
}
