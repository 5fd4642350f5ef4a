//! Targeting (contract §3.5): who may see an event. The rule lives in [`Target::visible_to`], once.

/// Whom an event is for. Neither set: everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Target {
    pub tenant: Option<String>,
    pub session: Option<String>,
}

/// Who is looking: the subscriber's verified tenant (if any) and its session id (if any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Viewer {
    pub tenant: Option<String>,
    pub session: Option<String>,
}

impl Target {
    /// The one visibility rule, used live, on replay and by long-poll: each field the event sets
    /// must match the viewer's.
    pub fn visible_to(&self, viewer: &Viewer) -> bool {
        fn matches(want: &Option<String>, have: &Option<String>) -> bool {
            match want {
                None => true,
                Some(w) => have.as_deref() == Some(w.as_str()),
            }
        }
        matches(&self.tenant, &viewer.tenant) && matches(&self.session, &viewer.session)
    }

    pub fn is_broadcast(&self) -> bool {
        self.tenant.is_none() && self.session.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn visibility_table() {
        let anon = Viewer::default();
        let a1 = Viewer {
            tenant: s("a"),
            session: s("1"),
        };
        let b1 = Viewer {
            tenant: s("b"),
            session: s("1"),
        };
        let sess1 = Viewer {
            tenant: None,
            session: s("1"),
        };
        let all = Target::default();
        let for_a = Target {
            tenant: s("a"),
            session: None,
        };
        let for_1 = Target {
            tenant: None,
            session: s("1"),
        };
        let for_a1 = Target {
            tenant: s("a"),
            session: s("1"),
        };
        assert!(all.visible_to(&anon) && all.visible_to(&a1));
        assert!(for_a.visible_to(&a1) && !for_a.visible_to(&b1) && !for_a.visible_to(&anon));
        assert!(for_1.visible_to(&a1) && for_1.visible_to(&sess1) && !for_1.visible_to(&anon));
        assert!(for_a1.visible_to(&a1) && !for_a1.visible_to(&b1) && !for_a1.visible_to(&sess1));
    }
}
