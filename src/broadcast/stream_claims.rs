//! Stream claims: one GET stream per session on this replica, a new stream for a session ends the
//! older one. (Across replicas the control channel carries the same takeover.) Who *owns* a
//! session is another matter, kept by `session::SessionStore`; this only says which local stream
//! holds it now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct StreamClaims {
    next: AtomicU64,
    /// session → (local claim id, generation, token)
    held: Mutex<HashMap<String, (u64, u64, CancellationToken)>>,
}

/// A stream's hold on its session. When a newer stream claims it, `token()` is cancelled and
/// `is_taken()` turns true.
pub struct StreamClaim {
    claims: Arc<StreamClaims>,
    session: String,
    id: u64,
    token: CancellationToken,
}

impl StreamClaims {
    /// Claims `session` for a new stream (its store-assigned `generation`), ending the local
    /// stream that held it.
    pub fn claim(self: &Arc<Self>, session: &str, generation: u64) -> StreamClaim {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let previous = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.to_owned(), (id, generation, token.clone()));
        if let Some((_, _, older)) = previous {
            older.cancel();
        }
        StreamClaim {
            claims: self.clone(),
            session: session.to_owned(),
            id,
            token,
        }
    }
}

impl StreamClaims {
    /// The sessions held by this replica's open streams.
    pub fn held(&self) -> Vec<String> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The session ended (proxy mode: the client deleted it): end its local stream.
    pub fn end(&self, session: &str) {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, token)) = held.get(session) {
            token.cancel();
        }
    }

    /// Another replica claimed `session` with `generation`: end the local stream if older.
    pub fn taken_elsewhere(&self, session: &str, generation: u64) {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, local, token)) = held.get(session) {
            if *local < generation {
                token.cancel();
            }
        }
    }
}

impl StreamClaim {
    pub fn is_taken(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The token cancelled when a newer stream takes the session.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for StreamClaim {
    fn drop(&mut self) {
        let mut held = self.claims.held.lock().unwrap_or_else(|p| p.into_inner());
        if held
            .get(&self.session)
            .is_some_and(|(id, _, _)| *id == self.id)
        {
            held.remove(&self.session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_claim_wins_and_cleans_up() {
        let s = Arc::new(StreamClaims::default());
        let first = s.claim("a", 1);
        let other = s.claim("b", 2);
        assert!(!first.is_taken());
        let second = s.claim("a", 3);
        assert!(first.is_taken() && !second.is_taken() && !other.is_taken());
        s.taken_elsewhere("a", 3);
        assert!(
            !second.is_taken(),
            "an equal generation is this stream's own claim"
        );
        s.taken_elsewhere("b", 5);
        assert!(other.is_taken(), "a newer claim on another replica ends it");
        drop(first);
        assert_eq!(
            s.held.lock().map(|h| h.len()).unwrap_or(0),
            2,
            "the older claim does not remove the newer"
        );
        drop(second);
        drop(other);
        assert!(s.held.lock().map(|h| h.is_empty()).unwrap_or(false));
    }
}
