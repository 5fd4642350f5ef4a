//! What publishers send (contract §4.1), validated into [`NewEvent`]s. Pure functions, no I/O.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::json::parse_json;
use super::target::Target;

pub const MAX_METHOD_BYTES: usize = 128;
pub const MAX_KEY_BYTES: usize = 128;
pub const MAX_SESSION_BYTES: usize = 128;
pub const MAX_TENANT_BYTES: usize = 256;
const METHOD_PREFIX: &str = "notifications/";
const FIELDS: [&str; 6] = ["jsonrpc", "method", "params", "tenant", "session", "key"];

#[derive(Debug, Clone, Copy)]
pub struct PublishLimits {
    pub max_payload_bytes: usize,
    pub max_batch: usize,
}

/// A validated event, not yet in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub method: String,
    /// Compact JSON text of the params object.
    pub params: Option<String>,
    pub target: Target,
    /// Per-event idempotency key.
    pub key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub events: Vec<NewEvent>,
    /// The body was an array (the answer is `{"ids":[…]}`).
    pub batch: bool,
}

/// Why a publish body was refused. `index` is set for batch elements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("`{field}` {reason}")]
    InvalidField {
        field: &'static str,
        reason: String,
        index: Option<usize>,
    },
    #[error("unknown field `{field}` (allowed: jsonrpc, method, params, tenant, session, key)")]
    UnknownField { field: String, index: Option<usize> },
    #[error("`method` {reason}")]
    InvalidMethod {
        reason: String,
        index: Option<usize>,
    },
    #[error("a message with an `id` is a request, not a notification")]
    NotANotification { index: Option<usize> },
    #[error("`params` {reason}")]
    InvalidParams {
        reason: String,
        index: Option<usize>,
    },
    #[error("the batch is empty")]
    EmptyBatch,
    #[error("the batch has {len} events; at most {max} are allowed")]
    BatchTooLarge { len: usize, max: usize },
    #[error("`params` is {len} bytes as compact JSON; at most {max} are allowed")]
    PayloadTooLarge {
        len: usize,
        max: usize,
        index: Option<usize>,
    },
}

impl InputError {
    pub fn index(&self) -> Option<usize> {
        match self {
            InputError::InvalidField { index, .. }
            | InputError::UnknownField { index, .. }
            | InputError::InvalidMethod { index, .. }
            | InputError::NotANotification { index }
            | InputError::InvalidParams { index, .. }
            | InputError::PayloadTooLarge { index, .. } => *index,
            _ => None,
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            InputError::InvalidField { field, .. } => Some(field),
            InputError::UnknownField { field, .. } => Some(field),
            InputError::InvalidMethod { .. } => Some("method"),
            InputError::NotANotification { .. } => Some("id"),
            InputError::InvalidParams { .. } | InputError::PayloadTooLarge { .. } => Some("params"),
            _ => None,
        }
    }
}

/// Parses a publish body: one object, or an array of 1…`max_batch` objects.
pub fn parse_publish_body(
    body: &[u8],
    limits: PublishLimits,
) -> Result<PublishRequest, InputError> {
    let value = parse_json(body).map_err(|e| InputError::InvalidJson(e.to_string()))?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(InputError::EmptyBatch);
            }
            if items.len() > limits.max_batch {
                return Err(InputError::BatchTooLarge {
                    len: items.len(),
                    max: limits.max_batch,
                });
            }
            let events = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| parse_event(item, Some(i), limits))
                .collect::<Result<_, _>>()?;
            Ok(PublishRequest {
                events,
                batch: true,
            })
        }
        other => Ok(PublishRequest {
            events: vec![parse_event(other, None, limits)?],
            batch: false,
        }),
    }
}

fn parse_event(
    value: Value,
    index: Option<usize>,
    limits: PublishLimits,
) -> Result<NewEvent, InputError> {
    let Value::Object(mut obj) = value else {
        return Err(InputError::InvalidField {
            field: "event",
            reason: "must be a JSON object".into(),
            index,
        });
    };
    if obj.contains_key("id") {
        return Err(InputError::NotANotification { index });
    }
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(InputError::UnknownField {
            field: unknown.clone(),
            index,
        });
    }
    if let Some(v) = obj.remove("jsonrpc") {
        if v != "2.0" {
            return Err(InputError::InvalidField {
                field: "jsonrpc",
                reason: "must be \"2.0\"".into(),
                index,
            });
        }
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => {
            validate_method(&m).map_err(|reason| InputError::InvalidMethod { reason, index })?;
            m
        }
        Some(_) => {
            return Err(InputError::InvalidMethod {
                reason: "must be a string".into(),
                index,
            })
        }
        None => {
            return Err(InputError::InvalidMethod {
                reason: "is required".into(),
                index,
            })
        }
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(validate_params(map, index, limits)?),
        Some(_) => {
            return Err(InputError::InvalidParams {
                reason: "must be an object or null".into(),
                index,
            })
        }
    };
    let tenant = optional_string(&mut obj, "tenant", index, validate_tenant)?;
    let session = optional_string(&mut obj, "session", index, |s| {
        validate_visible_ascii(s, MAX_SESSION_BYTES)
    })?;
    let key = optional_string(&mut obj, "key", index, |s| {
        validate_visible_ascii(s, MAX_KEY_BYTES)
    })?;
    Ok(NewEvent {
        method,
        params,
        target: Target { tenant, session },
        key,
    })
}

