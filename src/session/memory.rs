//! Sessions of the single in-memory replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Owner, Ownership, SessionError, SessionStore};

/// Sessions idle this long are forgotten once the table is large.
const GC_AT_LEN: usize = 100_000;

pub struct MemorySessions {
    idle: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    /// session → (its owner's key, last use)
    sessions: HashMap<String, (String, Instant)>,
}

impl MemorySessions {
    pub fn new(idle: Duration) -> MemorySessions {
        MemorySessions {
            idle,
            inner: Mutex::default(),
        }
    }

    fn bind(&self, session: &str, owner: &Owner) -> Result<u64, SessionError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.sessions.len() >= GC_AT_LEN {
            let idle = self.idle;
            inner.sessions.retain(|_, (_, seen)| seen.elapsed() < idle);
        }
        let entry = inner
            .sessions
            .entry(session.to_owned())
            .or_insert_with(|| (owner.key().to_owned(), Instant::now()));
        if entry.0 != owner.key() {
            return Err(SessionError::Forbidden);
        }
        entry.1 = Instant::now();
        inner.generation += 1;
        Ok(inner.generation)
    }
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn claim(&self, session: &str, owner: &Owner) -> Result<u64, SessionError> {
        self.bind(session, owner)
    }

    async fn check(&self, session: &str, owner: &Owner) -> Result<(), SessionError> {
        self.bind(session, owner).map(|_| ())
    }

    async fn register(&self, session: &str, owner: &Owner) -> Result<(), SessionError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .sessions
            .entry(session.to_owned())
            .or_insert_with(|| (owner.key().to_owned(), Instant::now()));
        Ok(())
    }

    async fn ownership(&self, session: &str, owner: &Owner) -> Result<Ownership, SessionError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match inner.sessions.get(session) {
            None => Ownership::Unknown,
            Some((key, _)) if key == owner.key() => Ownership::Mine,
            Some(_) => Ownership::Other,
        })
    }

    async fn known(&self, session: &str) -> Result<bool, SessionError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(inner.sessions.contains_key(session))
    }

    async fn forget(&self, session: &str) -> Result<(), SessionError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.sessions.remove(session);
        Ok(())
    }

    async fn touch(&self, sessions: &[String]) -> Result<(), SessionError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for s in sessions {
            if let Some(entry) = inner.sessions.get_mut(s) {
                entry.1 = now;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Owner {
        Owner::token(Some("https://idp"), Some("A"), "alice")
    }

    #[tokio::test]
    async fn first_principal_owns_the_session() {
        let s = MemorySessions::new(Duration::from_secs(60));
        let g1 = s.claim("s1", &alice()).await.expect("bind");
        let g2 = s.claim("s1", &alice()).await.expect("reclaim");
        assert!(g2 > g1);
        let others = [
            Owner::token(Some("https://idp"), Some("A"), "bob"),
            // The same subject of another tenant, or of another issuer, is someone else.
            Owner::token(Some("https://idp"), Some("B"), "alice"),
            Owner::token(Some("https://idp"), None, "alice"),
            Owner::token(Some("https://other"), Some("A"), "alice"),
            Owner::token(None, Some("A"), "alice"),
            Owner::tenant("A"),
            Owner::anonymous(),
            Owner::nobody(),
        ];
        for other in &others {
            assert!(
                matches!(s.claim("s1", other).await, Err(SessionError::Forbidden)),
                "{other:?}"
            );
            assert!(matches!(
                s.check("s1", other).await,
                Err(SessionError::Forbidden)
            ));
            assert_eq!(
                s.ownership("s1", other).await.expect("ownership"),
                Ownership::Other
            );
        }
        assert_eq!(
            s.ownership("s1", &alice()).await.expect("ownership"),
            Ownership::Mine
        );
        assert_eq!(
            s.ownership("s9", &alice()).await.expect("ownership"),
            Ownership::Unknown
        );
        assert!(s.claim("s2", &Owner::anonymous()).await.is_ok());
        assert!(s.check("s2", &Owner::anonymous()).await.is_ok());
        s.register("s3", &Owner::nobody()).await.expect("register");
        assert!(matches!(
            s.check("s3", &Owner::anonymous()).await,
            Err(SessionError::Forbidden)
        ));
    }

    #[tokio::test]
    async fn touched_sessions_survive_cleanup() {
        let s = MemorySessions::new(Duration::from_millis(50));
        s.claim("held", &alice()).await.expect("bind");
        s.claim("idle", &Owner::tenant("bob")).await.expect("bind");
        tokio::time::sleep(Duration::from_millis(80)).await;
        s.touch(&["held".to_owned()]).await.expect("touch");
        {
            let mut inner = s.inner.lock().expect("lock");
            let idle = s.idle;
            inner.sessions.retain(|_, (_, seen)| seen.elapsed() < idle);
        }
        assert!(s.known("held").await.expect("known"));
        assert!(!s.known("idle").await.expect("known"));
        // The held session still belongs to its principal.
        assert!(matches!(
            s.claim("held", &Owner::tenant("mallory")).await,
            Err(SessionError::Forbidden)
        ));
    }
}
