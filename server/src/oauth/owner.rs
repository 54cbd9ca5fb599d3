//! The owner: the one person who may approve clients. Their password (Argon2id), the
//! first-run setup token, sign-in sessions, and the limit on failed sign-ins.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString},
    Algorithm, Argon2, Block, Params, Version,
};
use subtle::ConstantTimeEq;

use super::secret::{random_token, SecretHash};
use crate::{
    ratelimit::{address_key, Network, RetryAfter, MAX_TRACKED},
    store::{Key, Kind, Put, SharedStore, StoreError, StoreResult},
};

/// Argon2 verifications running at once. Each needs about 19 MiB and a core for tens
/// of milliseconds, on the blocking pool that embedded-store writes share.
pub const ARGON2_CONCURRENCY: usize = 2;

/// Sign-ins that may wait for one of those runs; more are told to come back. The
/// per-address slow-down bounds what one address asks, not what many do (an IPv6
/// range holds many): without a bound the queue, and the wait of the owner's own
/// sign-in behind it, would grow without end.
pub const ARGON2_WAITING: usize = 16;

/// What checking a password found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    Right,
    Wrong,
    /// Not checked: [`ARGON2_WAITING`] sign-ins already wait.
    Busy,
}

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

/// Checks that `phc` is an Argon2id PHC string a sign-in can check at a bounded cost:
/// a configured one at start-up, a stored one (perhaps imported) before each use.
/// The error names no flag: the caller says which hash it is.
pub fn check_password_hash(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc).map_err(|e| format!("not a PHC string: {e}"))?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err("not an Argon2id hash ($argon2id$…)".into());
    }
    // A hash cut short when pasted parses, and then no password ever matches it.
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("no salt or no hash part: was it cut short?".into());
    }
    let params =
        Params::try_from(&parsed).map_err(|e| format!("parameters Argon2 refuses: {e}"))?;
    // What a sign-in's check needs of it (see `verify_with`).
    let version_known = parsed
        .version
        .is_none_or(|version| Version::try_from(version).is_ok());
    let mut salt = [0u8; 64];
    let salt_fits = parsed
        .salt
        .is_some_and(|s| s.decode_b64(&mut salt).is_ok_and(|s| s.len() >= 8));
    if !version_known || !salt_fits {
        return Err("an Argon2 version or a salt (8 to 64 bytes) no check can use".into());
    }
    // Every sign-in, anyone's, runs one check with these: two at a time, each
    // keeping its memory for the next.
    if params.m_cost() > MAX_HASH_MEMORY_KIB || params.t_cost() > MAX_HASH_PASSES {
        return Err(format!(
            "more than {} MiB (m) or {MAX_HASH_PASSES} passes (t) per check, and every sign-in \
             attempt runs one",
            MAX_HASH_MEMORY_KIB / 1024
        ));
    }
    Ok(())
}

/// The most memory a configured hash may ask of each check, in KiB: 1 GiB.
const MAX_HASH_MEMORY_KIB: u32 = 1024 * 1024;

/// The most passes a configured hash may ask of each check.
const MAX_HASH_PASSES: u32 = 16;

pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    Ok(())
}

/// The memory of one Argon2 run (about 19 MiB with the default parameters).
type Blocks = Vec<Block>;

/// Whether `password` matches the PHC string `phc`, computing in `blocks` (grown to
/// the hash's memory cost if needed). Argon2's own `verify_password` allocates its
/// memory afresh each time, on whichever blocking thread runs it, and the allocator
/// keeps such blocks per thread: under a burst of sign-ins the process then held
/// far more than the runs at once needed.
fn verify_with(phc: &str, password: &[u8], blocks: &mut Blocks) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    blocks.resize(params.block_count(), Block::default());
    let computed = Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut blocks[..])
        .is_ok();
    computed && bool::from(expected.as_bytes().ct_eq(&out))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
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
    /// The session mark of `configured_hash`, worked out once.
    configured_mark: Option<String>,
    argon2: Arc<Semaphore>,
    /// Sign-ins running on `argon2` or waiting for it:
    /// [`ARGON2_CONCURRENCY`] + [`ARGON2_WAITING`] places.
    argon2_admitted: Arc<Semaphore>,
    /// The memory of the Argon2 runs, allocated once and reused: at most
    /// [`ARGON2_CONCURRENCY`] buffers, one per run at a time.
    argon2_memory: Arc<Mutex<Vec<Blocks>>>,
    /// One more place to wait, for a browser the owner signed in with, so that
    /// strangers keeping every other place busy cannot keep the owner out.
    argon2_known: Arc<Semaphore>,
    /// One first-run setup at a time: its link stays valid until the password is
    /// stored, so submits of it queue here rather than each running Argon2.
    setting_up: tokio::sync::Mutex<()>,
}

/// A sign-in's place among those being checked or waiting to be
/// ([`ARGON2_CONCURRENCY`] + [`ARGON2_WAITING`]): [`Owner::admit`].
pub struct Admission {
    _place: OwnedSemaphorePermit,
}

/// A password found right: it opens a session under the hash it matched.
pub struct Verified {
    mark: String,
}

/// What a session record holds: `owner` and the fingerprint of the password hash
/// its sign-in matched. A session is live only while that is still the owner's
/// hash, on any instance: a session opened under another (the owner changed it
/// because the password leaked, say) is not one under this one, even when its
/// sign-in was checked before the change and the session stored after it.
fn session_mark(hash: &str) -> String {
    format!("owner {}", SecretHash::of(hash).as_str())
}