fn optional_string(
    obj: &mut Map<String, Value>,
    field: &'static str,
    index: Option<usize>,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Option<String>, InputError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check(&s).map_err(|reason| InputError::InvalidField {
                field,
                reason,
                index,
            })?;
            Ok(Some(s))
        }
        Some(_) => Err(InputError::InvalidField {
            field,
            reason: "must be a string".into(),
            index,
        }),
    }
}

/// `notifications/` followed by `[A-Za-z0-9_./-]+`, at most 128 bytes.
pub fn validate_method(m: &str) -> Result<(), String> {
    let Some(rest) = m.strip_prefix(METHOD_PREFIX) else {
        return Err("must start with \"notifications/\"".into());
    };
    if m.len() > MAX_METHOD_BYTES {
        return Err(format!("must be at most {MAX_METHOD_BYTES} bytes"));
    }
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'))
    {
        return Err("must be \"notifications/\" followed by [A-Za-z0-9_./-]+".into());
    }
    Ok(())
}

/// Visible ASCII (0x21–0x7E), 1…`max` bytes: session ids and idempotency keys.
pub fn validate_visible_ascii(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("must be 1 to {max} bytes"));
    }
    if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("must be visible ASCII".into());
    }
    Ok(())
}

/// A tenant, wherever it comes from (a publish, the gateway's header, a token's claim): 1 to
/// [`MAX_TENANT_BYTES`] bytes without control characters.
pub fn validate_tenant(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_TENANT_BYTES {
        return Err(format!("must be 1 to {MAX_TENANT_BYTES} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn validate_params(
    map: Map<String, Value>,
    index: Option<usize>,
    limits: PublishLimits,
) -> Result<String, InputError> {
    let params = Value::Object(map);
    if contains_nul(&params) {
        return Err(InputError::InvalidParams {
            reason: "must not contain \\u0000 (Postgres cannot store it)".into(),
            index,
        });
    }
    let text = params.to_string();
    if text.len() > limits.max_payload_bytes {
        return Err(InputError::PayloadTooLarge {
            len: text.len(),
            max: limits.max_payload_bytes,
            index,
        });
    }
    Ok(text)
}

fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

impl NewEvent {
    /// A digest of what the event says (not its key), to tell a retry from a conflicting reuse.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            Some(self.method.as_str()),
            self.params.as_deref(),
            self.target.tenant.as_deref(),
            self.target.session.as_deref(),
        ] {
            match part {
                Some(p) => {
                    h.update([1]);
                    h.update((p.len() as u64).to_be_bytes());
                    h.update(p.as_bytes());
                }
                None => h.update([0]),
            }
        }
        h.finalize().into()
    }
}

/// A digest of a whole request, for a request-wide `Idempotency-Key`.
pub fn request_fingerprint(events: &[NewEvent]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((events.len() as u64).to_be_bytes());
    for e in events {
        h.update(e.fingerprint());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PublishLimits = PublishLimits {
        max_payload_bytes: 100,
        max_batch: 3,
    };

    fn parse(body: &str) -> Result<PublishRequest, InputError> {
        parse_publish_body(body.as_bytes(), LIMITS)
    }

    #[test]
    fn accepts_objects_batches_and_full_jsonrpc() {
        let one = parse(r#"{"method":"notifications/tools/list_changed"}"#).expect("ok");
        assert!(!one.batch);
        assert_eq!(one.events[0].params, None);
        let full = parse(r#"{"jsonrpc":"2.0","method":"notifications/x","params":{"z":1,"a":2},"tenant":"t","session":"s","key":"k"}"#)
            .expect("ok");
        let e = &full.events[0];
        assert_eq!(
            e.params.as_deref(),
            Some(r#"{"z":1,"a":2}"#),
            "key order kept"
        );
        assert_eq!(e.target.tenant.as_deref(), Some("t"));
        assert_eq!(e.key.as_deref(), Some("k"));
        let batch =
            parse(r#"[{"method":"notifications/a"},{"method":"notifications/b","params":null}]"#)
                .expect("ok");
        assert!(batch.batch);
        assert_eq!(batch.events.len(), 2);
    }

    #[test]
    fn refuses_bad_bodies_and_batches() {
        assert!(matches!(parse("{"), Err(InputError::InvalidJson(_))));
        assert!(
            matches!(parse(r#"{"method":"notifications/a","tenant":"a","tenant":"b"}"#), Err(InputError::InvalidJson(m)) if m.contains("duplicate key \"tenant\""))
        );
        assert_eq!(parse("[]").unwrap_err(), InputError::EmptyBatch);
        assert!(matches!(
            parse(
                r#"[{"method":"notifications/a"},{"method":"notifications/a"},{"method":"notifications/a"},{"method":"notifications/a"}]"#
            ),
            Err(InputError::BatchTooLarge { len: 4, max: 3 })
        ));
        assert!(
            matches!(parse(r#"{"method":"notifications/a","tenat":"x"}"#), Err(InputError::UnknownField { field, .. }) if field == "tenat")
        );
        assert!(matches!(
            parse(r#"{"method":"notifications/a","id":1}"#),
            Err(InputError::NotANotification { .. })
        ));
    }

    #[test]
    fn refuses_bad_methods() {
        assert!(matches!(
            parse(r#"{"method":"tools/list"}"#),
            Err(InputError::InvalidMethod { .. })
        ));
        assert!(matches!(
            parse(r#"{"method":"notifications/"}"#),
            Err(InputError::InvalidMethod { .. })
        ));
        assert!(matches!(
            parse(r#"{"method":"notifications/a b"}"#),
            Err(InputError::InvalidMethod { .. })
        ));
        assert!(matches!(
            parse(r#"{"method":1}"#),
            Err(InputError::InvalidMethod { .. })
        ));
        assert!(matches!(
            parse(r#"{}"#),
            Err(InputError::InvalidMethod { .. })
        ));
    }

    #[test]
    fn refuses_bad_params_and_fields_with_their_names_and_indexes() {
        assert!(matches!(
            parse(r#"{"method":"notifications/a","params":[1]}"#),
            Err(InputError::InvalidParams { .. })
        ));
        assert!(matches!(
            parse(r#"{"method":"notifications/a","params":{"a":"\u0000"}}"#),
            Err(InputError::InvalidParams { .. })
        ));
        assert!(matches!(
            parse(r#"{"method":"notifications/a","params":{"\u0000":1}}"#),
            Err(InputError::InvalidParams { .. })
        ));
        let big = format!(
            r#"{{"method":"notifications/a","params":{{"a":"{}"}}}}"#,
            "x".repeat(100)
        );
        assert!(matches!(
            parse_publish_body(big.as_bytes(), LIMITS),
            Err(InputError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            parse(r#"{"method":"notifications/a","jsonrpc":"1.0"}"#),
            Err(InputError::InvalidField {
                field: "jsonrpc",
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"method":"notifications/a","session":"a b"}"#),
            Err(InputError::InvalidField {
                field: "session",
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"method":"notifications/a","key":""}"#),
            Err(InputError::InvalidField { field: "key", .. })
        ));
        assert!(matches!(
            parse(r#"{"method":"notifications/a","tenant":5}"#),
            Err(InputError::InvalidField {
                field: "tenant",
                ..
            })
        ));
        let err = parse(r#"[{"method":"notifications/a"},{"method":"x"}]"#).unwrap_err();
        assert_eq!(err.index(), Some(1));
        assert!(matches!(
            parse("3"),
            Err(InputError::InvalidField { field: "event", .. })
        ));
    }

    #[test]
    fn fingerprints_tell_bodies_apart() {
        let a = parse(r#"{"method":"notifications/a","params":{"x":1}}"#)
            .expect("ok")
            .events;
        let b = parse(r#"{"method":"notifications/a","params":{"x":2}}"#)
            .expect("ok")
            .events;
        let a_keyed = parse(r#"{"method":"notifications/a","params":{"x":1},"key":"k"}"#)
            .expect("ok")
            .events;
        assert_ne!(a[0].fingerprint(), b[0].fingerprint());
        assert_eq!(a[0].fingerprint(), a_keyed[0].fingerprint());
        assert_ne!(request_fingerprint(&a), request_fingerprint(&b));
    }
}
