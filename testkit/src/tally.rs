//! Counting what one subscriber received against what was published: loss, duplicates, order.
//!
//! Event ids are `<epoch>-<seq>` (contract §3.1). A subscriber must see every expected id exactly once, in
//! the published order, with ids strictly increasing within one epoch. [`Tally::check`] names every
//! violation precisely so a failing test says which event went missing or came twice, and where.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::sse::Frame;

/// A parsed event id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId {
    /// `[0-9a-z]{1,32}`
    pub epoch: String,
    /// Decimal, no leading zeros.
    pub seq: u64,
}

impl FromStr for EventId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            Error::Protocol(format!(
                "{s:?} is not an event id of the form <epoch>-<seq>"
            ))
        };
        let (epoch, seq) = s.rsplit_once('-').ok_or_else(bad)?;
        let epoch_ok = !epoch.is_empty()
            && epoch.len() <= 32
            && epoch
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        let seq_ok = !seq.is_empty()
            && seq.bytes().all(|b| b.is_ascii_digit())
            && (seq == "0" || !seq.starts_with('0'));
        if !epoch_ok || !seq_ok {
            return Err(bad());
        }
        let seq = seq.parse().map_err(|_| bad())?;
        Ok(EventId {
            epoch: epoch.to_string(),
            seq,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// The seq of an event id; panics if `id` is not one.
pub fn seq_of(id: &str) -> u64 {
    id.parse::<EventId>()
        .unwrap_or_else(|e| panic!("{id:?} is not an event id: {e}"))
        .seq
}

/// The event ids of SSE frames that carry an id and non-empty data.
pub fn frame_ids(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.data.as_deref().is_some_and(|d| !d.is_empty()))
        .filter_map(|f| f.id.clone())
        .collect()
}

impl EventId {
    /// The same epoch with another seq.
    pub fn with_seq(&self, seq: u64) -> EventId {
        EventId {
            epoch: self.epoch.clone(),
            seq,
        }
    }
}

/// What one subscriber got, against the expected list.
#[derive(Debug, Clone)]
pub struct Tally {
    label: String,
    expected: Vec<String>,
    seen: Vec<String>,
}

/// The violations found by [`Tally::report`]; empty vectors mean "none".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TallyReport {
    /// Expected ids never received.
    pub missing: Vec<String>,
    /// Ids received more than once, with how many times.
    pub duplicated: Vec<(String, usize)>,
    /// `(position, previous id, this id)` where ids did not strictly increase or did not follow the
    /// published order.
    pub out_of_order: Vec<(usize, String, String)>,
    /// Ids received that were never published (within this tally's expectations).
    pub unexpected: Vec<String>,
    /// Strings that are not event ids at all.
    pub malformed: Vec<String>,
}

impl TallyReport {
    /// No violation.
    pub fn is_clean(&self) -> bool {
        *self == TallyReport::default()
    }
}

impl Tally {
    /// A tally for subscriber `label` that must receive exactly `expected`, in that order.
    pub fn new<I, S>(label: &str, expected: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Tally {
            label: label.to_string(),
            expected: expected.into_iter().map(Into::into).collect(),
            seen: Vec::new(),
        }
    }

    /// Records one received id.
    pub fn observe(&mut self, id: &str) {
        self.seen.push(id.to_string());
    }

    /// Records every frame that is an event with an id and non-empty data (priming frames and
    /// keep-alives are not events).
    pub fn observe_frames<'a, I>(&mut self, frames: I)
    where
        I: IntoIterator<Item = &'a Frame>,
    {
        for f in frames {
            if let (Some(id), Some(data)) = (&f.id, &f.data) {
                if !data.is_empty() {
                    self.observe(id);
                }
            }
        }
    }

