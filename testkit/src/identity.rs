//! Who a subscriber is and what it may see: identities with the headers that present them, publish
//! targets, and an independent statement of the visibility rule (contract §3.5) to compute what each
//! subscriber must get; requests made as an identity.

use serde_json::{json, Value};

use crate::poll::PollAnswer;
use crate::replica::Replica;
use crate::requests::{open_stream_with, poll_with};
use crate::sse::{SseConn, SseRequest};

/// The default tenant header of header mode.
pub const TENANT_HEADER: &str = "x-fanout-tenant";

/// A subscriber's identity as the service should derive it, plus the headers that present it.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// A label for messages.
    pub label: String,
    /// The tenant the service should derive (header mode: the header; JWT mode: the claim).
    pub tenant: Option<String>,
    /// `Mcp-Session-Id`.
    pub session: Option<String>,
    /// Extra request headers (the tenant header, `Authorization`).
    pub headers: Vec<(String, String)>,
}

impl Who {
    /// Header mode: the tenant header carries `tenant`.
    pub fn header_mode(label: &str, tenant: Option<&str>, session: Option<&str>) -> Who {
        let mut headers = Vec::new();
        if let Some(t) = tenant {
            headers.push((TENANT_HEADER.to_string(), t.to_string()));
        }
        Who {
            label: label.to_string(),
            tenant: tenant.map(ToString::to_string),
            session: session.map(ToString::to_string),
            headers,
        }
    }

    /// JWT mode: `Authorization: Bearer <token>`; `tenant` is what the token's claim says.
    pub fn jwt(label: &str, token: &str, tenant: Option<&str>, session: Option<&str>) -> Who {
        Who {
            label: label.to_string(),
            tenant: tenant.map(ToString::to_string),
            session: session.map(ToString::to_string),
            headers: vec![("Authorization".to_string(), format!("Bearer {token}"))],
        }
    }

    /// Every header this subscriber sends (identity and session).
    pub fn all_headers(&self) -> Vec<(String, String)> {
        let mut h = self.headers.clone();
        if let Some(s) = &self.session {
            h.push(("Mcp-Session-Id".to_string(), s.clone()));
        }
        h
    }

    /// `GET /mcp` with this identity.
    pub fn sse(&self) -> SseRequest {
        self.all_headers()
            .iter()
            .fold(SseRequest::mcp(), |req, (n, v)| req.header(n, v))
    }
}

/// Where an event was published to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub tenant: Option<String>,
    pub session: Option<String>,
}

impl Target {
    pub fn new(tenant: Option<&str>, session: Option<&str>) -> Target {
        Target {
            tenant: tenant.map(ToString::to_string),
            session: session.map(ToString::to_string),
        }
    }

    /// The visibility rule of contract §3.5, stated independently of the service: a tenant-targeted
    /// event reaches only that tenant's subscribers; a session-targeted one only that session's;
    /// both set, both must match; neither, everyone.
    pub fn visible_to(&self, who: &Who) -> bool {
        let tenant_ok = match &self.tenant {
            None => true,
            Some(t) => who.tenant.as_deref() == Some(t.as_str()),
        };
        let session_ok = match &self.session {
            None => true,
            Some(s) => who.session.as_deref() == Some(s.as_str()),
        };
        tenant_ok && session_ok
    }

    /// `tenant` / `session` members for a publish body.
    pub fn apply(&self, mut body: Value) -> Value {
        if let Some(t) = &self.tenant {
            body["tenant"] = json!(t);
        }
        if let Some(s) = &self.session {
            body["session"] = json!(s);
        }
        body
    }
}

/// One published event: its id and target.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: String,
    pub target: Target,
}

/// The ids of `events` that `who` may see, in order.
pub fn visible_ids(events: &[Published], who: &Who) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.target.visible_to(who))
        .map(|e| e.id.clone())
        .collect()
}

/// Opens `GET /mcp` as `who` on `r`; panics unless it is a `200` event stream.
pub async fn open_stream(r: &Replica, who: &Who) -> SseConn {
    open_stream_with(r, who.sse(), &who.label).await
}

/// `GET /poll` as `who`; panics unless it answers `200` with a well-formed body.
pub async fn poll_ok(r: &Replica, who: &Who, query: &str) -> PollAnswer {
    let resp = poll_with(r, query, &who.all_headers()).await;
    assert_eq!(
        resp.status,
        200,
        "{}: GET /poll?{query} on {}: {}",
        who.label,
        r.label(),
        resp.text()
    );
    PollAnswer::parse(&resp.body)
        .unwrap_or_else(|e| panic!("{}: /poll answer {:?}: {e}", who.label, resp.text()))
}

/// `POST /admin/publish` of `target.apply(body)`; returns the id and target.
pub async fn publish_to(r: &Replica, body: Value, target: &Target) -> Published {
    let body = target.apply(body);
    let id = r
        .publish_ok(&body)
        .await
        .unwrap_or_else(|e| panic!("publish {body} on {}: {e}", r.label()));
    Published {
        id,
        target: target.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        let a = Who::header_mode("a", Some("A"), Some("s1"));
        let anon = Who::header_mode("n", None, None);
        assert!(Target::default().visible_to(&a) && Target::default().visible_to(&anon));
        assert!(Target::new(Some("A"), None).visible_to(&a));
        assert!(!Target::new(Some("A"), None).visible_to(&anon));
        assert!(Target::new(None, Some("s1")).visible_to(&a));
        assert!(!Target::new(Some("B"), Some("s1")).visible_to(&a));
        assert!(!Target::new(Some("A"), Some("s2")).visible_to(&a));
    }
}
