//! Event ids (contract §3.1): an opaque `<epoch>-<seq>` string.

use std::fmt;

/// Longest accepted cursor, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 256;

/// One event's id: the log's epoch and the event's seq within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId<'a> {
    pub epoch: &'a str,
    pub seq: u64,
}

impl fmt::Display for EventId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// A cursor a client presented (`Last-Event-ID`, `last_event_id`, `after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// No cursor, or an empty one.
    Absent,
    /// Of our form; whether it is replayable depends on the log's epoch, head and watermark.
    At { epoch: String, seq: u64 },
    /// Not of our form: a resync (or, in proxy mode, the upstream's).
    Foreign(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEventId {
    #[error("the event id is longer than {MAX_EVENT_ID_BYTES} bytes")]
    TooLong,
    #[error("the event id contains a control character")]
    ControlCharacter,
}

impl Cursor {
    /// Parses a raw header or query value. Only length and control bytes are errors; anything
    /// else that is not `<epoch>-<seq>` is [`Cursor::Foreign`].
    pub fn parse(raw: Option<&[u8]>) -> Result<Cursor, InvalidEventId> {
        let Some(raw) = raw else {
            return Ok(Cursor::Absent);
        };
        if raw.len() > MAX_EVENT_ID_BYTES {
            return Err(InvalidEventId::TooLong);
        }
        if raw.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(InvalidEventId::ControlCharacter);
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            return Ok(Cursor::Foreign(String::from_utf8_lossy(raw).into_owned()));
        };
        if text.is_empty() {
            return Ok(Cursor::Absent);
        }
        Ok(match parse_ours(text) {
            Some((epoch, seq)) => Cursor::At { epoch, seq },
            None => Cursor::Foreign(text.to_owned()),
        })
    }
}

/// `<epoch>-<seq>`: the grammar of the ids this service writes, kept in one place, the client
/// crate's [`mcp_fanout_client::EventId`].
fn parse_ours(text: &str) -> Option<(String, u64)> {
    let id: mcp_fanout_client::EventId = text.parse().ok()?;
    Some((id.epoch().to_owned(), id.seq()))
}

/// A fresh random epoch: 16 base-36 characters.
pub fn random_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, seq: u64) -> Cursor {
        Cursor::At {
            epoch: epoch.into(),
            seq,
        }
    }

    #[test]
    fn parses_our_form() {
        assert_eq!(Cursor::parse(Some(b"abc123-42")), Ok(at("abc123", 42)));
        assert_eq!(Cursor::parse(Some(b"e-0")), Ok(at("e", 0)));
        assert_eq!(Cursor::parse(None), Ok(Cursor::Absent));
        assert_eq!(Cursor::parse(Some(b"")), Ok(Cursor::Absent));
    }

    #[test]
    fn other_forms_are_foreign() {
        for raw in [
            "abc-01",
            "ABC-1",
            "abc",
            "-1",
            "abc-",
            "abc-1-2",
            "abc-99999999999999999999999",
            "a b-1",
        ] {
            assert!(
                matches!(Cursor::parse(Some(raw.as_bytes())), Ok(Cursor::Foreign(_))),
                "{raw}"
            );
        }
        let long_epoch = format!("{}-1", "a".repeat(33));
        assert!(matches!(
            Cursor::parse(Some(long_epoch.as_bytes())),
            Ok(Cursor::Foreign(_))
        ));
    }

    #[test]
    fn control_bytes_and_length_are_errors() {
        assert_eq!(
            Cursor::parse(Some(b"a-1\x01")),
            Err(InvalidEventId::ControlCharacter)
        );
        assert_eq!(
            Cursor::parse(Some(b"a-1\x7f")),
            Err(InvalidEventId::ControlCharacter)
        );
        let long = vec![b'a'; 257];
        assert_eq!(Cursor::parse(Some(&long)), Err(InvalidEventId::TooLong));
        let ok = vec![b'a'; 256];
        assert!(Cursor::parse(Some(&ok)).is_ok());
    }

    #[test]
    fn display_round_trips() {
        let id = EventId {
            epoch: "k3x",
            seq: 7,
        };
        assert_eq!(
            Cursor::parse(Some(id.to_string().as_bytes())),
            Ok(at("k3x", 7))
        );
        let e = random_epoch();
        assert_eq!(e.len(), 16);
        assert!(matches!(
            Cursor::parse(Some(format!("{e}-1").as_bytes())),
            Ok(Cursor::At { .. })
        ));
    }
}
