//! The idempotency rules every log follows, as one pure planner.
//!
//! A request may carry a request-wide key (`Idempotency-Key`) and each event its own key. Given
//! the request, what the store already holds for those keys and the store's head, [`plan`]
//! decides what to answer and what to append:
//!
//! - a known request key with the same body answers the original seqs and appends nothing; with
//!   another body it is a conflict (no index);
//! - otherwise each keyed event whose key is known answers its original seq if its body is the
//!   same, and is a conflict (with its index when the request has several events) if not;
//! - every other event gets the next seq; its key (if any) and the request key (if any) are
//!   recorded. All or nothing: a conflict appends nothing.
//!
//! The stores keep keys as `{prefix}{key}`; the prefixes are stored in Postgres, so their values
//! must never change.

use std::collections::HashMap;

use super::{AppendRequest, Appended, LogError};
use crate::event::input::request_fingerprint;
use crate::event::NewEvent;

/// Prefix of a stored request-wide key.
pub const REQUEST_KEY_PREFIX: &str = "request:";
/// Prefix of a stored per-event key.
pub const EVENT_KEY_PREFIX: &str = "event:";

/// What a store holds for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The body's fingerprint (an event's, or the whole request's).
    pub fingerprint: Vec<u8>,
    /// The seqs it was answered with (one for an event key, one per event for a request key).
    pub seqs: Vec<u64>,
}

/// A key to record with the events appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The stored key, prefix included.
    pub key: String,
    pub known: Known,
    /// The highest seq it covers: the key is forgotten once that event is pruned.
    pub max_seq: u64,
}

/// What to do with an accepted request: append `fresh`, record `keys`, answer `answer`. A retry
/// of a known request key appends and records nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan<'a> {
    /// The answer once applied: one seq per requested event, in order.
    pub answer: Appended,
    /// The events to append with their new seqs, in seq order.
    pub fresh: Vec<(u64, &'a NewEvent)>,
    /// The keys to record, in the order written.
    pub keys: Vec<KeyRecord>,
    /// The store's head once applied.
    pub head: u64,
}

/// The stored form of a request-wide key.
pub fn request_key(key: &str) -> String {
    format!("{REQUEST_KEY_PREFIX}{key}")
}

/// The stored form of a per-event key.
pub fn event_key(key: &str) -> String {
    format!("{EVENT_KEY_PREFIX}{key}")
}

/// Every stored key the request names: what a store must look up before [`plan`].
pub fn keys_of(req: &AppendRequest) -> Vec<String> {
    let mut keys: Vec<String> = req
        .events
        .iter()
        .filter_map(|e| e.key.as_deref().map(event_key))
        .collect();
    if let Some(k) = &req.request_key {
        keys.push(request_key(k));
    }
    keys
}

/// Decides one request against what the store holds (`known`, at least every key of
/// [`keys_of`] that exists) and its current `head`.
pub fn plan<'a>(
    req: &'a AppendRequest,
    known: &HashMap<String, Known>,
    head: u64,
) -> Result<Plan<'a>, LogError> {
    let request = req
        .request_key
        .as_deref()
        .map(|k| (request_key(k), request_fingerprint(&req.events).to_vec()));
    if let Some((key, fingerprint)) = &request {
        if let Some(k) = known.get(key) {
            return if k.fingerprint == *fingerprint {
                Ok(Plan {
                    answer: Appended {
                        seqs: k.seqs.clone(),
                        new_events: 0,
                    },
                    fresh: Vec::new(),
                    keys: Vec::new(),
                    head,
                })
            } else {
                Err(LogError::IdempotencyConflict { index: None })
            };
        }
    }
    let batch = req.events.len() > 1;
    let mut seqs = Vec::with_capacity(req.events.len());
    let mut fresh = Vec::new();
    let mut keys = Vec::new();
    let mut next = head;
    for (i, ev) in req.events.iter().enumerate() {
        let key = ev.key.as_deref().map(event_key);
        let original = match key.as_ref().and_then(|k| known.get(k)) {
            Some(k) if k.fingerprint != ev.fingerprint() => {
                return Err(LogError::IdempotencyConflict {
                    index: batch.then_some(i),
                })
            }
            Some(k) => k.seqs.first().copied(),
            None => None,
        };
        if let Some(seq) = original {
            seqs.push(seq);
            continue;
        }
        next += 1;
        seqs.push(next);
        fresh.push((next, ev));
        if let Some(key) = key {
            keys.push(KeyRecord {
                key,
                known: Known {
                    fingerprint: ev.fingerprint().to_vec(),
                    seqs: vec![next],
                },
                max_seq: next,
            });
        }
    }
    if let Some((key, fingerprint)) = request {
        keys.push(KeyRecord {
            key,
            max_seq: seqs.iter().copied().max().unwrap_or(next),
            known: Known {
                fingerprint,
                seqs: seqs.clone(),
            },
        });
    }
    Ok(Plan {
        answer: Appended {
            seqs,
            new_events: fresh.len(),
        },
        fresh,
        keys,
        head: next,
    })
}

/// Requests for tests of the logs.
#[cfg(test)]
pub(crate) mod test_support {
    use super::AppendRequest;
    use crate::event::{NewEvent, Target};