    /// Received ids so far, in arrival order.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Every violation.
    pub fn report(&self) -> TallyReport {
        let mut report = TallyReport::default();
        let expected_pos: HashMap<&str, usize> = self
            .expected
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();

        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &self.seen {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        let mut reported_dup = HashSet::new();
        for id in &self.seen {
            let n = counts.get(id.as_str()).copied().unwrap_or(0);
            if n > 1 && reported_dup.insert(id.as_str()) {
                report.duplicated.push((id.clone(), n));
            }
            if !expected_pos.contains_key(id.as_str()) {
                report.unexpected.push(id.clone());
            }
        }
        for id in &self.expected {
            if !counts.contains_key(id.as_str()) {
                report.missing.push(id.clone());
            }
        }

        let mut prev: Option<(&str, Option<EventId>)> = None;
        for (pos, id) in self.seen.iter().enumerate() {
            let parsed = id.parse::<EventId>().ok();
            if parsed.is_none() {
                report.malformed.push(id.clone());
            }
            if let Some((prev_id, prev_parsed)) = &prev {
                let increasing = match (prev_parsed, &parsed) {
                    (Some(a), Some(b)) => a.epoch == b.epoch && b.seq > a.seq,
                    _ => true,
                };
                let published_order =
                    match (expected_pos.get(prev_id), expected_pos.get(id.as_str())) {
                        (Some(a), Some(b)) => b > a,
                        _ => true,
                    };
                if !increasing || !published_order {
                    report
                        .out_of_order
                        .push((pos, (*prev_id).to_string(), id.clone()));
                }
            }
            prev = Some((id.as_str(), parsed));
        }
        report
    }

    /// `Ok` when the subscriber got exactly the expected ids once each in order; otherwise a precise
    /// description of what went wrong.
    pub fn check(&self) -> Result<(), String> {
        let r = self.report();
        if r.is_clean() {
            return Ok(());
        }
        let mut msg = format!(
            "subscriber `{}`: expected {} events, received {} ids",
            self.label,
            self.expected.len(),
            self.seen.len()
        );
        if !r.missing.is_empty() {
            msg.push_str(&format!(
                "\n  missing ({}): {}",
                r.missing.len(),
                preview(&r.missing)
            ));
        }
        if !r.duplicated.is_empty() {
            let d: Vec<String> = r
                .duplicated
                .iter()
                .map(|(id, n)| format!("{id} ×{n}"))
                .collect();
            msg.push_str(&format!("\n  duplicated ({}): {}", d.len(), preview(&d)));
        }
        if !r.out_of_order.is_empty() {
            let o: Vec<String> = r
                .out_of_order
                .iter()
                .map(|(pos, a, b)| format!("#{pos}: {b} after {a}"))
                .collect();
            msg.push_str(&format!("\n  out of order ({}): {}", o.len(), preview(&o)));
        }
        if !r.unexpected.is_empty() {
            msg.push_str(&format!(
                "\n  never published ({}): {}",
                r.unexpected.len(),
                preview(&r.unexpected)
            ));
        }
        if !r.malformed.is_empty() {
            msg.push_str(&format!(
                "\n  not event ids ({}): {}",
                r.malformed.len(),
                preview(&r.malformed)
            ));
        }
        Err(msg)
    }

    /// Panics with [`Tally::check`]'s message unless the subscriber got exactly the expected ids.
    #[track_caller]
    pub fn assert_exact(&self) {
        if let Err(msg) = self.check() {
            panic!("{msg}");
        }
    }
}

fn preview(items: &[String]) -> String {
    const MAX: usize = 20;
    if items.len() <= MAX {
        items.join(", ")
    } else {
        format!(
            "{}, … and {} more",
            items[..MAX].join(", "),
            items.len() - MAX
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_ids() {
        let id: EventId = "k3x9-42".parse().expect("valid");
        assert_eq!(id.epoch, "k3x9");
        assert_eq!(id.seq, 42);
        assert_eq!(id.to_string(), "k3x9-42");
        for bad in ["", "-1", "abc", "ab-", "AB-1", "ab-01", "a b-1", "ab-1x"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn clean_tally() {
        let mut t = Tally::new("s", ["e-1", "e-2", "e-5"]);
        for id in ["e-1", "e-2", "e-5"] {
            t.observe(id);
        }
        t.check().expect("clean");
    }

    #[test]
    fn reports_loss_duplicates_and_order() {
        let mut t = Tally::new("s", ["e-1", "e-2", "e-3", "e-4"]);
        for id in ["e-1", "e-3", "e-2", "e-3", "f-9"] {
            t.observe(id);
        }
        let r = t.report();
        assert_eq!(r.missing, vec!["e-4".to_string()]);
        assert_eq!(r.duplicated, vec![("e-3".to_string(), 2)]);
        assert_eq!(r.unexpected, vec!["f-9".to_string()]);
        assert_eq!(
            r.out_of_order,
            vec![
                (2, "e-3".to_string(), "e-2".to_string()),
                (4, "e-3".to_string(), "f-9".to_string()),
            ]
        );
        let msg = t.check().expect_err("violations");
        assert!(msg.contains("missing (1): e-4"), "{msg}");
    }
}