pub(crate) fn password_key() -> Key {
    Key::new(Kind::OWNER, "password")
}

/// The stored record of the owner's password as a hash a sign-in can check. Written
/// by this server, or imported: an edited export could otherwise ask every sign-in
/// attempt, anyone's, for terabytes.
pub(crate) fn stored_password_hash(stored: Vec<u8>) -> Result<String, String> {
    let hash = String::from_utf8(stored).map_err(|_| "not UTF-8".to_owned())?;
    check_password_hash(&hash)?;
    Ok(hash)
}

fn device_key(cookie: &str) -> Key {
    Key::new(Kind::DEVICE, SecretHash::of(cookie).as_str())
}

/// What the limiter counts a known browser under: the first 128 bits of its
/// cookie's SHA-256.
fn device_number(cookie: &str) -> u128 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(cookie.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

impl Owner {
    pub fn new(store: SharedStore, configured_hash: Option<String>) -> Self {
        Owner {
            store,
            configured_mark: configured_hash.as_deref().map(session_mark),
            configured_hash,
            argon2: Arc::new(Semaphore::new(ARGON2_CONCURRENCY)),
            argon2_admitted: Arc::new(Semaphore::new(ARGON2_CONCURRENCY + ARGON2_WAITING)),
            argon2_memory: Arc::default(),
            argon2_known: Arc::new(Semaphore::new(1)),
            setting_up: tokio::sync::Mutex::new(()),
        }
    }

    async fn password_hash(&self) -> StoreResult<Option<String>> {
        if let Some(hash) = &self.configured_hash {
            return Ok(Some(hash.clone()));
        }
        let Some(stored) = self.store.get(&password_key()).await? else {
            return Ok(None);
        };
        let hash = stored_password_hash(stored)
            .map_err(|e| StoreError::Corrupt(format!("the stored owner password hash: {e}")))?;
        Ok(Some(hash))
    }

    pub async fn has_password(&self) -> StoreResult<bool> {
        Ok(self.password_hash().await?.is_some())
    }

    /// Checks a password, at most [`ARGON2_CONCURRENCY`] at a time, with at most
    /// [`ARGON2_WAITING`] more waiting: [`Owner::admit`], then [`Owner::check`].
    pub async fn verify_password(&self, password: &str) -> StoreResult<PasswordCheck> {
        let Some(admission) = self.admit() else {
            return Ok(PasswordCheck::Busy);
        };
        Ok(if self.check(admission, password).await?.is_some() {
            PasswordCheck::Right
        } else {
            PasswordCheck::Wrong
        })
    }

    /// A place to check a password, or `None` when [`ARGON2_WAITING`] sign-ins
    /// already wait.
    pub fn admit(&self) -> Option<Admission> {
        self.argon2_admitted
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|place| Admission { _place: place })
    }

    /// A place to check a password for a browser the owner signed in with: an
    /// ordinary one, else the one kept for such browsers.
    pub fn admit_known(&self) -> Option<Admission> {
        self.admit().or_else(|| {
            self.argon2_known
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|place| Admission { _place: place })
        })
    }

    /// Whether `password` is the owner's, checked in the place `admission` holds.
    ///
    /// The Argon2 run owns its places and its memory until it ends. A request that
    /// goes away while the run is under way (a reset HTTP/2 stream, a closed
    /// connection) drops only the waiting for it: if it took the places with it,
    /// anyone could start runs and drop them at once, without bound, each with
    /// memory of its own.
    pub async fn check(
        &self,
        admission: Admission,
        password: &str,
    ) -> StoreResult<Option<Verified>> {
        let (hash, exists) = match self.password_hash().await? {
            Some(hash) => (hash, true),
            None => (decoy_hash().to_owned(), false),
        };
        let run = self
            .argon2
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Backend("the password checker is closed".into()))?;
        let memory = self.argon2_memory.clone();
        let mut blocks = lock(&memory).pop().unwrap_or_default();
        let password = password.to_owned();
        let mark = exists.then(|| session_mark(&hash));
        let ok = tokio::task::spawn_blocking(move || {
            // Let go of last, once the memory is back for the next run.
            let _places = (admission, run);
            let ok = verify_with(&hash, password.as_bytes(), &mut blocks);
            let mut memory = lock(&memory);
            if memory.len() < ARGON2_CONCURRENCY {
                memory.push(blocks);
            }
            ok
        })
        .await
        .unwrap_or(false);
        Ok(mark.filter(|_| ok).map(|mark| Verified { mark }))
    }

    /// Ends every sign-in session, and forgets every browser the owner signed in
    /// with (after a password change).
    pub async fn end_all_sessions(&self) -> StoreResult<u64> {
        let mut ended = 0;
        for kind in [Kind::SESSION, Kind::DEVICE] {
            let prefix = format!("{}:", kind.as_str());
            for (key, _) in self.store.scan(&prefix).await? {
                let gone = self.store.delete(&key).await?;
                if kind == Kind::SESSION {
                    ended += u64::from(gone);
                }
            }
        }
        Ok(ended)
    }

    /// Remembers the browser of a sign-in for [`DEVICE_TTL`]; returns its cookie
    /// value. The store keeps only its hash, and the mark of the password hash the
    /// sign-in matched: like a session, it is known only under that hash.
    pub async fn new_device(&self, verified: &Verified) -> StoreResult<String> {
        let id = random_token();
        self.store
            .put(
                &device_key(&id),
                verified.mark.as_bytes(),
                Put::ttl(DEVICE_TTL),
            )
            .await?;
        Ok(id)
    }

    /// The browser a device cookie names, when the owner signed in with it under
    /// the password hash that is the owner's now. Only a cookie of the shape this
    /// server makes is looked up.
    pub async fn known_device(&self, cookie: &str) -> StoreResult<Option<KnownDevice>> {
        let shaped = cookie.len() == 43
            && cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !shaped {
            return Ok(None);
        }
        let Some(mark) = self.store.get(&device_key(cookie)).await? else {
            return Ok(None);
        };
        let current = self.current_mark().await?;
        let known = current.is_some_and(|current| mark == current.as_bytes());
        Ok(known.then(|| KnownDevice(device_number(cookie))))
    }

    /// The session mark of the owner's password hash now, if there is one.
    async fn current_mark(&self) -> StoreResult<Option<String>> {
        if let Some(mark) = &self.configured_mark {
            return Ok(Some(mark.clone()));
        }
        Ok(self.password_hash().await?.map(|hash| session_mark(&hash)))
    }

    /// Stores a new password (`gatehouse owner set-password`, or first-run setup) and
    /// ends every existing sign-in session.
    pub async fn set_password(&self, password: &str) -> Result<(), SetupError> {
        self.store_password(password, false).await
    }

    /// Hashes and stores `password`, then ends every session. `first`: only if no
    /// password is stored yet, atomically, so that of two setup links used at once
    /// one sets the password and the other is refused, rather than the later one
    /// replacing it unseen.
    async fn store_password(&self, password: &str, first: bool) -> Result<(), SetupError> {
        check_new_password(password).map_err(SetupError::WeakPassword)?;
        let password = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| SetupError::Hashing(e.to_string()))?
            .map_err(SetupError::Hashing)?;
        if first {
            let stored = self
                .store
                .put_new(&password_key(), hash.as_bytes(), Put::forever())
                .await?;
            if !stored {
                return Err(SetupError::InvalidToken);
            }
        } else {
            self.store
                .put(&password_key(), hash.as_bytes(), Put::forever())
                .await?;
        }
        self.end_all_sessions().await?;
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

    /// Sets the first password with a setup token, once. The token is spent only
    /// once the password is stored: a store that fails in between (or a hash that
    /// fails) leaves the link working, for the owner to try again. Storing the
    /// first password only where none is (`put_new`) is what lets one setup win
    /// across instances; on one, setups take turns, so a link submitted many times
    /// at once runs one hash at a time.
    pub async fn complete_setup(&self, token: &str, password: &str) -> Result<(), SetupError> {
        check_new_password(password).map_err(SetupError::WeakPassword)?;
        // The checks, the hash and the write, one setup at a time: the next one in
        // line finds the password stored and runs no hash.
        let _one = self.setting_up.lock().await;
        if self.has_password().await? {
            return Err(SetupError::InvalidToken);
        }
        let key = Key::new(Kind::SETUP, SecretHash::of(token).as_str());
        if self.store.get(&key).await?.is_none() {
            return Err(SetupError::InvalidToken);
        }
        self.store_password(password, true).await?;
        // No password can be set with it any more; removed all the same.
        if let Err(e) = self.store.delete(&key).await {
            tracing::warn!(error = %e, "cannot remove a used setup link");
        }
        Ok(())
    }

    /// Starts a session for a sign-in; returns the cookie value. The store keeps
    /// only its hash.
    pub async fn new_session(&self, verified: &Verified) -> StoreResult<String> {
        let id = random_token();
        let key = Key::new(Kind::SESSION, SecretHash::of(&id).as_str());
        self.store
            .put(&key, verified.mark.as_bytes(), Put::ttl(SIGN_IN_TTL))
            .await?;
        Ok(id)
    }

    /// The session's hash when `cookie` names a live session.
    pub async fn session(&self, cookie: &str) -> StoreResult<Option<SecretHash>> {
        let hash = SecretHash::of(cookie);
        let record = self
            .store
            .get(&Key::new(Kind::SESSION, hash.as_str()))
            .await?;
        let Some(mark) = record else {
            return Ok(None);
        };
        let current = self.current_mark().await?;
        let live = current.is_some_and(|current| mark == current.as_bytes());
        Ok(live.then_some(hash))
    }

    pub async fn end_session(&self, cookie: &str) -> StoreResult<()> {
        self.store
            .delete(&Key::new(Kind::SESSION, SecretHash::of(cookie).as_str()))
            .await?;
        Ok(())
    }
}

