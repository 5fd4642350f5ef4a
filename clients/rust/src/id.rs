//! Event ids: `<epoch>-<seq>`.

use std::fmt;
use std::str::FromStr;

/// The id of an event in the log: `<epoch>-<seq>`.
///
/// The epoch names one log (it changes only when the log is recreated); `seq` grows by one per
/// committed event. Within one epoch, ids order events exactly as the log does.
///
/// ```
/// use mcp_fanout_client::EventId;
///
/// let id: EventId = "k2f9x0c1m4q8z7ab-41".parse().unwrap();
/// assert_eq!(id.epoch(), "k2f9x0c1m4q8z7ab");
/// assert_eq!(id.seq(), 41);
/// assert_eq!(id.to_string(), "k2f9x0c1m4q8z7ab-41");
/// assert!(id < "k2f9x0c1m4q8z7ab-42".parse().unwrap());
/// assert!("not an id".parse::<EventId>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    epoch: String,
    seq: u64,
}

/// A string that is not an `<epoch>-<seq>` event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an event id (`<epoch>-<seq>`, the epoch lowercase base-36, the seq a number)"
)]
pub struct InvalidEventId(pub String);

impl EventId {
    /// The log's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The position in the log.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether `self` comes after `other` in the same log (`false` across epochs).
    pub fn is_after(&self, other: &EventId) -> bool {
        self.epoch == other.epoch && self.seq > other.seq
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl FromStr for EventId {
    type Err = InvalidEventId;

    fn from_str(text: &str) -> Result<EventId, InvalidEventId> {
        let invalid = || InvalidEventId(text.to_owned());
        let (epoch, seq) = text.split_once('-').ok_or_else(invalid)?;
        let epoch_ok = !epoch.is_empty()
            && epoch.len() <= 32
            && epoch
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        let seq_ok = !seq.is_empty()
            && seq.bytes().all(|b| b.is_ascii_digit())
            && (seq == "0" || !seq.starts_with('0'));
        if !(epoch_ok && seq_ok) {
            return Err(invalid());
        }
        Ok(EventId {
            epoch: epoch.to_owned(),
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EventId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_server_writes_and_nothing_else() {
        for ok in ["a-0", "k2f9x0c1m4q8z7ab-41", "0-18446744073709551615"] {
            let id: EventId = ok.parse().expect(ok);
            assert_eq!(id.to_string(), ok);
        }
        for bad in [
            "",
            "-1",
            "a-",
            "a-01",
            "A-1",
            "a-1-2",
            "a-x",
            "a-18446744073709551616",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
        let a: EventId = "e-9".parse().expect("id");
        let b: EventId = "e-10".parse().expect("id");
        let other: EventId = "f-11".parse().expect("id");
        assert!(b.is_after(&a) && !a.is_after(&b) && !other.is_after(&a));
    }
}
