//! The owner: the one person who may approve clients. Their password (Argon2id), the
//! first-run setup token, sign-in sessions, and the limit on failed sign-ins.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Algorithm, Argon2,
};

use super::secret::{random_token, SecretHash};
use crate::store::{Key, Kind, Put, SharedStore, StoreError, StoreResult};

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const SIGN_IN_TTL: Duration = Duration::from_secs(12 * 3600);
pub const SETUP_TTL: Duration = Duration::from_secs(3600);

/// Hashes a password as an Argon2id PHC string with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Checks that `phc` is an Argon2id PHC string, for configuration validation.
pub fn check_password_hash(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc)
        .map_err(|e| format!("--owner-password-hash is not a PHC string: {e}"))?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err("--owner-password-hash must be an Argon2id hash ($argon2id$…)".into());
    }
    Ok(())
}

pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    Ok(())
}

/// Verifies on the blocking pool: Argon2 is deliberately slow.
async fn verify(phc: String, password: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc)
            .map(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A hash to verify against when no password exists, so that a sign-in takes as long
/// either way and never reveals whether a password is set.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_token()).unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("this setup link is not valid: it expired, was used, or a password is already set")]
    InvalidToken,
    #[error("{0}")]
    WeakPassword(String),
    /// Hashing the password failed (the blocking task died, or Argon2 refused).
    #[error("cannot hash the password: {0}")]
    Hashing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Owner {
    store: SharedStore,
    /// From `--owner-password-hash`; takes precedence over a stored password.
    configured_hash: Option<String>,
}

fn password_key() -> Key {
    Key::new(Kind::OWNER, "password")
}

impl Owner {
    pub fn new(store: SharedStore, configured_hash: Option<String>) -> Self {
        Owner {
            store,
            configured_hash,
        }
    }

    async fn password_hash(&self) -> StoreResult<Option<String>> {
        if let Some(hash) = &self.configured_hash {
            return Ok(Some(hash.clone()));
        }
        let stored = self.store.get(&password_key()).await?;
        Ok(stored.and_then(|raw| String::from_utf8(raw).ok()))
    }

    pub async fn has_password(&self) -> StoreResult<bool> {
        Ok(self.password_hash().await?.is_some())
    }

    pub async fn verify_password(&self, password: &str) -> StoreResult<bool> {
        let (hash, exists) = match self.password_hash().await? {
            Some(hash) => (hash, true),
            None => (decoy_hash().to_owned(), false),
        };
        Ok(verify(hash, password.to_owned()).await && exists)
    }

    /// Stores a new password (`gatehouse owner set-password`, or first-run setup).
    pub async fn set_password(&self, password: &str) -> Result<(), SetupError> {
        check_new_password(password).map_err(SetupError::WeakPassword)?;
        let password = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| SetupError::Hashing(e.to_string()))?
            .map_err(SetupError::Hashing)?;
        self.store
            .put(&password_key(), hash.as_bytes(), Put::forever())
            .await?;
        Ok(())
    }

    /// A one-time setup token for first start, or `None` when a password exists.
    pub async fn create_setup_token(&self) -> StoreResult<Option<String>> {
        if self.has_password().await? {
            return Ok(None);
        }
        let token = random_token();
        self.store
            .put(
                &Key::new(Kind::SETUP, SecretHash::of(&token).as_str()),
                b"",
                Put::ttl(SETUP_TTL),
            )
            .await?;
        Ok(Some(token))
    }

    pub async fn setup_token_is_valid(&self, token: &str) -> StoreResult<bool> {
        let key = Key::new(Kind::SETUP, SecretHash::of(token).as_str());
        Ok(!self.has_password().await? && self.store.get(&key).await?.is_some())
    }

    /// Sets the first password with a setup token, once.
    pub async fn complete_setup(&self, token: &str, password: &str) -> Result<(), SetupError> {
        check_new_password(password).map_err(SetupError::WeakPassword)?;
        if self.has_password().await? {
            return Err(SetupError::InvalidToken);
        }
        let key = Key::new(Kind::SETUP, SecretHash::of(token).as_str());
        if self.store.take(&key).await?.is_none() {
            return Err(SetupError::InvalidToken);
        }
        self.set_password(password).await
    }

    /// Starts a session; returns the cookie value. The store keeps only its hash.
    pub async fn new_session(&self) -> StoreResult<String> {
        let id = random_token();
        let key = Key::new(Kind::SESSION, SecretHash::of(&id).as_str());
        self.store
            .put(&key, b"owner", Put::ttl(SIGN_IN_TTL))
            .await?;
        Ok(id)
    }

    /// The session's hash when `cookie` names a live session.
    pub async fn session(&self, cookie: &str) -> StoreResult<Option<SecretHash>> {
        let hash = SecretHash::of(cookie);
        let live = self
            .store
            .get(&Key::new(Kind::SESSION, hash.as_str()))
            .await?
            .is_some();
        Ok(live.then_some(hash))
    }

    pub async fn end_session(&self, cookie: &str) -> StoreResult<()> {
        self.store
            .delete(&Key::new(Kind::SESSION, SecretHash::of(cookie).as_str()))
            .await?;
        Ok(())
    }
}