/// Slows failed sign-ins down per client address, without ever locking the owner
/// out for what strangers elsewhere do:
///
/// - each address may fail [`SignInLimiter::free`] times; after that, each further
///   attempt must wait a delay that doubles with every failure (1 s, 2 s, 4 s, … up
///   to `max_delay`);
/// - an IPv6 address counts as its /64 (one host usually holds one), and its /48
///   counts too, with [`WIDE_FREE_FACTOR`] times the free failures: anyone can get
///   a /48 from a tunnel broker, and its 65,536 /64s would otherwise each have their
///   own free failures, enough to guess for days at Argon2's full speed. A /64 the
///   owner signed in from in the last 30 days is not held back by its /48;
/// - an attempt is *reserved* before the password is checked, so a burst of
///   concurrent guesses from one address is checked at most `free` times: the rest
///   are refused with `Retry-After` without costing an Argon2 run;
/// - a correct password clears the address; an address forgotten for
///   `forget_after` starts afresh.
///
/// Behind a reverse proxy every client shares the proxy's address unless
/// `--trusted-proxy` names it. Argon2 runs themselves are bounded by the owner's
/// semaphore ([`Owner::verify_password`]), whatever the number of addresses.
pub struct SignInLimiter {
    free: u32,
    max_delay: Duration,
    forget_after: Duration,
    state: Mutex<HashMap<Counted, Tries>>,
    /// Addresses (IPv6 /64s) the owner signed in from, and until when their /48
    /// does not count against them.
    trusted: Mutex<HashMap<IpAddr, Instant>>,
}

