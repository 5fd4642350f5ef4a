//! The `…/list_changed` notifications: one per list a server has (tools, resources, prompts),
//! each meaning "refetch this list" and nothing more. One list serves everything that names them:
//! the coalescing rule (`broadcast::coalesce`), the resync (`mcp::RESYNC_METHODS`) and the 2026
//! listen filter (`mcp::listen`).

/// One of the lists whose change is signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListChanged {
    Tools,
    Resources,
    Prompts,
}

impl ListChanged {
    /// In the order the resync sends them.
    pub const ALL: [ListChanged; 3] = [
        ListChanged::Tools,
        ListChanged::Resources,
        ListChanged::Prompts,
    ];

    /// The methods, in [`ListChanged::ALL`]'s order.
    pub const METHODS: [&'static str; 3] = {
        let mut out = [""; 3];
        let mut i = 0;
        while i < out.len() {
            out[i] = ListChanged::ALL[i].method();
            i += 1;
        }
        out
    };

    /// The notification's JSON-RPC method.
    pub const fn method(self) -> &'static str {
        match self {
            ListChanged::Tools => "notifications/tools/list_changed",
            ListChanged::Resources => "notifications/resources/list_changed",
            ListChanged::Prompts => "notifications/prompts/list_changed",
        }
    }

    /// Which list `method` signals, if it is a list_changed.
    pub fn of(method: &str) -> Option<ListChanged> {
        ListChanged::ALL.into_iter().find(|k| k.method() == method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_the_mcp_ones_in_resync_order() {
        assert_eq!(
            ListChanged::METHODS,
            [
                "notifications/tools/list_changed",
                "notifications/resources/list_changed",
                "notifications/prompts/list_changed",
            ]
        );
        for k in ListChanged::ALL {
            assert_eq!(ListChanged::of(k.method()), Some(k));
        }
        assert_eq!(ListChanged::of("notifications/resources/updated"), None);
        assert_eq!(ListChanged::of("notifications/tools/list_changed "), None);
    }
}
