//! How much memory request bodies may hold at once, across every connection.
//!
//! A body is read in full before its request is judged (the guard reads a POST
//! before looking its token up; the OAuth endpoints before parsing the form), and
//! each may take 64 KiB for up to `--request-body-timeout`. One HTTP/2 connection
//! carries 100 requests at once and one address 256 connections, so without a bound
//! in all, memory followed what callers chose to upload. Each body takes its place
//! in a budget before it is read: its announced length, or the limit when it is not
//! announced (chunked). A body that finds the budget spent is refused at once (503,
//! `Retry-After: 1`), not queued.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget's unit: a body takes whole KiB of it.
const UNIT: usize = 1024;

/// Shared by every request of one server.
#[derive(Clone)]
pub struct BodyBudget(Arc<Semaphore>);

/// A body's place in the budget, given back when dropped.
pub struct BodyPlace(#[allow(dead_code)] OwnedSemaphorePermit);

impl BodyBudget {
    /// A budget of `bytes` in all.
    pub fn new(bytes: usize) -> Self {
        BodyBudget(Arc::new(Semaphore::new((bytes / UNIT).max(1))))
    }

    /// A place for the body of a request with `headers`, which may be at most
    /// `limit` bytes; `None` when the budget is spent.
    pub fn take(&self, headers: &HeaderMap, limit: usize) -> Option<BodyPlace> {
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let bytes = announced.map_or(limit, |n| n.min(limit));
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        self.0
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(BodyPlace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcing(length: Option<usize>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(length) = length {
            headers.insert(header::CONTENT_LENGTH, length.into());
        }
        headers
    }

    #[test]
    fn bodies_take_their_announced_size_or_the_limit_until_it_is_spent() {
        let budget = BodyBudget::new(64 * UNIT);
        // Unannounced: the whole limit (32 KiB here), twice, and the budget is spent.
        let first = budget.take(&announcing(None), 32 * UNIT).expect("room");
        let second = budget.take(&announcing(None), 32 * UNIT).expect("room");
        assert!(budget.take(&announcing(Some(1)), 32 * UNIT).is_none());
        drop(first);
        // Announced: its size in whole KiB, and never more than the limit.
        let small: Vec<_> = (0..31)
            .map(|_| {
                budget
                    .take(&announcing(Some(1000)), 32 * UNIT)
                    .expect("room")
            })
            .collect();
        assert!(budget.take(&announcing(Some(1025)), 32 * UNIT).is_none());
        let last = budget.take(&announcing(Some(10)), 32 * UNIT).expect("room");
        assert!(budget.take(&announcing(Some(0)), 32 * UNIT).is_none());
        drop((second, small, last));
        assert!(budget
            .take(&announcing(Some(usize::MAX)), 64 * UNIT)
            .is_some());
    }
}
