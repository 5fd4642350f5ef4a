//! Prometheus metrics, all named `mcp_fanout_*`. One registry per process; encoded on scrape.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

/// Why the server ends a subscriber (see `broadcast::DropReason`).
pub const DROP_REASONS: [&str; 6] = [
    "lagging",
    "write_stall",
    "shutdown",
    "max_stream_age",
    "cursor_pruned",
    "log_unavailable",
];
/// Why a subscribe request gets a clean end instead of a stream.
pub const SHED_REASONS: [&str; 3] = ["capacity", "draining", "database"];

pub struct Metrics {
    registry: Registry,
    /// Current subscribers on this replica, by kind (`sse`, `poll`).
    pub subscribers: Family<KindLabel, Gauge>,
    pub events_published: Counter,
    /// One per event written to one subscriber.
    pub events_delivered: Counter,
    /// Streams ended by the server, by reason.
    pub subscribers_dropped: Family<ReasonLabel, Counter>,
    /// Requests answered with a clean end instead of a stream, by reason.
    pub subscribers_shed: Family<ReasonLabel, Counter>,
    /// Events a subscriber read from the log because they were older than the in-memory ring.
    pub log_reads_events: Counter,
    /// Seconds from commit to the write into a subscriber's stream (sampled once per write).
    pub deliver_lag: Histogram,
    pub log_head: Gauge,
    /// Error answers, by code.
    pub http_errors: Family<CodeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mcp_fanout");
        let subscribers = Family::<KindLabel, Gauge>::default();
        let events_published = Counter::default();
        let events_delivered = Counter::default();
        let subscribers_dropped = Family::<ReasonLabel, Counter>::default();
        let subscribers_shed = Family::<ReasonLabel, Counter>::default();
        let log_reads_events = Counter::default();
        let deliver_lag = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let log_head = Gauge::default();
        let http_errors = Family::<CodeLabel, Counter>::default();
        registry.register("subscribers", "Current subscribers on this replica", subscribers.clone());
        registry.register("events_published", "Events committed through this replica", events_published.clone());
        registry.register(
            "events_delivered",
            "Events written to subscribers (one per event per subscriber)",
            events_delivered.clone(),
        );
        registry.register(
            "subscribers_dropped",
            "Subscribers ended by the server, by reason",
            subscribers_dropped.clone(),
        );
        registry.register(
            "subscribers_shed",
            "Subscribe requests answered with retry and a clean end, by reason",
            subscribers_shed.clone(),
        );
        registry.register(
            "log_read_events",
            "Events subscribers read from the log because the in-memory ring no longer held them",
            log_reads_events.clone(),
        );
        registry.register(
            "publish_deliver_lag_seconds",
            "Seconds from commit to the write into a subscriber stream",
            deliver_lag.clone(),
        );
        registry.register("log_head", "Highest seq this replica has seen committed", log_head.clone());
        registry.register("http_errors", "Error answers, by error code", http_errors.clone());
        // Known label values exist from the start, so rate() and alerts see zeros, not gaps.
        for reason in DROP_REASONS {
            subscribers_dropped.get_or_create(&ReasonLabel { reason });
        }
        for reason in SHED_REASONS {
            subscribers_shed.get_or_create(&ReasonLabel { reason });
        }
        for kind in ["sse", "poll"] {
            subscribers.get_or_create(&KindLabel { kind });
        }
        Metrics {
            registry,
            subscribers,
            events_published,
            events_delivered,
            subscribers_dropped,
            subscribers_shed,
            log_reads_events,
            deliver_lag,
            log_head,
            http_errors,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub fn dropped(&self, reason: &'static str) {
        self.subscribers_dropped.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn shed(&self, reason: &'static str) {
        self.subscribers_shed.get_or_create(&ReasonLabel { reason }).inc();
    }
}