/// What a sign-in attempt counts against: the networks of its address, or, for a
/// browser the owner signed in with before ([`KnownDevice`]), that browser alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Counted {
    Network(Network),
    Device(u128),
}

/// A browser the owner signed in with (its device cookie names a record in the
/// store): its sign-ins count against it alone, not against the address, so
/// strangers who share the owner's address (a carrier's NAT, a VPN, an office) and
/// fail there cannot slow the owner's sign-in down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownDevice(u128);

/// How long a browser stays known after the sign-in that made it known.
pub const DEVICE_TTL: Duration = Duration::from_secs(180 * 24 * 3600);

/// How long an address the owner signed in from keeps its /48 out of the count.
const TRUSTED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Addresses the owner signed in from that are remembered at once.
const MAX_TRUSTED: usize = 64;

/// How many times more failures an IPv6 /48 has free than one of its addresses.
pub const WIDE_FREE_FACTOR: u32 = 5;

struct Tries {
    failures: u32,
    in_flight: u32,
    /// When the next attempt may start, once the free ones are spent.
    next: Instant,
    last: Instant,
}

/// One reserved attempt. Report how it went; dropping it unreported releases the
/// reservation without counting a failure, unless the password was being checked
/// ([`Attempt::checking`]).
pub struct Attempt<'a> {
    limiter: &'a SignInLimiter,
    address: IpAddr,
    keys: [Option<Counted>; 2],
    settled: bool,
    checking: bool,
}

