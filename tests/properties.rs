//! Property tests for the request parsers and the visibility rule: no input panics, accepted
//! input round-trips, and the visibility rule agrees with its definition.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout::event::input::{parse_publish_body, PublishLimits};
use mcp_fanout::event::{Cursor, EventId, Target, Viewer};
use proptest::prelude::*;
use serde_json::{json, Value};

const LIMITS: PublishLimits = PublishLimits {
    max_payload_bytes: 4096,
    max_batch: 8,
};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[ -~\u{80}-\u{10ffff}]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the publish parser.
    #[test]
    fn publish_parser_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_publish_body(&body, LIMITS);
    }

    /// Arbitrary JSON never panics it, and whatever it accepts is valid by construction.
    #[test]
    fn publish_parser_accepts_only_valid_events(v in json_value(), method in "notifications/[A-Za-z0-9_./-]{1,20}") {
        let mut obj = json!({ "method": method });
        obj["params"] = v.clone();
        let body = serde_json::to_vec(&obj).expect("json");
        match parse_publish_body(&body, LIMITS) {
            Ok(req) => {
                let ev = &req.events[0];
                prop_assert!(v.is_object() || v.is_null());
                prop_assert!(ev.method.starts_with("notifications/"));
                if let Some(p) = &ev.params {
                    prop_assert!(p.len() <= LIMITS.max_payload_bytes);
                    let back: Value = serde_json::from_str(p).expect("stored params are JSON");
                    prop_assert_eq!(back, v);
                }
            }
            Err(_) => prop_assert!(!(v.is_object() || v.is_null()) || serde_json::to_string(&v).expect("json").len() > LIMITS.max_payload_bytes),
        }
    }

    /// Arbitrary cursor bytes never panic; ids we mint always parse back to themselves.
    #[test]
    fn event_id_parser(raw in prop::collection::vec(any::<u8>(), 0..300), epoch in "[0-9a-z]{1,32}", seq in any::<u64>()) {
        let _ = Cursor::parse(Some(&raw));
        let id = EventId { epoch: &epoch, seq }.to_string();
        prop_assert_eq!(Cursor::parse(Some(id.as_bytes())), Ok(Cursor::At { epoch: epoch.clone(), seq }));
    }

    /// The visibility rule is exactly "every field the event sets matches the viewer's".
    #[test]
    fn visibility_rule(
        t_tenant in prop::option::of("[ab]"), t_session in prop::option::of("[xy]"),
        v_tenant in prop::option::of("[ab]"), v_session in prop::option::of("[xy]"),
    ) {
        let target = Target { tenant: t_tenant.clone(), session: t_session.clone() };
        let viewer = Viewer { tenant: v_tenant.clone(), session: v_session.clone() };
        let expected = t_tenant.as_ref().is_none_or(|t| v_tenant.as_ref() == Some(t))
            && t_session.as_ref().is_none_or(|s| v_session.as_ref() == Some(s));
        prop_assert_eq!(target.visible_to(&viewer), expected);
        // An untargeted event is visible to everyone; a targeted one never to an anonymous viewer.
        prop_assert!(Target::default().visible_to(&viewer));
        if !target.is_broadcast() {
            prop_assert!(!target.visible_to(&Viewer::default()));
        }
    }
}
