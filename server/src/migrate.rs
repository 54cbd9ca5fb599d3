//! `gatehouse store export` and `gatehouse store import`: move a deployment from one
//! store to another (the embedded file to Redis, say) without losing its clients,
//! grants, tokens, owner password or articles. The format is JSON lines, one record
//! each, with the value in base64, what is left of its lifetime and when that was
//! (an import counts the time since, so nothing lives longer for having waited in a
//! file, and what ran out meanwhile is left out). The store holds
//! only hashes of secrets, so the export does too; it still holds the owner's password
//! hash and every grant, so keep it as private as the store.
//!
//! Its last line, `{"end":N}`, says how many records it holds: an export cut short
//! at a line's end (a full disk, a dropped connection while it was piped) would
//! otherwise import as a smaller one, and the records sorted last (refresh tokens,
//! sessions) would be lost without a word.

use std::io::{BufRead, Write};

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Deserialize, Serialize};

use crate::store::{Entry, Group, Key, Kind, Store, StoreError};

#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    /// When `ttl_ms` was read, in milliseconds since the Unix epoch (exports before
    /// this field have none: their lifetimes count from the import).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exported_at_ms: Option<u64>,
}

/// An export's last line: how many records come before it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    end: usize,
}

/// No export says it was made before this (2026-01-01): an earlier stamp is a clock
/// that was wrong, and its lifetimes count from the import.
const EXPORTS_SINCE_MS: u64 = 1_767_225_600_000;

/// Milliseconds since the Unix epoch, by this machine's clock.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
    #[error("line {line} of the import is not a record: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("the target store already holds {0} records; import into an empty store, or pass --replace to write over what has the same keys")]
    NotEmpty(usize),
    #[error("the import ends without its last line, {{\"end\":N}}: the export was cut short (or made by an older Gatehouse, which wrote none; if you are sure it is whole, add the line {{\"end\":{0}}} to it)")]
    Unfinished(usize),
}

/// The longest lifetime an imported record may say it has left: a kept client's,
/// the longest, is two flags' ([`crate::config::MAX_LIFETIME`] each) at most. Far
/// from overflowing on either backend.
const MAX_IMPORTED_TTL: std::time::Duration =
    std::time::Duration::from_secs(2 * crate::config::MAX_LIFETIME.as_secs());

/// Writes every live record of `store`; returns how many.
pub async fn export(store: &dyn Store, out: &mut impl Write) -> Result<usize, MigrateError> {
    let entries = store.export().await?;
    let exported_at_ms = wall_clock_ms();
    for entry in &entries {
        let line = Line {
            key: entry.key.as_str().to_owned(),
            value: STANDARD.encode(&entry.value),
            ttl_ms: entry.ttl.map(|t| t.as_millis() as u64),
            group: entry.group.as_ref().map(|g| g.as_str().to_owned()),
            exported_at_ms: entry.ttl.map(|_| exported_at_ms),
        };
        let json = serde_json::to_string(&line).map_err(|e| MigrateError::Write(e.into()))?;
        writeln!(out, "{json}").map_err(MigrateError::Write)?;
    }
    let end = serde_json::to_string(&End { end: entries.len() })
        .map_err(|e| MigrateError::Write(e.into()))?;
    writeln!(out, "{end}").map_err(MigrateError::Write)?;
    out.flush().map_err(MigrateError::Write)?;
    Ok(entries.len())
}

/// Writes every record of an export into `store` whose lifetime has not run out
/// since the export; returns how many. Nothing is
/// written unless every line parses, and, without `replace`, unless the store is
/// empty: an older export written over a live deployment would bring back old
/// grant records (whose clients' refresh tokens then fail) and an old password.
pub async fn import(
    store: &dyn Store,
    input: impl BufRead,
    replace: bool,
) -> Result<usize, MigrateError> {
    let mut entries = Vec::new();
    let mut left_out = 0usize;
    let mut ended = false;
    let now_ms = wall_clock_ms();
    for (index, line) in input.lines().enumerate() {
        let malformed = |reason: String| MigrateError::Malformed {
            line: index + 1,
            reason,
        };
        let line = line.map_err(|e| malformed(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        if ended {
            return Err(malformed("it comes after the export's last line".into()));
        }
        if let Ok(End { end }) = serde_json::from_str::<End>(&line) {
            let records = entries.len() + left_out;
            if end != records {
                return Err(malformed(format!(
                    "the export says it holds {end} records, and {records} came before"
                )));
            }
            ended = true;
            continue;
        }
        let parsed: Line = serde_json::from_str(&line).map_err(|e| malformed(e.to_string()))?;
        if !Kind::owns(&parsed.key) {
            return Err(malformed(format!(
                "{:?} is not a key of a Gatehouse record",
                parsed.key
            )));
        }
        if parsed
            .ttl_ms
            .is_some_and(|ms| ms > MAX_IMPORTED_TTL.as_millis() as u64)
        {
            return Err(malformed("its lifetime is longer than twenty years".into()));
        }
        let key = Key::from_raw(parsed.key);
        let group = match parsed.group.as_deref() {
            // A key that carries a group's tag goes into that group all the same:
            // outside it, revoking the grant would leave the record behind.
            None => key.group(),
            Some(raw) => {
                let group = Group::parse(raw)
                    .ok_or_else(|| malformed(format!("{raw:?} is not a group id")))?;
                if key.group().as_ref() != Some(&group) {
                    return Err(malformed("the key does not carry its group's tag".into()));
                }
                Some(group)
            }
        };
        let value = STANDARD
            .decode(parsed.value)
            .map_err(|e| malformed(e.to_string()))?;
        if key == crate::oauth::owner::password_key() {
            crate::oauth::owner::stored_password_hash(value.clone())
                .map_err(|e| malformed(format!("the owner password hash: {e}")))?;
        }
        // What is left of the lifetime now: less the time since the export (by the
        // two machines' clocks; none when the export says it was made in the future
        // or before there were exports).
        let waited = parsed
            .exported_at_ms
            .filter(|&at| at >= EXPORTS_SINCE_MS)
            .map_or(0, |at| now_ms.saturating_sub(at));
        let ttl = match parsed.ttl_ms.map(|ms| ms.saturating_sub(waited)) {
            // It ran out while the export waited.
            Some(0) => {
                left_out += 1;
                continue;
            }
            left => left.map(std::time::Duration::from_millis),
        };
        entries.push(Entry {
            value,
            ttl,
            group,
            key,
        });
    }
    if !ended {
        return Err(MigrateError::Unfinished(entries.len() + left_out));
    }
    if !replace {
        let held = store.export().await?.len();
        if held > 0 {
            return Err(MigrateError::NotEmpty(held));
        }
    }
    for entry in &entries {
        store.put(&entry.key, &entry.value, entry.put()).await?;
    }
    if left_out > 0 {
        tracing::warn!(
            left_out,
            "records whose lifetime ran out since the export were left out (by this \
             machine's clock and the exporting one's)"
        );
    }
    Ok(entries.len())
}
