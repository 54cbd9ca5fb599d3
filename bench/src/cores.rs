//! Which cores the benchmark's processes run on, for the gateway rows measured with
//! Gatehouse on a core of its own: the load generator and the upstream on one core,
//! Gatehouse (or the bare proxy) on another.
//!
//! Why: on a 2-core machine every process of a gateway row shares both cores, so
//! throughput there measures CPU per call summed over the three processes, and the
//! relay's CPU comes straight off the upstream's. Even a bare hyper proxy, doing
//! nothing of its own, got 54–73% of the upstream called directly that way (runs of
//! 2026-12-03 and -04). A gateway deployed in front of a server has cores the server
//! does not use; these rows show what it costs then. Redis, when the store is Redis,
//! is a process of its own and stays on every core.
//!
//! Through `taskset` (util-linux, on every Linux machine), which sets every thread of
//! a running process at once; threads started later inherit it.

use std::process::{Command, Stdio};

/// Two cores of those this process may run on, and all of them.
pub struct Cores {
    all: String,
    clients: String,
    relay: String,
}

impl Cores {
    /// The first two cores this process may run on; `None` with fewer, or without
    /// `taskset`.
    pub fn two() -> Option<Cores> {
        let out = Command::new("taskset")
            .args(["-c", "-p", &std::process::id().to_string()])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        // "pid 42's current affinity list: 0-3,6"
        let text = String::from_utf8(out.stdout).ok()?;
        let all = text.rsplit(": ").next()?.trim().to_owned();
        let mut cores = expand(&all)?.into_iter();
        let (first, second) = (cores.next()?, cores.next()?);
        Some(Cores {
            all,
            clients: first.to_string(),
            relay: second.to_string(),
        })
    }

    /// `clients` on the first core and `relays` on the second; `false` (and nothing
    /// pinned) when `taskset` refuses one.
    pub fn split(&self, clients: &[u32], relays: &[u32]) -> bool {
        let pinned = clients.iter().all(|&pid| pin(pid, &self.clients))
            && relays.iter().all(|&pid| pin(pid, &self.relay));
        if !pinned {
            self.unpin(&[clients, relays].concat());
        }
        pinned
    }

    /// `pids` back on every core; a warning when one stays pinned (the rows after
    /// it would not run as they say).
    pub fn unpin(&self, pids: &[u32]) {
        for &pid in pids {
            if !pin(pid, &self.all) {
                eprintln!(
                    "warning: process {pid} is still on one core; the rows after this one are not comparable"
                );
            }
        }
    }
}

/// Every thread of `pid` on `cores`.
fn pin(pid: u32, cores: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The cores of a list such as "0-3,6".
fn expand(list: &str) -> Option<Vec<usize>> {
    let mut cores = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                cores.extend(from.trim().parse::<usize>().ok()?..=to.trim().parse().ok()?)
            }
            None => cores.push(part.trim().parse().ok()?),
        }
    }
    Some(cores)
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn core_lists_expand() {
        assert_eq!(expand("0-3,6"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(expand("1"), Some(vec![1]));
        assert_eq!(expand("0,x"), None);
    }
}
