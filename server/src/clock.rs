//! Wall-clock time, injected. Expiry (codes, tickets, tokens, sessions, store TTLs)
//! reads this clock, so tests move time forward instead of sleeping.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The system clock, or (for tests) the system clock plus an offset that only grows,
/// or a clock that only that offset moves.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Option<Arc<AtomicU64>>,
    /// For [`Clock::frozen`]: the time it started at, in place of the system's.
    frozen_at: Option<u64>,
}

impl Clock {
    pub fn system() -> Self {
        Clock::default()
    }

    /// A clock that [`Clock::advance`] moves forward; clones share it.
    pub fn manual() -> Self {
        Clock {
            offset_ms: Some(Arc::new(AtomicU64::new(0))),
            frozen_at: None,
        }
    }

    /// A manual clock that stands still between [`Clock::advance`]s, for tests that
    /// must not see time pass on a slow machine.
    pub fn frozen() -> Self {
        Clock {
            frozen_at: Some(system_ms()),
            ..Clock::manual()
        }
    }

    /// Moves a manual clock forward. The system clock cannot be moved: this panics,
    /// because a test that thinks it moved time but did not would pass for nothing.
    pub fn advance(&self, by: Duration) {
        match &self.offset_ms {
            Some(offset) => {
                offset.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
            }
            None => panic!("the system clock cannot be advanced; use Clock::manual()"),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let system = self.frozen_at.unwrap_or_else(system_ms);
        let offset = self
            .offset_ms
            .as_ref()
            .map_or(0, |o| o.load(Ordering::SeqCst));
        system + offset
    }

    /// Seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let clock = Clock::manual();
        let copy = clock.clone();
        let before = clock.now_secs();
        copy.advance(Duration::from_secs(3600));
        assert!(clock.now_secs() >= before + 3600);
        assert!(clock.now_secs() < before + 3600 + 5);
    }

    #[test]
    #[should_panic(expected = "cannot be advanced")]
    fn the_system_clock_refuses_to_move() {
        Clock::system().advance(Duration::from_secs(1));
    }
}