    /// An event `notifications/{method}` without params, with an optional key.
    pub fn ev(method: &str, key: Option<&str>) -> NewEvent {
        NewEvent {
            method: format!("notifications/{method}"),
            params: None,
            target: Target::default(),
            key: key.map(str::to_owned),
        }
    }

    pub fn req(events: Vec<NewEvent>, key: Option<&str>) -> AppendRequest {
        AppendRequest {
            events,
            request_key: key.map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{ev, req};
    use super::*;

    /// Applies an accepted plan's keys, as a store does.
    fn record(known: &mut HashMap<String, Known>, plan: &Plan<'_>) {
        for r in &plan.keys {
            known.insert(r.key.clone(), r.known.clone());
        }
    }

    fn appended(seqs: &[u64], new_events: usize) -> Appended {
        Appended {
            seqs: seqs.to_vec(),
            new_events,
        }
    }

    #[test]
    fn prefixes_are_the_stored_ones() {
        assert_eq!(request_key("k"), "request:k");
        assert_eq!(event_key("k"), "event:k");
        let r = req(vec![ev("a", Some("x")), ev("b", None)], Some("r"));
        assert_eq!(keys_of(&r), vec!["event:x", "request:r"]);
        assert!(keys_of(&req(vec![ev("a", None)], None)).is_empty());
    }

    #[test]
    fn unkeyed_events_take_the_next_seqs() {
        let r = req(vec![ev("a", None), ev("b", None)], None);
        let p = plan(&r, &HashMap::new(), 7).expect("plan");
        assert_eq!(p.answer, appended(&[8, 9], 2));
        assert_eq!(p.fresh.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [8, 9]);
        assert!(p.keys.is_empty());
        assert_eq!(p.head, 9);
    }

    #[test]
    fn request_key_is_recorded_then_replayed_or_conflicts() {
        let mut known = HashMap::new();
        let first = req(vec![ev("a", None), ev("b", None)], Some("k"));
        let p = plan(&first, &known, 0).expect("first");
        assert_eq!(p.keys.len(), 1);
        assert_eq!(p.keys[0].key, "request:k");
        assert_eq!(p.keys[0].known.seqs, vec![1, 2]);
        assert_eq!(p.keys[0].max_seq, 2);
        record(&mut known, &p);

        let retry = plan(&first, &known, 2).expect("retry");
        assert_eq!(
            retry,
            Plan {
                answer: appended(&[1, 2], 0),
                fresh: Vec::new(),
                keys: Vec::new(),
                head: 2,
            }
        );
        let other = req(vec![ev("c", None)], Some("k"));
        assert!(matches!(
            plan(&other, &known, 2),
            Err(LogError::IdempotencyConflict { index: None })
        ));
    }

    #[test]
    fn event_keys_replay_or_conflict_with_index_in_a_batch() {
        let mut known = HashMap::new();
        let first = req(vec![ev("a", Some("x"))], None);
        let p = plan(&first, &known, 0).expect("first");
        record(&mut known, &p);
        assert_eq!(known["event:x"].seqs, vec![1]);

        let mixed = req(vec![ev("a", Some("x")), ev("b", Some("y"))], None);
        let p = plan(&mixed, &known, 1).expect("mixed");
        assert_eq!(p.answer, appended(&[1, 2], 1));
        assert_eq!(p.fresh.len(), 1);
        assert_eq!(p.fresh[0].1.method, "notifications/b");
        assert_eq!(p.head, 2);
        record(&mut known, &p);

        let batch = req(vec![ev("z", None), ev("other", Some("y"))], None);
        assert!(matches!(
            plan(&batch, &known, 2),
            Err(LogError::IdempotencyConflict { index: Some(1) })
        ));
        let single = req(vec![ev("other", Some("y"))], None);
        assert!(matches!(
            plan(&single, &known, 2),
            Err(LogError::IdempotencyConflict { index: None })
        ));
    }

    #[test]
    fn all_retries_append_nothing_but_record_the_request_key() {
        let mut known = HashMap::new();
        let first = req(vec![ev("a", Some("x"))], None);
        let p = plan(&first, &known, 0).expect("first");
        record(&mut known, &p);
        let r = req(vec![ev("a", Some("x"))], Some("r"));
        let p = plan(&r, &known, 5).expect("retry");
        assert_eq!(p.answer, appended(&[1], 0));
        assert!(p.fresh.is_empty());
        assert_eq!(p.head, 5);
        assert_eq!(p.keys.len(), 1);
        assert_eq!(p.keys[0].key, "request:r");
        assert_eq!(p.keys[0].max_seq, 1);
    }

    #[test]
    fn request_key_is_checked_before_event_keys() {
        let mut known = HashMap::new();
        let first = req(vec![ev("a", Some("x"))], Some("r"));
        let p = plan(&first, &known, 0).expect("first");
        record(&mut known, &p);
        // The event key now names another body, but the request key answers first.
        known.insert(
            "event:x".into(),
            Known {
                fingerprint: vec![0; 32],
                seqs: vec![1],
            },
        );
        assert_eq!(
            plan(&first, &known, 1).expect("retry").answer,
            appended(&[1], 0)
        );
    }
}
