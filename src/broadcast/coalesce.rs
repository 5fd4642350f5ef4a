//! Coalescing of idempotent signals (`FANOUT_COALESCE_MS`): the `…/list_changed` notifications
//! carry nothing worth keeping apart, so a burst of them costs a client one refetch.
//!
//! The rule, applied to the events of **one write** to one subscriber: a list_changed is left out
//! when a later list_changed of the same method and the same target (tenant, session) is in the
//! same write and was committed at most the window after it. So every event left out is superseded
//! by a delivered one with a higher id in the same write, and a client resuming from any id it was
//! given still gets, after that id, every event of another method and the newest list_changed.
//!
//! Streams also *gather* (see [`Coalescer`]): when what a stream has read holds a list_changed still
//! inside its window, the stream holds it (and whatever follows it) back, up to the window, so the
//! rest of a burst joins the same write. Events before it are written at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::event::{ListChanged, StoredEvent, Target};

/// Which list_changed an event is, if any: those are the notifications coalesced, each means
/// "refetch this list", nothing more.
pub fn kind(ev: &StoredEvent) -> Option<ListChanged> {
    ListChanged::of(&ev.method)
}

/// Leaves out of `events` (one write, in seq order) every list_changed superseded within `window`
/// by a later one of the same method and target in it. Returns how many were left out. A zero
/// window is off: nothing is left out.
pub fn coalesce(events: &mut Vec<Arc<StoredEvent>>, window: Duration) -> usize {
    if window.is_zero() || !events.iter().any(|e| kind(e).is_some()) {
        return 0;
    }
    // From the end: the commit time of the next later event of each (method, target). A viewer
    // sees at most four distinct targets (each set field must equal its own), so this stays tiny.
    let mut later: Vec<(ListChanged, &Target, SystemTime)> = Vec::new();
    let mut keep = vec![true; events.len()];
    for (i, ev) in events.iter().enumerate().rev() {
        let Some(k) = kind(ev) else { continue };
        match later
            .iter_mut()
            .find(|(lk, t, _)| *lk == k && **t == ev.target)
        {
            Some((_, _, next)) => {
                let gap = next.duration_since(ev.committed_at).unwrap_or_default();
                keep[i] = gap > window;
                *next = ev.committed_at;
            }
            None => later.push((k, &ev.target, ev.committed_at)),
        }
    }
    let before = events.len();
    let mut flags = keep.into_iter();
    events.retain(|_| flags.next().unwrap_or(true));
    before - events.len()
}

