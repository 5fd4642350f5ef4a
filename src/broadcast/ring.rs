//! The ring of recent events: seq-ordered, bounded by count and bytes.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::event::StoredEvent;

#[derive(Debug, Clone, Copy)]
pub struct RingLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

/// Holds every event with `floor < seq <= head`; older ones must be read from the log.
pub struct Ring {
    events: VecDeque<Arc<StoredEvent>>,
    bytes: usize,
    floor: u64,
    head: u64,
    limits: RingLimits,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RingRead {
    /// The cursor is older than the ring: read the log.
    Behind,
    /// Events after the cursor were appended to `out` (possibly none).
    Read,
}

impl Ring {
    pub fn new(head: u64, limits: RingLimits) -> Ring {
        Ring {
            events: VecDeque::new(),
            bytes: 0,
            floor: head,
            head,
            limits,
        }
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Appends one event; ignores it if its seq is not above the head. Evicts the oldest beyond
    /// the limits, always keeping the newest.
    pub fn push(&mut self, ev: Arc<StoredEvent>) -> bool {
        if ev.seq <= self.head {
            return false;
        }
        self.head = ev.seq;
        self.bytes += ev.size();
        self.events.push_back(ev);
        while self.events.len() > 1
            && (self.events.len() > self.limits.max_events || self.bytes > self.limits.max_bytes)
        {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.size();
            self.floor = old.seq;
        }
        true
    }

    /// The newest `n` events, newest first.
    pub fn newest(&self, n: usize) -> impl Iterator<Item = &Arc<StoredEvent>> {
        self.events.iter().rev().take(n)
    }

    /// Appends to `out` up to `max` events with seq > `cursor`.
    pub fn read_after(&self, cursor: u64, max: usize, out: &mut Vec<Arc<StoredEvent>>) -> RingRead {
        if cursor < self.floor {
            return RingRead::Behind;
        }
        let start = self.events.partition_point(|e| e.seq <= cursor);
        out.extend(self.events.range(start..).take(max).cloned());
        RingRead::Read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Target;
    use std::time::SystemTime;

    fn ev(seq: u64) -> Arc<StoredEvent> {
        Arc::new(StoredEvent::new(
            "e",
            seq,
            "notifications/t",
            None,
            Target::default(),
            SystemTime::now(),
        ))
    }

    fn seqs(v: &[Arc<StoredEvent>]) -> Vec<u64> {
        v.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn evicts_by_count_and_reports_behind() {
        let mut r = Ring::new(
            10,
            RingLimits {
                max_events: 3,
                max_bytes: usize::MAX,
            },
        );
        for s in [11, 12, 15, 16, 20] {
            assert!(r.push(ev(s)));
        }
        assert!(!r.push(ev(20)), "duplicates are ignored");
        assert!(!r.push(ev(19)), "older seqs are ignored");
        assert_eq!((r.floor(), r.head()), (12, 20));
        let mut out = vec![];
        assert_eq!(r.read_after(11, 10, &mut out), RingRead::Behind);
        assert_eq!(r.read_after(12, 10, &mut out), RingRead::Read);
        assert_eq!(seqs(&out), vec![15, 16, 20]);
        out.clear();
        r.read_after(15, 1, &mut out);
        assert_eq!(seqs(&out), vec![16]);
        out.clear();
        r.read_after(20, 10, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn evicts_by_bytes_but_keeps_the_newest() {
        let one = ev(1).size();
        let mut r = Ring::new(
            0,
            RingLimits {
                max_events: 100,
                max_bytes: one * 2,
            },
        );
        for s in 1..=5 {
            r.push(ev(s));
        }
        assert_eq!(r.floor(), 3);
        let mut tiny = Ring::new(
            0,
            RingLimits {
                max_events: 100,
                max_bytes: 1,
            },
        );
        tiny.push(ev(1));
        tiny.push(ev(2));
        let mut out = vec![];
        tiny.read_after(1, 10, &mut out);
        assert_eq!(seqs(&out), vec![2]);
    }
}
