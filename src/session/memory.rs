//! Sessions of the single in-memory replica: at most `FANOUT_MAX_SESSIONS` remembered.
//!
//! Room is made only when a new session is added and the table has reached its next mark: the
//! sessions idle for the retention are forgotten, and if the table is still at the bound, a
//! tenth with it: of the principal holding the most first, least recently used first (see
//! [`fair_share_order`]). The next mark is then twice what is left (at least
//! [`GC_AT_LEN`]), capped by the bound, so each pass over the table pays for as many additions as
//! it leaves room for: a stream of new session ids costs O(1) each, not a scan each. A session
//! with an open stream on this replica is never forgotten to make room: a flood of new ids would
//! otherwise push it out, and whoever presented it next would bind it.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Owner, Ownership, SessionError, SessionStore};

/// Below this many sessions nothing is ever scanned.
const GC_AT_LEN: usize = 100_000;

pub struct MemorySessions {
    idle: Duration,
    /// Most sessions remembered.
    max: usize,
    /// The sessions this replica's open streams hold (spared when room is made).
    live: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    /// session → (its owner's key, last use)
    sessions: HashMap<String, (String, Instant)>,
    /// The table's size at which the next addition makes room first.
    next_room: usize,
    /// Passes made over the table (for tests).
    passes: u64,
}

/// The sessions without an open stream in the order they are kept: each owner's most recently
/// used first, then each owner's second, and so on (most recent first within a rank). Trimming
/// from the end forgets the sessions of whoever holds the most before anyone else's: a principal
/// flooding new session ids pushes out its own, not another's session, which whoever presented it
/// next would bind.
fn fair_share_order<'a>(
    sessions: &'a HashMap<String, (String, Instant)>,
    live: &HashSet<String>,
) -> Vec<(usize, Reverse<Instant>, &'a str)> {
    let mut by_owner: HashMap<&str, Vec<(Instant, &str)>> = HashMap::new();
    for (session, (owner, seen)) in sessions {
        if !live.contains(session) {
            by_owner
                .entry(owner.as_str())
                .or_default()
                .push((*seen, session.as_str()));
        }
    }
    by_owner
        .into_values()
        .flat_map(|mut own| {
            own.sort_unstable_by_key(|(seen, _)| Reverse(*seen));
            own.into_iter()
                .enumerate()
                .map(|(rank, (seen, session))| (rank, Reverse(seen), session))
        })
        .collect()
}

impl MemorySessions {
    /// Sessions idle for `idle` are forgotten; at most `max` are remembered (at least one).
    pub fn new(idle: Duration, max: usize) -> MemorySessions {
        let max = max.max(1);
        MemorySessions {
            idle,
            max,
            live: Box::new(Vec::new),
            inner: Mutex::new(Inner {
                next_room: GC_AT_LEN.min(max),
                ..Inner::default()
            }),
        }
    }

    /// `live` names the sessions held by open streams (the broadcaster's): they are never
    /// forgotten to make room.
    pub fn sparing(mut self, live: impl Fn() -> Vec<String> + Send + Sync + 'static) -> Self {
        self.live = Box::new(live);
        self
    }

    /// Before adding `session`: forgets idle sessions, then the least recently used ones without
    /// an open stream while the table is at the bound, when it has reached its mark.
    fn make_room(&self, inner: &mut Inner, session: &str) {
        if inner.sessions.len() < inner.next_room || inner.sessions.contains_key(session) {
            return;
        }
        inner.passes += 1;
        let idle = self.idle;
        inner.sessions.retain(|_, (_, seen)| seen.elapsed() < idle);
        if inner.sessions.len() >= self.max {
            // Keep nine tenths of the bound, and every live session.
            let live: HashSet<String> = (self.live)().into_iter().collect();
            let keep = self.max - self.max.div_ceil(10);
            let before = inner.sessions.len();
            let mut ranked = fair_share_order(&inner.sessions, &live);
            let keep_idle = keep.saturating_sub(before - ranked.len());
            if keep_idle == 0 {
                inner.sessions.retain(|k, _| live.contains(k));
            } else if ranked.len() > keep_idle {
                ranked.select_nth_unstable(keep_idle);
                let forget: HashSet<String> = ranked[keep_idle..]
                    .iter()
                    .map(|(_, _, k)| (*k).to_owned())
                    .collect();
                inner.sessions.retain(|k, _| !forget.contains(k));
            }
            tracing::warn!(
                max_sessions = self.max,
                forgotten = before - inner.sessions.len(),
                "session table full: the least recently used sessions are forgotten"
            );
        }
        inner.next_room = inner
            .sessions
            .len()
            .saturating_mul(2)
            .max(GC_AT_LEN)
            .min(self.max);
    }