/// How long from now the list_changed `ev` may still be superseded (None: not one, or too old).
fn open_for(ev: &StoredEvent, window: Duration, now: SystemTime) -> Option<Duration> {
    kind(ev)?;
    let closes = ev.committed_at.checked_add(window)?;
    closes.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// One stream's coalescing: the window (zero = off) and the events held back to gather a burst,
/// read but not written yet.
#[derive(Default)]
pub struct Coalescer {
    window: Duration,
    held: Option<Box<Held>>,
}

struct Held {
    events: Vec<Arc<StoredEvent>>,
    bytes: usize,
    /// When the held events are written, whatever has joined them by then. At most the window
    /// after the hold began, so a steady trickle cannot hold a stream back for longer.
    until: Instant,
}

impl Coalescer {
    /// `window` zero: off (nothing is held or left out).
    pub fn new(window: Duration) -> Coalescer {
        Coalescer { window, held: None }
    }

    pub fn is_on(&self) -> bool {
        !self.window.is_zero()
    }

    /// Events and frame bytes held.
    pub fn held(&self) -> (usize, usize) {
        self.held
            .as_ref()
            .map_or((0, 0), |h| (h.events.len(), h.bytes))
    }

    /// When the hold ends, if holding.
    pub fn until(&self) -> Option<Instant> {
        self.held.as_ref().map(|h| h.until)
    }

    /// Takes what was read (`read`, after whatever is held) and returns what to write now, if
    /// anything; the rest is held until [`Coalescer::until`]. `full`: the write cannot grow (the
    /// step limits), so nothing is held.
    pub fn take(
        &mut self,
        read: Vec<Arc<StoredEvent>>,
        full: bool,
    ) -> Option<Vec<Arc<StoredEvent>>> {
        if let Some(mut held) = self.held.take() {
            held.bytes += frame_bytes(&read);
            held.events.extend(read);
            if full || Instant::now() >= held.until {
                return Some(held.events);
            }
            self.held = Some(held);
            return None;
        }
        let now = SystemTime::now();
        let open = read
            .iter()
            .enumerate()
            .find_map(|(i, e)| open_for(e, self.window, now).map(|d| (i, d)));
        let Some((at, open_for)) = open.filter(|_| !full) else {
            return (!read.is_empty()).then_some(read);
        };
        let mut read = read;
        let rest = read.split_off(at);
        self.held = Some(Box::new(Held {
            bytes: frame_bytes(&rest),
            events: rest,
            until: Instant::now() + open_for.min(self.window),
        }));
        (!read.is_empty()).then_some(read)
    }

    /// Everything held, to be written now (an end condition, a read error).
    pub fn flush(&mut self) -> Option<Vec<Arc<StoredEvent>>> {
        self.held.take().map(|h| h.events)
    }

    /// Applies [`coalesce`] to one write; returns how many events were left out.
    pub fn coalesce(&self, events: &mut Vec<Arc<StoredEvent>>) -> usize {
        coalesce(events, self.window)
    }
}

fn frame_bytes(events: &[Arc<StoredEvent>]) -> usize {
    events.iter().map(|e| e.frame().len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "notifications/tools/list_changed";
    const PROMPTS: &str = "notifications/prompts/list_changed";
    const OTHER: &str = "notifications/resources/updated";

    fn at(seq: u64, method: &str, target: Target, ms: u64) -> Arc<StoredEvent> {
        Arc::new(StoredEvent::new(
            "ep",
            seq,
            method,
            None,
            target,
            SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        ))
    }

    fn session(s: &str) -> Target {
        Target {
            tenant: None,
            session: Some(s.into()),
        }
    }

    fn seqs(events: &[Arc<StoredEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    const W: Duration = Duration::from_millis(100);

    #[test]
    fn only_the_newest_list_changed_of_a_burst_is_kept_and_others_pass() {
        let all = Target::default();
        let mut events = vec![
            at(1, LIST, all.clone(), 0),
            at(2, OTHER, all.clone(), 10),
            at(3, LIST, all.clone(), 20),
            at(4, PROMPTS, all.clone(), 30),
            at(5, LIST, all.clone(), 40),
            at(6, OTHER, all.clone(), 50),
        ];
        assert_eq!(coalesce(&mut events, W), 2);
        assert_eq!(seqs(&events), vec![2, 4, 5, 6]);
    }

    #[test]
    fn each_method_and_target_is_coalesced_apart() {
        let all = Target::default();
        let mut events = vec![
            at(1, LIST, session("a"), 0),
            at(2, LIST, all.clone(), 1),
            at(3, PROMPTS, all.clone(), 2),
            at(4, LIST, session("a"), 3),
            at(5, LIST, all.clone(), 4),
            at(6, PROMPTS, all.clone(), 5),
        ];
        assert_eq!(coalesce(&mut events, W), 3);
        assert_eq!(seqs(&events), vec![4, 5, 6]);
    }

    #[test]
    fn a_gap_longer_than_the_window_keeps_both_and_chains_collapse() {
        let all = Target::default();
        // 0 → 150: gap over the window, both kept. 150 → 240 → 330: gaps within, one kept.
        let mut events = vec![
            at(1, LIST, all.clone(), 0),
            at(2, LIST, all.clone(), 150),
            at(3, LIST, all.clone(), 240),
            at(4, LIST, all.clone(), 330),
        ];
        assert_eq!(coalesce(&mut events, W), 2);
        assert_eq!(seqs(&events), vec![1, 4]);
    }

    #[test]
    fn the_last_event_of_a_write_is_never_left_out() {
        let all = Target::default();
        for n in 1..40u64 {
            let mut events: Vec<_> = (1..=n)
                .map(|s| {
                    let m = [LIST, OTHER, PROMPTS][(s % 3) as usize];
                    at(s, m, all.clone(), s)
                })
                .collect();
            let others: Vec<u64> = events
                .iter()
                .filter(|e| kind(e).is_none())
                .map(|e| e.seq)
                .collect();
            coalesce(&mut events, W);
            assert_eq!(events.last().map(|e| e.seq), Some(n));
            let kept_others: Vec<u64> = events
                .iter()
                .filter(|e| kind(e).is_none())
                .map(|e| e.seq)
                .collect();
            assert_eq!(kept_others, others, "other methods are never left out");
        }
    }

    #[test]
    fn off_holds_and_leaves_out_nothing() {
        let mut g = Coalescer::new(Duration::ZERO);
        let mut out = g
            .take(vec![now_ev(1, LIST), now_ev(2, LIST)], false)
            .expect("written at once");
        assert_eq!(g.coalesce(&mut out), 0);
        assert_eq!(seqs(&out), vec![1, 2]);
    }

    #[test]
    fn no_list_changed_means_nothing_changes() {
        let mut events = vec![at(1, OTHER, Target::default(), 0)];
        assert_eq!(coalesce(&mut events, W), 0);
        assert_eq!(seqs(&events), vec![1]);
    }

    fn now_ev(seq: u64, method: &str) -> Arc<StoredEvent> {
        Arc::new(StoredEvent::new(
            "ep",
            seq,
            method,
            None,
            Target::default(),
            SystemTime::now(),
        ))
    }

    #[tokio::test]
    async fn a_fresh_list_changed_is_held_with_what_follows_and_what_precedes_it_goes_out() {
        let old = at(1, OTHER, Target::default(), 0);
        let mut g = Coalescer::new(W);
        let out = g.take(vec![old, now_ev(2, LIST), now_ev(3, OTHER)], false);
        assert_eq!(out.as_deref().map(seqs), Some(vec![1]));
        assert_eq!(g.held().0, 2);
        // More joins the hold before it ends.
        assert!(g.take(vec![now_ev(4, LIST)], false).is_none());
        // A full write goes out at once.
        let mut out = g.take(vec![now_ev(5, OTHER)], true).expect("written");
        assert_eq!(seqs(&out), vec![2, 3, 4, 5]);
        assert!(g.until().is_none());
        assert_eq!(g.coalesce(&mut out), 1);
        assert_eq!(seqs(&out), vec![3, 4, 5]);
    }

    #[tokio::test]
    async fn a_hold_ends_within_the_window() {
        let mut g = Coalescer::new(W);
        assert!(g.take(vec![now_ev(1, LIST)], false).is_none());
        let until = g.until().expect("holding");
        assert!(until <= Instant::now() + W);
        tokio::time::sleep_until(until).await;
        let out = g.take(vec![], false).expect("due");
        assert_eq!(seqs(&out), vec![1]);
        // Old list_changed (a replay) are not held.
        let mut g = Coalescer::new(W);
        let out = g.take(vec![at(7, LIST, Target::default(), 0)], false);
        assert_eq!(out.as_deref().map(seqs), Some(vec![7]));
        assert!(g.flush().is_none());
    }
}