/// Limits failed sign-ins per client address and in total, in fixed windows. Kept in
/// memory: a limit per instance is still a limit, and it must not depend on the store
/// (an attacker must not be able to fill the store).
pub struct SignInLimiter {
    per_address: u32,
    global: u32,
    window: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    global: Option<(Instant, u32)>,
    addresses: HashMap<IpAddr, (Instant, u32)>,
}

/// When the next attempt is allowed.
#[derive(Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl SignInLimiter {
    pub fn new(per_address: u32, global: u32, window: Duration) -> Self {
        SignInLimiter {
            per_address,
            global,
            window,
            state: Mutex::default(),
        }
    }

    /// Whether `address` may try now.
    pub fn check(&self, address: IpAddr) -> Result<(), RetryAfter> {
        let now = Instant::now();
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let blocked = |entry: Option<&(Instant, u32)>, limit: u32| match entry {
            Some((start, count)) if now.duration_since(*start) < self.window && *count >= limit => {
                Some(self.window - now.duration_since(*start))
            }
            _ => None,
        };
        if let Some(wait) = blocked(state.addresses.get(&address), self.per_address)
            .or_else(|| blocked(state.global.as_ref(), self.global))
        {
            return Err(RetryAfter(wait));
        }
        Ok(())
    }

    pub fn record_failure(&self, address: IpAddr) {
        let now = Instant::now();
        let window = self.window;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let bump = |entry: &mut (Instant, u32)| {
            if now.duration_since(entry.0) >= window {
                *entry = (now, 0);
            }
            entry.1 += 1;
        };
        bump(state.global.get_or_insert((now, 0)));
        if state.addresses.len() > 10_000 {
            state
                .addresses
                .retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        bump(state.addresses.entry(address).or_insert((now, 0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_globally() {
        let limiter = SignInLimiter::new(2, 3, Duration::from_secs(60));
        let (a, b, c) = (
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
            [10, 0, 0, 3].into(),
        );
        limiter.record_failure(a);
        assert!(limiter.check(a).is_ok());
        limiter.record_failure(a);
        assert!(limiter.check(a).is_err());
        assert!(limiter.check(b).is_ok());
        limiter.record_failure(b);
        // Three failures in all: everyone waits.
        assert!(limiter.check(c).is_err());
    }

    #[test]
    fn password_hashes_are_argon2id() {
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(check_password_hash(&hash).is_ok());
        assert!(check_password_hash("$2b$12$abcdefghijklmnopqrstuv").is_err());
        assert!(check_password_hash("plain").is_err());
    }
}