    fn bind(&self, session: &str, owner: &Owner) -> Result<u64, SessionError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.make_room(&mut inner, session);
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
        self.make_room(&mut inner, session);
        inner
            .sessions
            .entry(session.to_owned())
            .or_insert_with(|| (owner.key().to_owned(), Instant::now()));
        Ok(())
    }

    async fn use_if_owned(&self, session: &str, owner: &Owner) -> Result<Ownership, SessionError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match inner.sessions.get_mut(session) {
            None => Ownership::Unknown,
            Some((key, seen)) if key == owner.key() => {
                *seen = Instant::now();
                Ownership::Mine
            }
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
        let s = MemorySessions::new(Duration::from_secs(60), 1000);
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
                s.use_if_owned("s1", other).await.expect("ownership"),
                Ownership::Other
            );
        }
        assert_eq!(
            s.use_if_owned("s1", &alice()).await.expect("ownership"),
            Ownership::Mine
        );
        assert_eq!(
            s.use_if_owned("s9", &alice()).await.expect("ownership"),
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
        let s = MemorySessions::new(Duration::from_millis(50), 1000);
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

    #[tokio::test]
    async fn past_the_bound_the_least_recently_used_are_forgotten_a_tenth_at_a_time() {
        let s = MemorySessions::new(Duration::from_secs(3600), 100);
        let tenant = |i: usize| Owner::tenant(&format!("t{i}"));
        s.claim("kept", &tenant(0)).await.expect("bind");
        for i in 1..100 {
            s.claim(&format!("s{i}"), &tenant(i)).await.expect("bind");
            if i % 10 == 0 {
                // Used again and again: never among the least recently used.
                s.touch(&["kept".to_owned()]).await.expect("touch");
            }
        }
        assert_eq!(s.inner.lock().expect("lock").passes, 0);
        // The 101st makes room: the ten least recently used go, in one pass.
        s.claim("new", &tenant(1000)).await.expect("bind");
        {
            let inner = s.inner.lock().expect("lock");
            assert_eq!(inner.passes, 1);
            assert_eq!(inner.sessions.len(), 91);
        }
        assert!(s.known("kept").await.expect("known"), "recently used: kept");
        assert!(
            !s.known("s1").await.expect("known"),
            "least recently used: forgotten"
        );
        assert!(s.known("s99").await.expect("known"));
        // A forgotten session is unknown: the next principal to present it binds it.
        assert!(s.claim("s1", &tenant(7)).await.is_ok());
        // The kept one is still its owner's.
        assert!(matches!(
            s.claim("kept", &tenant(1)).await,
            Err(SessionError::Forbidden)
        ));
        // 92 now (s1 is back): eight more additions need no pass; the ninth does.
        for i in 0..8 {
            s.claim(&format!("n{i}"), &tenant(2000 + i))
                .await
                .expect("bind");
        }
        assert_eq!(s.inner.lock().expect("lock").passes, 1);
        s.claim("n8", &tenant(3000)).await.expect("bind");
        assert_eq!(s.inner.lock().expect("lock").passes, 2);
    }

    /// A flood of new ids past the bound never forgets a session an open stream holds, however
    /// long ago it was used: whoever presented it next would bind it.
    #[tokio::test]
    async fn a_session_with_an_open_stream_is_never_forgotten_to_make_room() {
        let s =
            MemorySessions::new(Duration::from_secs(3600), 100).sparing(|| vec!["live".to_owned()]);
        s.claim("live", &alice()).await.expect("bind");
        for i in 0..1000 {
            s.check(&format!("s{i}"), &Owner::tenant("mallory"))
                .await
                .expect("bind");
        }
        assert!(
            s.inner.lock().expect("lock").sessions.len() <= 100,
            "bounded"
        );
        assert!(
            s.known("live").await.expect("known"),
            "the live session stays"
        );
        assert!(matches!(
            s.claim("live", &Owner::tenant("mallory")).await,
            Err(SessionError::Forbidden)
        ));
        assert!(
            !s.known("s0").await.expect("known"),
            "the least recently used go"
        );
    }

    #[tokio::test]
    async fn below_the_bound_a_pass_pays_for_as_many_additions_as_it_leaves_room_for() {
        // Nothing idle: every session stays; passes happen at 100k, 200k (twice what was left).
        let s = MemorySessions::new(Duration::from_secs(3600), 1_000_000);
        for i in 0..250_000 {
            s.claim(&format!("s{i}"), &Owner::anonymous())
                .await
                .expect("bind");
        }
        let inner = s.inner.lock().expect("lock");
        assert_eq!(inner.sessions.len(), 250_000);
        assert_eq!(inner.passes, 2);
    }
}
