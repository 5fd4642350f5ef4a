//! What the server answers when it refuses a request.

use serde::Deserialize;

/// A refusal from the server: its HTTP status and the error object of its JSON answer
/// (`{"error":{"code":…,"message":…,"field"?:…,"index"?:…}}`).
///
/// ```
/// use mcp_fanout_client::ServerError;
///
/// let body = br#"{"error":{"code":"invalid_field","message":"`method` must start with notifications/","field":"method","index":1}}"#;
/// let e = ServerError::from_answer(400, body);
/// assert_eq!((e.status, e.code.as_str(), e.field.as_deref(), e.index), (400, "invalid_field", Some("method"), Some(1)));
///
/// // An answer that is not the server's JSON (a load balancer's page) keeps its text.
/// let e = ServerError::from_answer(502, b"<html>Bad Gateway</html>");
/// assert_eq!(e.code, "http_502");
/// assert!(e.message.contains("Bad Gateway"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server answered {status} {code}: {message}")]
pub struct ServerError {
    /// The HTTP status.
    pub status: u16,
    /// The machine-readable code (`unauthorized`, `invalid_field`, `idempotency_conflict`, …), or
    /// `http_<status>` when the answer is not the server's JSON error.
    pub code: String,
    /// The human-readable explanation.
    pub message: String,
    /// The request field at fault, when the server names one.
    pub field: Option<String>,
    /// The index of the event at fault in a batch.
    pub index: Option<usize>,
}

#[derive(Deserialize)]
struct Answer {
    error: Detail,
}

#[derive(Deserialize)]
struct Detail {
    code: String,
    message: String,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    index: Option<usize>,
}

/// The most of a non-JSON answer a [`ServerError`] keeps.
const MAX_TEXT: usize = 512;

impl ServerError {
    /// The error an answer with `status` and `body` carries.
    pub fn from_answer(status: u16, body: &[u8]) -> ServerError {
        match serde_json::from_slice::<Answer>(body) {
            Ok(Answer { error }) => ServerError {
                status,
                code: error.code,
                message: error.message,
                field: error.field,
                index: error.index,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let mut message: String = text.chars().take(MAX_TEXT).collect();
                if message.len() < text.len() {
                    message.push('…');
                }
                ServerError {
                    status,
                    code: format!("http_{status}"),
                    message,
                    field: None,
                    index: None,
                }
            }
        }
    }
}
