//! Single-use tokens for streaming URLs, as the kubelet library hands them out: unguessable,
//! valid for one session, expiring unused after a TTL, and bounded in number.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Random bytes per token (48 bits of the kernel's randomness, base64url: 8 characters, as
/// the kubelet library's).
const TOKEN_BYTES: usize = 6;

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("maximum number of in-flight streaming requests exceeded ({0})")]
    TooMany(usize),
    #[error("no randomness for a streaming token")]
    Random(#[source] std::io::Error),
}

/// Pending requests of type `T`, by token.
pub struct TokenCache<T> {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> TokenCache<T> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        TokenCache {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, T)>> {
        // A panic while holding the lock leaves a consistent map: keep using it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `request` and returns its new token.
    pub fn insert(&self, request: T) -> Result<String, TokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| TokenError::Random(std::io::Error::other(e.to_string())))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|_, (made, _)| now.duration_since(*made) < self.ttl);
        if entries.len() >= self.max {
            return Err(TokenError::TooMany(self.max));
        }
        // 48 random bits: a collision among at most `max` live tokens is negligible, and a
        // colliding insert would only replace an entry that then answers 404.
        entries.insert(token.clone(), (now, request));
        Ok(token)
    }

    /// Takes the request of `token` if it exists and has not expired; it cannot be taken
    /// twice.
    pub fn consume(&self, token: &str) -> Option<T> {
        let (made, request) = self.lock().remove(token)?;
        (made.elapsed() < self.ttl).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_bounded_and_expire() {
        let cache = TokenCache::new(Duration::from_secs(60), 2);
        let a = cache.insert(1).expect("a");
        let b = cache.insert(2).expect("b");
        assert_eq!(a.len(), 8);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(a, b);
        assert!(matches!(cache.insert(3), Err(TokenError::TooMany(2))));
        assert_eq!(cache.consume(&a), Some(1));
        assert_eq!(cache.consume(&a), None);
        assert_eq!(cache.consume("unknown"), None);
        let expiring = TokenCache::new(Duration::from_millis(1), 2);
        let c = expiring.insert(1).expect("c");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(expiring.consume(&c), None);
    }
}
