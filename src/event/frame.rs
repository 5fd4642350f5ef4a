//! The stored event and the one place that frames it for the wire.
//!
//! Every delivery path (live fan-out, `Last-Event-ID` replay, `/poll`) hands out the bytes built
//! here, so one event's frame is byte-identical everywhere, however it was published.

use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;

use super::id::EventId;
use super::target::Target;

/// An event as committed to the log, framed once.
#[derive(Debug)]
pub struct StoredEvent {
    pub seq: u64,
    pub target: Target,
    pub method: String,
    pub committed_at: SystemTime,
    /// `id: <id>\ndata: <message>\n\n`
    frame: Bytes,
    id: Range<usize>,
    message: Range<usize>,
    params: Option<Range<usize>>,
}

impl StoredEvent {
    /// Frames an event. `params` is the stored compact JSON text of the params object, if any.
    pub fn new(
        epoch: &str,
        seq: u64,
        method: &str,
        params: Option<&str>,
        target: Target,
        committed_at: SystemTime,
    ) -> StoredEvent {
        let id = EventId { epoch, seq }.to_string();
        let method_json = serde_json::Value::from(method).to_string();
        let mut out =
            String::with_capacity(id.len() + method_json.len() + params.map_or(0, str::len) + 64);
        out.push_str("id: ");
        let id_start = out.len();
        out.push_str(&id);
        let id_end = out.len();
        out.push_str("\ndata: ");
        let msg_start = out.len();
        out.push_str(r#"{"jsonrpc":"2.0","method":"#);
        out.push_str(&method_json);
        let params = params.map(|params| {
            out.push_str(r#","params":"#);
            let start = out.len();
            out.push_str(params);
            start..out.len()
        });
        out.push('}');
        let msg_end = out.len();
        out.push_str("\n\n");
        StoredEvent {
            seq,
            target,
            method: method.to_owned(),
            committed_at,
            frame: Bytes::from(out),
            id: id_start..id_end,
            message: msg_start..msg_end,
            params,
        }
    }

    /// The SSE frame, shared by every subscriber.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The JSON-RPC notification: exactly the frame's `data:` line.
    pub fn message(&self) -> Bytes {
        self.frame.slice(self.message.clone())
    }

    /// The `params` member's JSON text as stored, if the event has one: the message ends with it
    /// and the message's closing brace.
    pub fn params(&self) -> Option<Bytes> {
        self.params.clone().map(|r| self.frame.slice(r))
    }

    /// The event id, `<epoch>-<seq>`.
    pub fn id(&self) -> &str {
        // The frame is built from `String`s above, so this range is valid UTF-8.
        std::str::from_utf8(&self.frame[self.id.clone()]).unwrap_or_default()
    }

    /// Approximate memory held by this event, for the in-memory byte budget.
    pub fn size(&self) -> usize {
        self.frame.len()
            + self.method.len()
            + self.target.tenant.as_ref().map_or(0, String::len)
            + self.target.session.as_ref().map_or(0, String::len)
            + std::mem::size_of::<StoredEvent>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_id_and_data_without_event_field() {
        let ev = StoredEvent::new(
            "ep",
            12,
            "notifications/tools/list_changed",
            Some(r#"{"b":1,"a":"x\ny"}"#),
            Target::default(),
            SystemTime::now(),
        );
        let frame = std::str::from_utf8(ev.frame()).expect("utf8");
        assert_eq!(
            frame,
            "id: ep-12\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\",\"params\":{\"b\":1,\"a\":\"x\\ny\"}}\n\n"
        );
        assert_eq!(ev.id(), "ep-12");
        let msg: serde_json::Value = serde_json::from_slice(&ev.message()).expect("json");
        assert_eq!(msg["params"]["a"], "x\ny");
        assert!(!frame.contains("event:"));
    }

    #[test]
    fn no_params_means_no_params_member() {
        let ev = StoredEvent::new(
            "e",
            1,
            "notifications/x",
            None,
            Target::default(),
            SystemTime::now(),
        );
        assert_eq!(
            &ev.message()[..],
            br#"{"jsonrpc":"2.0","method":"notifications/x"}"#
        );
    }
}
