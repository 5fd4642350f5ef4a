//! The label values that name what the server counts by kind and by reason: each list is one enum,
//! its `ALL` (the values pre-registered at zero, the console's columns, the cluster row's
//! columns) and its `as_str` (the label value). They live here, below `broadcast` which uses
//! them, because the metrics must know every value before anything happens.

/// The kinds of subscriber, counted separately (`mcp_fanout_subscribers{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriberKind {
    Sse,
    Poll,
    /// A `subscriptions/listen` stream (MCP 2026-07-28).
    Listen,
}

impl SubscriberKind {
    pub const ALL: [SubscriberKind; 3] = [
        SubscriberKind::Sse,
        SubscriberKind::Poll,
        SubscriberKind::Listen,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SubscriberKind::Sse => "sse",
            SubscriberKind::Poll => "poll",
            SubscriberKind::Listen => "listen",
        }
    }
}

/// Why the server ended a subscriber (`mcp_fanout_subscribers_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Behind the head for longer than `FANOUT_MAX_LAG_SECS`.
    Lagging,
    /// Its socket accepted nothing for `FANOUT_WRITE_STALL_SECS`.
    WriteStall,
    /// The replica is shutting down.
    Shutdown,
    /// `FANOUT_MAX_STREAM_SECS` reached.
    MaxStreamAge,
    /// Its cursor fell below what the log retains.
    CursorPruned,
    /// The log could not be read.
    LogUnavailable,
    /// A newer stream for the same session took over.
    TakenOver,
    /// The subscriber's credential expired.
    TokenExpired,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::Lagging,
        DropReason::WriteStall,
        DropReason::Shutdown,
        DropReason::MaxStreamAge,
        DropReason::CursorPruned,
        DropReason::LogUnavailable,
        DropReason::TakenOver,
        DropReason::TokenExpired,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Lagging => "lagging",
            DropReason::WriteStall => "write_stall",
            DropReason::Shutdown => "shutdown",
            DropReason::MaxStreamAge => "max_stream_age",
            DropReason::CursorPruned => "cursor_pruned",
            DropReason::LogUnavailable => "log_unavailable",
            DropReason::TakenOver => "taken_over",
            DropReason::TokenExpired => "token_expired",
        }
    }
}

/// Why a subscriber was turned away before its stream started
/// (`mcp_fanout_subscribers_shed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShedReason {
    /// Every subscriber slot is taken.
    Capacity,
    /// The replica is shutting down.
    Draining,
    /// The database could not be read.
    Database,
    /// The client holds its share of the slots (`FANOUT_MAX_SUBSCRIBERS_PER_CLIENT`).
    ClientLimit,
    /// The stream's session was claimed more often than `FANOUT_SESSION_CLAIMS_PER_MIN`.
    ClaimRate,
    /// The stream's client caused more session writes than
    /// `FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN`.
    SessionWrites,
}

impl ShedReason {
    pub const ALL: [ShedReason; 6] = [
        ShedReason::Capacity,
        ShedReason::Draining,
        ShedReason::Database,
        ShedReason::ClientLimit,
        ShedReason::ClaimRate,
        ShedReason::SessionWrites,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ShedReason::Capacity => "capacity",
            ShedReason::Draining => "draining",
            ShedReason::Database => "database",
            ShedReason::ClientLimit => "client_limit",
            ShedReason::ClaimRate => "claim_rate",
            ShedReason::SessionWrites => "session_writes",
        }
    }
}

/// The supervised background tasks (`mcp_fanout_task_restarts_total{task}`; see `supervise`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    Bridge,
    PublishWriter,
    Retention,
    ReplicaHeartbeat,
    StatsSampler,
    SessionKeepAlive,
    AdminTokenWatch,
}

