//! Sessions of the single in-memory replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{SessionError, SessionStore};

/// Sessions idle this long are forgotten once the table is large.
const GC_AT_LEN: usize = 100_000;

pub struct MemorySessions {
    idle: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    sessions: HashMap<String, (Option<String>, Instant)>,
}

impl MemorySessions {
    pub fn new(idle: Duration) -> MemorySessions {
        MemorySessions {
            idle,
            inner: Mutex::default(),
        }
    }

    fn bind(&self, session: &str, principal: Option<&str>) -> Result<u64, SessionError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.sessions.len() >= GC_AT_LEN {
            let idle = self.idle;
            inner.sessions.retain(|_, (_, seen)| seen.elapsed() < idle);
        }
        let entry = inner
            .sessions
            .entry(session.to_owned())
            .or_insert_with(|| (principal.map(str::to_owned), Instant::now()));
        if entry.0.as_deref() != principal {
            return Err(SessionError::Forbidden);
        }
        entry.1 = Instant::now();
        inner.generation += 1;
        Ok(inner.generation)
    }
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn claim(&self, session: &str, principal: Option<&str>) -> Result<u64, SessionError> {
        self.bind(session, principal)
    }

    async fn check(&self, session: &str, principal: Option<&str>) -> Result<(), SessionError> {
        self.bind(session, principal).map(|_| ())
    }

    async fn register(&self, session: &str, principal: Option<&str>) -> Result<(), SessionError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .sessions
            .entry(session.to_owned())
            .or_insert_with(|| (principal.map(str::to_owned), Instant::now()));
        Ok(())
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

    #[tokio::test]
    async fn first_principal_owns_the_session() {
        let s = MemorySessions::new(Duration::from_secs(60));
        let g1 = s.claim("s1", Some("alice")).await.expect("bind");
        let g2 = s.claim("s1", Some("alice")).await.expect("reclaim");
        assert!(g2 > g1);
        assert!(matches!(
            s.claim("s1", Some("bob")).await,
            Err(SessionError::Forbidden)
        ));
        assert!(matches!(
            s.check("s1", None).await,
            Err(SessionError::Forbidden)
        ));
        assert!(s.claim("s2", None).await.is_ok());
        assert!(s.check("s2", None).await.is_ok());
    }

    #[tokio::test]
    async fn touched_sessions_survive_cleanup() {
        let s = MemorySessions::new(Duration::from_millis(50));
        s.claim("held", Some("alice")).await.expect("bind");
        s.claim("idle", Some("bob")).await.expect("bind");
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
            s.claim("held", Some("mallory")).await,
            Err(SessionError::Forbidden)
        ));
    }
}