impl Attempt<'_> {
    pub fn succeeded(mut self) {
        self.settled = true;
        self.limiter.trust(self.address);
        let mut state = self.limiter.lock();
        for key in self.keys.iter().flatten() {
            match key {
                Counted::Network(Network::Address(_)) | Counted::Device(_) => {
                    state.remove(key);
                }
                // The owner's right password clears the owner's address only: the
                // rest of the /48 keeps what it did.
                Counted::Network(Network::Wide(_)) => {
                    if let Some(tries) = state.get_mut(key) {
                        tries.in_flight = tries.in_flight.saturating_sub(1);
                    }
                }
            }
        }
    }

    pub fn failed(mut self) {
        self.count_failure();
    }

    /// The password is being checked: from now on, an attempt dropped unreported
    /// (its request went away) counts as failed. Otherwise anyone could start
    /// checks and go away before their answer, as often as they like and never
    /// slowed down.
    pub fn checking(&mut self) {
        self.checking = true;
    }

    /// Releases the reservation without counting a failure (the store failed).
    pub fn release(mut self) {
        self.release_places();
    }

    fn count_failure(&mut self) {
        self.settled = true;
        let now = Instant::now();
        let limiter = self.limiter;
        let mut state = limiter.lock();
        for key in self.keys.iter().flatten() {
            let free = limiter.free_for(key);
            if let Some(tries) = state.get_mut(key) {
                tries.in_flight = tries.in_flight.saturating_sub(1);
                tries.failures += 1;
                tries.last = now;
                if tries.failures >= free {
                    let doublings = (tries.failures - free).min(20);
                    let delay = Duration::from_secs(1u64 << doublings).min(limiter.max_delay);
                    tries.next = now + delay;
                }
            }
        }
    }

    fn release_places(&mut self) {
        self.settled = true;
        let mut state = self.limiter.lock();
        for key in self.keys.iter().flatten() {
            if let Some(tries) = state.get_mut(key) {
                tries.in_flight = tries.in_flight.saturating_sub(1);
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        match (self.settled, self.checking) {
            (true, _) => {}
            (false, true) => self.count_failure(),
            (false, false) => self.release_places(),
        }
    }
}

impl SignInLimiter {
    pub fn new(free: u32, max_delay: Duration, forget_after: Duration) -> Self {
        SignInLimiter {
            free: free.max(1),
            max_delay,
            forget_after,
            state: Mutex::default(),
            trusted: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Counted, Tries>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn free_for(&self, key: &Counted) -> u32 {
        match key {
            Counted::Network(Network::Address(_)) | Counted::Device(_) => self.free,
            Counted::Network(Network::Wide(_)) => self.free.saturating_mul(WIDE_FREE_FACTOR),
        }
    }

    /// Reserves an attempt for `address`, or says when one will be allowed. A
    /// refusal changes nothing: it costs the caller no Argon2 run, so it must not
    /// cost this limiter an entry either (entries pushed out would be forgotten).
    pub fn reserve(&self, address: IpAddr) -> Result<Attempt<'_>, RetryAfter> {
        let mut keys = Network::of(address).map(|n| n.map(Counted::Network));
        if self.trusted(address, Instant::now()) {
            keys[1] = None;
        }
        self.reserve_keys(keys, address)
    }

    /// Reserves an attempt from a browser the owner signed in with: counted against
    /// it alone, with the same budget as an address.
    pub fn reserve_known(
        &self,
        device: KnownDevice,
        address: IpAddr,
    ) -> Result<Attempt<'_>, RetryAfter> {
        self.reserve_keys([Some(Counted::Device(device.0)), None], address)
    }

    fn reserve_keys(
        &self,
        keys: [Option<Counted>; 2],
        address: IpAddr,
    ) -> Result<Attempt<'_>, RetryAfter> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut wait = None;
        for key in keys.iter().flatten() {
            let Some(tries) = state.get(key) else {
                continue;
            };
            let forgotten =
                tries.in_flight == 0 && now.duration_since(tries.last) >= self.forget_after;
            let within_free = tries.failures + tries.in_flight < self.free_for(key);
            let waited = tries.in_flight == 0 && now >= tries.next;
            if !(forgotten || within_free || waited) {
                let until = tries.next.saturating_duration_since(now);
                wait = wait.max(Some(until.max(Duration::from_secs(1))));
            }
        }
        if let Some(wait) = wait {
            return Err(RetryAfter(wait));
        }
        let new_keys = keys
            .iter()
            .flatten()
            .filter(|k| !state.contains_key(*k))
            .count();
        if state.len() + new_keys > MAX_TRACKED {
            let forget = self.forget_after;
            state.retain(|_, t| t.in_flight > 0 || now.duration_since(t.last) < forget);
            while state.len() + new_keys > MAX_TRACKED {
                // Addresses before /48s, and of those the longest quiet: a /48 that
                // is being slowed down is the last thing a flood should push out.
                let Some(oldest) = state
                    .iter()
                    .filter(|(_, t)| t.in_flight == 0)
                    .min_by_key(|(k, t)| (matches!(k, Counted::Network(Network::Wide(_))), t.last))
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                state.remove(&oldest);
            }
        }
        for key in keys.iter().flatten() {
            let tries = state.entry(*key).or_insert(Tries {
                failures: 0,
                in_flight: 0,
                next: now,
                last: now,
            });
            if tries.in_flight == 0 && now.duration_since(tries.last) >= self.forget_after {
                tries.failures = 0;
                tries.next = now;
            }
            tries.in_flight += 1;
        }
        Ok(Attempt {
            limiter: self,
            address: address_key(address),
            keys,
            settled: false,
            checking: false,
        })
    }

    /// Whether the owner signed in from `address` (its /64) lately: then its /48
    /// does not count. Strangers who share the owner's /48 (a mobile carrier's, a
    /// cloud's) can slow down a first sign-in from it, never the owner's usual one.
    fn trusted(&self, address: IpAddr, now: Instant) -> bool {
        let trusted = self.trusted.lock().unwrap_or_else(|p| p.into_inner());
        trusted
            .get(&address_key(address))
            .is_some_and(|until| now < *until)
    }

    fn trust(&self, address: IpAddr) {
        let now = Instant::now();
        let mut trusted = self.trusted.lock().unwrap_or_else(|p| p.into_inner());
        trusted.retain(|_, until| now < *until);
        if trusted.len() >= MAX_TRUSTED && !trusted.contains_key(&address) {
            if let Some(oldest) = trusted.iter().min_by_key(|(_, u)| **u).map(|(a, _)| *a) {
                trusted.remove(&oldest);
            }
        }
        trusted.insert(address, now + TRUSTED_FOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect(s)
    }

    /// An embedded store in a directory of its own (kept while the first lives).
    fn embedded() -> (tempfile::TempDir, SharedStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            crate::store::embedded::EmbeddedStore::open(&dir.path().join("s.redb")).expect("store");
        (dir, Arc::new(store))
    }

    #[tokio::test(start_paused = true)]
    async fn failures_slow_one_address_down_and_no_other() {
        let limiter = SignInLimiter::new(2, Duration::from_secs(8), Duration::from_secs(900));
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        limiter.reserve(a).expect("free").failed();
        limiter.reserve(a).expect("free").failed();
        // Two failures: the next attempt waits 1 s, then 2 s, 4 s, 8 s, 8 s.
        for wait in [1, 2, 4, 8, 8] {
            let refused = limiter.reserve(a).err().expect("slowed down");
            assert_eq!(refused.seconds(), wait);
            assert!(limiter.reserve(b).is_ok(), "another address is not slowed");
            tokio::time::advance(Duration::from_secs(wait)).await;
            limiter.reserve(a).expect("after the delay").failed();
        }
        // The right password, once allowed, clears the address.
        tokio::time::advance(Duration::from_secs(8)).await;
        limiter.reserve(a).expect("allowed").succeeded();
        assert!(limiter.reserve(a).is_ok());
    }

    /// A /48 is cheap to come by, and holds 65,536 /64s: together they have
    /// [`WIDE_FREE_FACTOR`] times the free failures of one, not 65,536 times.
    #[tokio::test(start_paused = true)]
    async fn the_64s_of_one_ipv6_48_share_a_larger_budget() {
        let limiter = SignInLimiter::new(2, Duration::from_secs(8), Duration::from_secs(900));
        let in_48 = |i: u16| ip(&format!("2001:db8:7:{i:x}::1"));
        // The owner signed in from one /64 of it earlier.
        let owner = in_48(0xaaaa);
        limiter.reserve(owner).expect("free").succeeded();
        for i in 0..WIDE_FREE_FACTOR as u16 {
            limiter.reserve(in_48(i)).expect("free").failed();
            limiter.reserve(in_48(i)).expect("free").failed();
        }
        let refused = limiter
            .reserve(in_48(0xffff))
            .err()
            .expect("a fresh /64 of a slowed /48");
        assert_eq!(refused.seconds(), 1);
        // Refusals cost the limiter nothing: no entry for each fresh /64.
        let tracked = limiter.lock().len();
        for i in 0x1000..0x1100 {
            assert!(limiter.reserve(in_48(i)).is_err());
        }
        assert_eq!(limiter.lock().len(), tracked);
        assert!(
            limiter.reserve(ip("2001:db8:8::1")).is_ok(),
            "another /48 is not slowed"
        );
        assert!(
            limiter.reserve(owner).is_ok(),
            "the owner's own /64 is not held back by its /48"
        );
        assert!(limiter.reserve(ip("192.0.2.1")).is_ok());
        // After the delay, one attempt at a time for the whole /48.
        tokio::time::advance(Duration::from_secs(1)).await;
        let one = limiter.reserve(in_48(0xfffe)).expect("after the delay");
        assert!(limiter.reserve(in_48(0xfffd)).is_err(), "one at a time");
        one.failed();
        assert_eq!(
            limiter
                .reserve(in_48(0xfffd))
                .err()
                .expect("slowed")
                .seconds(),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_attempts_are_reserved_before_they_are_checked() {
        let limiter = SignInLimiter::new(10, Duration::from_secs(300), Duration::from_secs(900));
        let a = ip("192.0.2.1");
        let held: Vec<Attempt<'_>> = (0..150).filter_map(|_| limiter.reserve(a).ok()).collect();
        assert_eq!(held.len(), 10, "only the free attempts may run at once");
        drop(held);
        // Released without a verdict (a store failure): nothing was counted.
        assert!(limiter.reserve(a).is_ok());
    }

    /// An attempt whose request went away while its password was being checked
    /// counts as failed: dropping requests must not buy unlimited checks.
    #[tokio::test(start_paused = true)]
    async fn attempts_dropped_while_checked_count_as_failed() {
        let limiter = SignInLimiter::new(2, Duration::from_secs(300), Duration::from_secs(900));
        let a = ip("192.0.2.1");
        for _ in 0..2 {
            let mut attempt = limiter.reserve(a).expect("free");
            attempt.checking();
        }
        assert!(limiter.reserve(a).is_err(), "slowed down after two");
        // Released before any check (the checker was busy): nothing counted.
        let b = ip("192.0.2.2");
        for _ in 0..5 {
            drop(limiter.reserve(b).expect("free"));
        }
        limiter.reserve(b).expect("still free").release();
        assert!(limiter.reserve(b).is_ok());
    }

    /// A browser the owner signed in with has a budget of its own, whatever its
    /// address did.
    #[tokio::test(start_paused = true)]
    async fn a_known_browser_counts_apart_from_its_address() {
        let limiter = SignInLimiter::new(2, Duration::from_secs(300), Duration::from_secs(900));
        let a = ip("192.0.2.1");
        limiter.reserve(a).expect("free").failed();
        limiter.reserve(a).expect("free").failed();
        assert!(limiter.reserve(a).is_err());
        let browser = KnownDevice(7);
        limiter.reserve_known(browser, a).expect("its own").failed();
        limiter.reserve_known(browser, a).expect("its own").failed();
        assert!(
            limiter.reserve_known(browser, a).is_err(),
            "and its own slow-down"
        );
        assert!(limiter.reserve_known(KnownDevice(8), a).is_ok());
        assert!(limiter.reserve(a).is_err(), "the address is as it was");
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_are_forgotten_after_a_quiet_period() {
        let limiter = SignInLimiter::new(1, Duration::from_secs(300), Duration::from_secs(900));
        let a = ip("192.0.2.1");
        limiter.reserve(a).expect("free").failed();
        assert!(limiter.reserve(a).is_err());
        tokio::time::advance(Duration::from_secs(900)).await;
        assert!(limiter.reserve(a).is_ok());
    }

    /// A session opened under one `--owner-password-hash` is not one under another
    /// (the owner changed it because the password leaked, say), on any instance; it
    /// is again under the same one.
    #[tokio::test]
    async fn a_changed_configured_hash_ends_every_session() {
        let (_dir, store) = embedded();
        let first = Owner::new(store.clone(), Some("hash-one".into()));
        let verified = Verified {
            mark: session_mark("hash-one"),
        };
        let cookie = first.new_session(&verified).await.expect("session");
        assert!(first.session(&cookie).await.expect("read").is_some());
        let changed = Owner::new(store.clone(), Some("hash-two".into()));
        assert!(changed.session(&cookie).await.expect("read").is_none());
        let same = Owner::new(store, Some("hash-one".into()));
        assert!(same.session(&cookie).await.expect("read").is_some());
    }

    /// A sign-in checked against the stored password, whose session is stored only
    /// after the password changed (and after every session was ended), opens
    /// nothing; nor does one checked against a configured hash once the server runs
    /// on the stored password instead.
    #[tokio::test]
    async fn a_session_is_live_only_under_the_hash_its_sign_in_matched() {
        let (_dir, store) = embedded();
        let owner = Owner::new(store.clone(), None);
        owner
            .set_password("the first long password")
            .await
            .expect("set");
        let admission = owner.admit().expect("place");
        let verified = owner
            .check(admission, "the first long password")
            .await
            .expect("store")
            .expect("right");
        owner
            .set_password("the second long password")
            .await
            .expect("changed");
        let late = owner.new_session(&verified).await.expect("session");
        assert!(owner.session(&late).await.expect("read").is_none());

        let admission = owner.admit().expect("place");
        let verified = owner
            .check(admission, "the second long password")
            .await
            .expect("store")
            .expect("right");
        let current = owner.new_session(&verified).await.expect("session");
        assert!(owner.session(&current).await.expect("read").is_some());

        let configured = Owner::new(
            store.clone(),
            Some(hash_password("configured one").expect("hash")),
        );
        let admission = configured.admit().expect("place");
        let verified = configured
            .check(admission, "configured one")
            .await
            .expect("store")
            .expect("right");
        let cookie = configured.new_session(&verified).await.expect("session");
        assert!(configured.session(&cookie).await.expect("read").is_some());
        assert!(
            owner.session(&cookie).await.expect("read").is_none(),
            "not once the configured hash is gone"
        );
        assert!(owner
            .check(owner.admit().expect("place"), "configured one")
            .await
            .expect("store")
            .is_none());
    }

    /// A browser is known only under the password hash its sign-in matched, like a
    /// session: a new hash (the old password leaked) forgets every browser.
    #[tokio::test]
    async fn a_browser_is_known_only_under_the_hash_it_signed_in_under() {
        let (_dir, store) = embedded();
        let one = Owner::new(store.clone(), Some("hash-one".into()));
        let verified = Verified {
            mark: session_mark("hash-one"),
        };
        let cookie = one.new_device(&verified).await.expect("device");
        assert!(one.known_device(&cookie).await.expect("read").is_some());
        let two = Owner::new(store, Some("hash-two".into()));
        assert!(two.known_device(&cookie).await.expect("read").is_none());
        let made_up = random_token();
        assert!(one.known_device(&made_up).await.expect("read").is_none());
    }

    /// Two setup links used at once: one sets the password, the other is refused
    /// (and does not replace it).
    #[tokio::test]
    async fn of_two_setup_links_used_at_once_one_sets_the_password() {
        let (_dir, store) = embedded();
        let owner = Owner::new(store, None);
        let first = owner
            .create_setup_token()
            .await
            .expect("store")
            .expect("token");
        let second = owner
            .create_setup_token()
            .await
            .expect("store")
            .expect("token");
        let (a, b) = tokio::join!(
            owner.complete_setup(&first, "the first long password"),
            owner.complete_setup(&second, "the second long password"),
        );
        assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
        let winner = if a.is_ok() {
            "the first long password"
        } else {
            "the second long password"
        };
        assert_eq!(
            owner.verify_password(winner).await.expect("store"),
            PasswordCheck::Right
        );
    }

    /// Past the runs and the places to wait for them, a sign-in is told to come
    /// back at once; those waiting are checked as runs free up.
    #[tokio::test]
    async fn sign_ins_past_those_that_may_wait_are_busy() {
        let (_dir, store) = embedded();
        let hash = hash_password("correct horse battery").expect("hash");
        let owner = std::sync::Arc::new(Owner::new(store, Some(hash)));
        // Two sign-ins being checked.
        let runs = (
            owner
                .argon2
                .acquire_many(ARGON2_CONCURRENCY as u32)
                .await
                .expect("permits"),
            owner
                .argon2_admitted
                .acquire_many(ARGON2_CONCURRENCY as u32)
                .await
                .expect("places"),
        );
        let waiting: Vec<_> = (0..ARGON2_WAITING)
            .map(|i| {
                let owner = owner.clone();
                let password = if i == 0 {
                    "correct horse battery"
                } else {
                    "wrong"
                };
                tokio::spawn(async move { owner.verify_password(password).await })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(10), async {
            while owner.argon2_admitted.available_permits() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the waiting sign-ins fill every place");
        assert_eq!(
            owner
                .verify_password("correct horse battery")
                .await
                .expect("store"),
            PasswordCheck::Busy
        );
        drop(runs);
        let mut found = Vec::new();
        for task in waiting {
            found.push(task.await.expect("task").expect("store"));
        }
        assert_eq!(found[0], PasswordCheck::Right);
        assert!(found[1..].iter().all(|c| *c == PasswordCheck::Wrong));
        assert_eq!(
            owner.argon2_admitted.available_permits(),
            ARGON2_CONCURRENCY + ARGON2_WAITING,
            "nobody is left waiting"
        );
        assert_eq!(
            owner
                .verify_password("correct horse battery")
                .await
                .expect("store"),
            PasswordCheck::Right
        );
    }

    /// A check whose request goes away (a reset stream, a closed connection) while
    /// Argon2 runs keeps its places, and its memory, until the run ends: otherwise
    /// runs started and dropped at once would be bounded by nothing.
    #[tokio::test]
    async fn a_dropped_check_keeps_its_places_until_argon2_ends() {
        let (_dir, store) = embedded();
        // A slow hash (64 MiB, 8 passes), so the run outlasts the checks below.
        let slow = Params::new(64 * 1024, 8, 1, None).expect("params");
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, slow)
            .hash_password(b"correct horse battery", &salt)
            .expect("hash")
            .to_string();
        let owner = Arc::new(Owner::new(store, Some(hash)));
        let all = ARGON2_CONCURRENCY + ARGON2_WAITING;
        let admission = owner.admit().expect("a place");
        let task = {
            let owner = owner.clone();
            tokio::spawn(async move { owner.check(admission, "wrong guess").await })
        };
        // On this one-thread runtime the task yields only once its run is under way.
        tokio::time::timeout(Duration::from_secs(10), async {
            while owner.argon2.available_permits() == ARGON2_CONCURRENCY {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the run starts");
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(
            owner.argon2.available_permits(),
            ARGON2_CONCURRENCY - 1,
            "the run still holds its place"
        );
        assert_eq!(owner.argon2_admitted.available_permits(), all - 1);
        assert!(
            lock(&owner.argon2_memory).is_empty(),
            "its memory is in use"
        );
        tokio::time::timeout(Duration::from_secs(60), async {
            while owner.argon2_admitted.available_permits() < all {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the run ends");
        assert_eq!(owner.argon2.available_permits(), ARGON2_CONCURRENCY);
        assert_eq!(lock(&owner.argon2_memory).len(), 1, "its memory is back");
    }

    /// A stored hash (an edited import, a hand-written Redis key) that would have
    /// every sign-in attempt ask for terabytes is refused before any run.
    #[tokio::test]
    async fn a_stored_hash_no_check_should_run_is_not_used() {
        let (_dir, store) = embedded();
        let owner = Owner::new(store.clone(), None);
        owner
            .set_password("the first long password")
            .await
            .expect("set");
        let hash = owner.password_hash().await.expect("read").expect("stored");
        let salt_and_hash = hash.splitn(5, '$').nth(4).expect("salt$hash");
        let greedy = format!("$argon2id$v=19$m=4294967295,t=2,p=1${salt_and_hash}");
        store
            .put(&password_key(), greedy.as_bytes(), Put::forever())
            .await
            .expect("put");
        let admission = owner.admit().expect("place");
        let checked = owner.check(admission, "the first long password").await;
        assert!(
            matches!(&checked, Err(StoreError::Corrupt(why)) if why.contains("owner password hash")),
            "{:?}",
            checked.map(|verified| verified.is_some())
        );
    }

    #[test]
    fn password_hashes_are_argon2id() {
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(check_password_hash(&hash).is_ok());
        assert!(check_password_hash("$2b$12$abcdefghijklmnopqrstuv").is_err());
        assert!(check_password_hash("plain").is_err());
        // Cut short when pasted: no password could ever match.
        let short = hash.rsplit_once('$').expect("parts").0;
        assert!(check_password_hash(short).is_err(), "{short}");
        // Memory or passes no sign-in should spend, which anyone can start.
        let salt_and_hash = hash.splitn(5, '$').nth(4).expect("salt$hash");
        for params in ["m=4194304,t=2,p=1", "m=19456,t=100,p=1", "m=1,t=2,p=1"] {
            let odd = format!("$argon2id$v=19${params}${salt_and_hash}");
            assert!(check_password_hash(&odd).is_err(), "{odd}");
        }
        // A version or a salt (here 4 bytes) no check can use.
        let hash_part = salt_and_hash.split('$').nth(1).expect("hash");
        for odd in [
            format!("$argon2id$v=20$m=19456,t=2,p=1${salt_and_hash}"),
            format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${hash_part}"),
        ] {
            assert!(check_password_hash(&odd).is_err(), "{odd}");
        }
        let rfc9106 = format!("$argon2id$v=19$m=65536,t=3,p=4${salt_and_hash}");
        assert!(check_password_hash(&rfc9106).is_ok(), "{rfc9106}");
    }

    #[test]
    fn verification_in_reused_memory_matches_argon2s_own() {
        let mut blocks = Blocks::new();
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(verify_with(&hash, b"correct horse battery", &mut blocks));
        assert!(!verify_with(&hash, b"correct horse batterz", &mut blocks));
        let size = blocks.len();
        assert!(size > 0);
        // Other parameters and an older version, in the same memory.
        let small = Params::new(1024, 1, 1, Some(16)).expect("params");
        let salt = SaltString::generate(&mut OsRng);
        let other = Argon2::new(Algorithm::Argon2id, Version::V0x10, small)
            .hash_password(b"another one", &salt)
            .expect("hash")
            .to_string();
        assert!(verify_with(&other, b"another one", &mut blocks));
        assert!(!verify_with(&other, b"another two", &mut blocks));
        assert!(verify_with(&hash, b"correct horse battery", &mut blocks));
        assert_eq!(blocks.len(), size);
        for broken in [
            "",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA",
            "plain",
        ] {
            assert!(!verify_with(broken, b"x", &mut blocks), "{broken}");
        }
    }
}