impl Task {
    pub const ALL: [Task; 7] = [
        Task::Bridge,
        Task::PublishWriter,
        Task::Retention,
        Task::ReplicaHeartbeat,
        Task::StatsSampler,
        Task::SessionKeepAlive,
        Task::AdminTokenWatch,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Task::Bridge => "bridge",
            Task::PublishWriter => "publish_writer",
            Task::Retention => "retention",
            Task::ReplicaHeartbeat => "replica_heartbeat",
            Task::StatsSampler => "stats_sampler",
            Task::SessionKeepAlive => "session_keep_alive",
            Task::AdminTokenWatch => "admin_token_watch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` holds every variant once, in the order the console and the cluster row use (a match
    /// without a wildcard: a new variant does not compile until it is placed).
    #[test]
    fn all_holds_every_variant_once() {
        for (i, k) in SubscriberKind::ALL.iter().enumerate() {
            let at = match k {
                SubscriberKind::Sse => 0,
                SubscriberKind::Poll => 1,
                SubscriberKind::Listen => 2,
            };
            assert_eq!(i, at, "{k:?}");
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            let at = match r {
                DropReason::Lagging => 0,
                DropReason::WriteStall => 1,
                DropReason::Shutdown => 2,
                DropReason::MaxStreamAge => 3,
                DropReason::CursorPruned => 4,
                DropReason::LogUnavailable => 5,
                DropReason::TakenOver => 6,
                DropReason::TokenExpired => 7,
            };
            assert_eq!(i, at, "{r:?}");
        }
        for (i, r) in ShedReason::ALL.iter().enumerate() {
            let at = match r {
                ShedReason::Capacity => 0,
                ShedReason::Draining => 1,
                ShedReason::Database => 2,
                ShedReason::ClientLimit => 3,
                ShedReason::ClaimRate => 4,
                ShedReason::SessionWrites => 5,
            };
            assert_eq!(i, at, "{r:?}");
        }
        for (i, t) in Task::ALL.iter().enumerate() {
            let at = match t {
                Task::Bridge => 0,
                Task::PublishWriter => 1,
                Task::Retention => 2,
                Task::ReplicaHeartbeat => 3,
                Task::StatsSampler => 4,
                Task::SessionKeepAlive => 5,
                Task::AdminTokenWatch => 6,
            };
            assert_eq!(i, at, "{t:?}");
        }
    }

    /// The label values are the ones dashboards and alerts already use.
    #[test]
    fn label_values_are_unchanged() {
        assert_eq!(
            SubscriberKind::ALL.map(SubscriberKind::as_str),
            ["sse", "poll", "listen"]
        );
        assert_eq!(
            DropReason::ALL.map(DropReason::as_str),
            [
                "lagging",
                "write_stall",
                "shutdown",
                "max_stream_age",
                "cursor_pruned",
                "log_unavailable",
                "taken_over",
                "token_expired",
            ]
        );
        assert_eq!(
            ShedReason::ALL.map(ShedReason::as_str),
            [
                "capacity",
                "draining",
                "database",
                "client_limit",
                "claim_rate",
                "session_writes"
            ]
        );
        assert_eq!(
            Task::ALL.map(Task::as_str),
            [
                "bridge",
                "publish_writer",
                "retention",
                "replica_heartbeat",
                "stats_sampler",
                "session_keep_alive",
                "admin_token_watch",
            ]
        );
    }

    /// The metrics table of docs/api.md names every value.
    #[test]
    fn the_documented_metrics_list_every_value() {
        let doc = include_str!("../../docs/api.md");
        let row = |metric: &str| {
            doc.lines()
                .find(|l| l.starts_with(&format!("| `{metric}")))
                .unwrap_or_else(|| panic!("docs/api.md has no row for {metric}"))
        };
        let kinds = row("mcp_fanout_subscribers{kind");
        for k in SubscriberKind::ALL {
            assert!(
                kinds.contains(&format!("\"{}\"", k.as_str())),
                "{k:?}: {kinds}"
            );
        }
        let reasons = row("mcp_fanout_subscribers_dropped_total");
        for r in DropReason::ALL {
            assert!(
                reasons.contains(&format!("`{}`", r.as_str())),
                "{r:?}: {reasons}"
            );
        }
        let shed = row("mcp_fanout_subscribers_shed_total");
        for r in ShedReason::ALL {
            assert!(shed.contains(&format!("`{}`", r.as_str())), "{r:?}: {shed}");
        }
        let tasks = row("mcp_fanout_task_restarts_total");
        for t in Task::ALL {
            assert!(
                tasks.contains(&format!("`{}`", t.as_str())),
                "{t:?}: {tasks}"
            );
        }
    }
}
