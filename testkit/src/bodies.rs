//! Notification bodies for `/admin/publish` whose params carry a test tag and a sequence number.

use serde_json::{json, Value};

/// `{"method": method, "params": {"tag": tag, "n": n}}`.
pub fn note(method: &str, tag: &str, n: usize) -> Value {
    json!({ "method": method, "params": { "tag": tag, "n": n } })
}

/// [`note`] with the method `notifications/test/targeted`.
pub fn body(tag: &str, n: usize) -> Value {
    note("notifications/test/targeted", tag, n)
}
