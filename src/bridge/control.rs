//! The cluster control channel, `"<schema>.control"`: what its messages are, how they are written
//! and how they are read, in one place. The wire format is plain text, fields separated by one
//! space, the session last (it is the rest of the payload):
//!
//! | message | wire | sent by |
//! |---|---|---|
//! | [`ControlMessage::Takeover`] | `takeover <generation> <session>` | the claim (`session::postgres`), in SQL |
//! | [`ControlMessage::End`] | `end 0 <session>` | forgetting a session (`session::postgres`), in SQL |
//! | [`ControlMessage::Heartbeat`] | `heartbeat <replica> <beat>` | the bridge, to itself |
//!
//! Replicas of the previous release send and read the same strings during a rolling upgrade, and
//! operators may send them with `pg_notify` (README: `takeover <generation> <session>`), so the
//! format is fixed. `end`'s middle field is not read (any word is accepted) and is written `0`.
//! The two messages sent from SQL are written by [`ControlMessage::takeover_sql`] and
//! [`ControlMessage::end_sql`], from the same tags, so the claim and its message stay one
//! statement.

use std::fmt;
use std::str::FromStr;

const TAKEOVER: &str = "takeover";
const END: &str = "end";
const HEARTBEAT: &str = "heartbeat";
/// `end`'s middle field as written (it is not read).
const END_FILLER: &str = "0";

/// The control channel of the deployment whose schema is `schema`.
pub fn control_channel(schema: &str) -> String {
    format!("{schema}.control")
}

/// One message on the control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// A replica claimed `session` at `generation`: every other stream of it ends.
    Takeover { generation: u64, session: String },
    /// `session` was forgotten (deleted): every stream of it ends.
    End { session: String },
    /// A replica's NOTIFY to itself, proving its LISTEN connection alive; others ignore it.
    Heartbeat { replica: String, beat: u64 },
}

/// A payload that is not a control message (it is logged and ignored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlParseError {
    #[error("unknown control message")]
    Unknown,
    #[error("`{tag}` needs {fields} fields")]
    MissingField { tag: &'static str, fields: usize },
    #[error("`{tag}`: `{value}` is not a number")]
    NotANumber { tag: &'static str, value: String },
    #[error("`{tag}`: empty field")]
    EmptyField { tag: &'static str },
}

impl ControlMessage {
    /// The SQL expression of a takeover message, from SQL expressions of its fields (e.g. a
    /// column and a parameter): `'takeover ' || <generation> || ' ' || <session>`.
    pub fn takeover_sql(generation: &str, session: &str) -> String {
        format!("'{TAKEOVER} ' || {generation} || ' ' || {session}")
    }

    /// The SQL expression of an end message, from the SQL expression of its session:
    /// `'end 0 ' || <session>`.
    pub fn end_sql(session: &str) -> String {
        format!("'{END} {END_FILLER} ' || {session}")
    }
}

impl fmt::Display for ControlMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlMessage::Takeover {
                generation,
                session,
            } => write!(f, "{TAKEOVER} {generation} {session}"),
            ControlMessage::End { session } => write!(f, "{END} {END_FILLER} {session}"),
            ControlMessage::Heartbeat { replica, beat } => {
                write!(f, "{HEARTBEAT} {replica} {beat}")
            }
        }
    }
}

impl FromStr for ControlMessage {
    type Err = ControlParseError;

    /// Splits as the previous release did: tag, second field, and the rest (the session may hold
    /// spaces).
    fn from_str(payload: &str) -> Result<ControlMessage, ControlParseError> {
        let mut parts = payload.splitn(3, ' ');
        let tag = match parts.next() {
            Some(TAKEOVER) => TAKEOVER,
            Some(END) => END,
            Some(HEARTBEAT) => HEARTBEAT,
            _ => return Err(ControlParseError::Unknown),
        };
        let (Some(second), Some(rest)) = (parts.next(), parts.next()) else {
            return Err(ControlParseError::MissingField { tag, fields: 3 });
        };
        let number = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| ControlParseError::NotANumber {
                    tag,
                    value: value.to_owned(),
                })
        };
        let nonempty = |value: &str| {
            if value.is_empty() {
                Err(ControlParseError::EmptyField { tag })
            } else {
                Ok(value.to_owned())
            }
        };
        Ok(match tag {
            TAKEOVER => ControlMessage::Takeover {
                generation: number(second)?,
                session: nonempty(rest)?,
            },
            END => ControlMessage::End {
                session: nonempty(rest)?,
            },
            _ => ControlMessage::Heartbeat {
                replica: nonempty(second)?,
                beat: number(rest)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ControlMessage> {
        vec![
            ControlMessage::Takeover {
                generation: 7,
                session: "sess-1".into(),
            },
            ControlMessage::Takeover {
                generation: u64::MAX,
                session: "with a space".into(),
            },
            ControlMessage::End {
                session: "sess-2".into(),
            },
            ControlMessage::End {
                session: "a b c".into(),
            },
            ControlMessage::Heartbeat {
                replica: "r1abc".into(),
                beat: 42,
            },
        ]
    }

    #[test]
    fn every_variant_round_trips() {
        for m in all() {
            let wire = m.to_string();
            assert_eq!(wire.parse::<ControlMessage>(), Ok(m), "{wire}");
        }
    }

    #[test]
    fn the_strings_the_previous_release_wrote_are_written_and_read() {
        // format!("heartbeat {} {beat}", replica_id), and the SQL 'takeover ' || generation ||
        // ' ' || $1 and 'end 0 ' || $1.
        let cases = [
            (
                "takeover 3 sess-1",
                ControlMessage::Takeover {
                    generation: 3,
                    session: "sess-1".into(),
                },
            ),
            (
                "end 0 sess-1",
                ControlMessage::End {
                    session: "sess-1".into(),
                },
            ),
            (
                "heartbeat 0f3a9c 17",
                ControlMessage::Heartbeat {
                    replica: "0f3a9c".into(),
                    beat: 17,
                },
            ),
        ];
        for (wire, message) in cases {
            assert_eq!(wire.parse::<ControlMessage>().as_ref(), Ok(&message));
            assert_eq!(message.to_string(), wire);
        }
        // `end`'s middle field was never read.
        assert_eq!(
            "end x s".parse(),
            Ok(ControlMessage::End {
                session: "s".into()
            })
        );
    }

    #[test]
    fn the_sql_expressions_spell_the_same_strings() {
        assert_eq!(
            ControlMessage::takeover_sql("generation", "$1"),
            "'takeover ' || generation || ' ' || $1"
        );
        assert_eq!(ControlMessage::end_sql("$1"), "'end 0 ' || $1");
    }

    #[test]
    fn malformed_payloads_are_errors() {
        for bad in [
            "",
            " ",
            "takeover",
            "takeover 3",
            "takeover x s",
            "takeover -1 s",
            "takeover 3 ",
            "end",
            "end 0",
            "end 0 ",
            "heartbeat",
            "heartbeat r",
            "heartbeat r x",
            "heartbeat  1",
            "Takeover 3 s",
            "takeover\t3\ts",
            "other 1 2",
            "\u{0}\u{ffff}",
        ] {
            assert!(bad.parse::<ControlMessage>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_channel_is_named_by_the_schema() {
        assert_eq!(control_channel("mcp_fanout"), "mcp_fanout.control");
    }
}
