//! Prometheus metrics, all named `mcp_fanout_*`. One registry per process; encoded on scrape.
//! `lag.rs`: a copy of the lag histogram that can be read back (for the operator console).

pub mod labels;
pub mod lag;

pub use labels::{DropReason, ShedReason, SubscriberKind, Task};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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

/// A connection closed for doing nothing: on which listener, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabel {
    pub listener: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Current subscribers on this replica, by [`SubscriberKind`].
    pub subscribers: Family<KindLabel, Gauge>,
    pub events_published: Counter,
    /// One per event written to one subscriber.
    pub events_delivered: Counter,
    /// list_changed left out of a write because a newer one of the same kind and target went in it.
    pub events_coalesced: Counter,
    /// Streams ended by the server, by reason.
    pub subscribers_dropped: Family<ReasonLabel, Counter>,
    /// Requests answered with a clean end instead of a stream, by reason.
    pub subscribers_shed: Family<ReasonLabel, Counter>,
    /// Events a subscriber read from the log because they were older than the in-memory ring.
    pub log_reads_events: Counter,
    /// Seconds from commit to the write into a subscriber's stream (sampled once per write).
    pub deliver_lag: Histogram,
    /// The same observations, readable back (the console's lag percentiles).
    pub lag_window: lag::LagBuckets,
    pub log_head: Gauge,
    /// Error answers, by code.
    pub http_errors: Family<CodeLabel, Counter>,
    /// Connections closed for doing nothing, by listener and reason (`server::idle`).
    pub connections_closed: Family<ClosedLabel, Counter>,
    /// 1 while the LISTEN connection is up (Postgres mode).
    pub listen_connected: Gauge,
    pub listen_reconnects: Counter,
    /// Events the bridge read from the log and pushed into the broadcaster.
    pub bridge_events: Counter,
    /// Of those, events read right after a (re)connect.
    pub catch_up_events: Counter,
    /// `pg_notification_queue_usage()`, sampled on each heartbeat.
    pub notify_queue_usage: Gauge<f64, AtomicU64>,
    pub pool_size: Gauge,
    pub pool_available: Gauge,
    pub pool_waiting: Gauge,
    /// Background tasks restarted after a failure, a panic or an unexpected exit, by task.
    pub task_restarts: Family<TaskLabel, Counter>,
    /// Bytes of request bodies and held answers taken from `FANOUT_BODY_MEMORY_BYTES`, set on
    /// each scrape.
    pub body_memory_held: Gauge,
    /// Answers relayed as they arrived, cut because their clients stopped reading them while
    /// the stalled ones had taken their whole budget (`mcp::relay_watch`).
    pub proxy_relays_cut: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let subscribers = Family::<KindLabel, Gauge>::default();
        let events_published = Counter::default();
        let events_delivered = Counter::default();
        let events_coalesced = Counter::default();
        let subscribers_dropped = Family::<ReasonLabel, Counter>::default();
        let subscribers_shed = Family::<ReasonLabel, Counter>::default();
        let log_reads_events = Counter::default();
        let deliver_lag = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let log_head = Gauge::default();
        let http_errors = Family::<CodeLabel, Counter>::default();
        let connections_closed = Family::<ClosedLabel, Counter>::default();
        let listen_connected = Gauge::default();
        let listen_reconnects = Counter::default();
        let bridge_events = Counter::default();
        let catch_up_events = Counter::default();
        let notify_queue_usage = Gauge::<f64, AtomicU64>::default();
        let pool_size = Gauge::default();
        let pool_available = Gauge::default();
        let pool_waiting = Gauge::default();
        let task_restarts = Family::<TaskLabel, Counter>::default();
        let body_memory_held = Gauge::default();
        let proxy_relays_cut = Counter::default();
        // Known label values exist from the start, so rate() and alerts see zeros, not gaps.
        for reason in DropReason::ALL {
            let _ = subscribers_dropped.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        for reason in ShedReason::ALL {
            let _ = subscribers_shed.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        for kind in SubscriberKind::ALL {
            let _ = subscribers.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        for task in Task::ALL {
            let _ = task_restarts.get_or_create(&TaskLabel {
                task: task.as_str(),
            });
        }
        let mut metrics = Metrics {
            registry: Registry::with_prefix("mcp_fanout"),
            subscribers,
            events_published,
            events_delivered,
            events_coalesced,
            subscribers_dropped,
            subscribers_shed,
            log_reads_events,
            deliver_lag,
            lag_window: Default::default(),
            log_head,
            http_errors,
            connections_closed,
            listen_connected,
            listen_reconnects,
            bridge_events,
            catch_up_events,
            notify_queue_usage,
            pool_size,
            pool_available,
            pool_waiting,
            task_restarts,
            body_memory_held,
            proxy_relays_cut,
        };
        metrics.register();
        metrics
    }

    /// Names and describes every metric in the registry, in the order they are exposed.
    fn register(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "subscribers",
            "Current subscribers on this replica",
            self.subscribers.clone(),
        );
        registry.register(
            "events_published",
            "Events committed through this replica",
            self.events_published.clone(),
        );
        registry.register(
            "events_delivered",
            "Events written to subscribers (one per event per subscriber)",
            self.events_delivered.clone(),
        );
        registry.register(
            "events_coalesced",
            "list_changed not written because a newer one of the same kind and target was (FANOUT_COALESCE_MS)",
            self.events_coalesced.clone(),
        );
        registry.register(
            "subscribers_dropped",
            "Subscribers ended by the server, by reason",
            self.subscribers_dropped.clone(),
        );
        registry.register(
            "subscribers_shed",
            "Subscribe requests answered with retry and a clean end, by reason",
            self.subscribers_shed.clone(),
        );
        registry.register(
            "log_read_events",
            "Events subscribers read from the log because the in-memory ring no longer held them",
            self.log_reads_events.clone(),
        );
        registry.register(
            "publish_deliver_lag_seconds",
            "Seconds from commit to the write into a subscriber stream",
            self.deliver_lag.clone(),
        );
        registry.register(
            "log_head",
            "Highest seq this replica has seen committed",
            self.log_head.clone(),
        );
        registry.register(
            "http_errors",
            "Error answers, by error code",
            self.http_errors.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed for doing nothing (no request, idle, or idle at the connection cap), by listener and reason",
            self.connections_closed.clone(),
        );
        registry.register(
            "listen_connected",
            "1 while the LISTEN connection is up",
            self.listen_connected.clone(),
        );
        registry.register(
            "listen_reconnects",
            "LISTEN connection losses",
            self.listen_reconnects.clone(),
        );
        registry.register(
            "bridge_events",
            "Events the bridge read from the log",
            self.bridge_events.clone(),
        );
        registry.register(
            "catch_up_events",
            "Events read from the log right after a LISTEN (re)connect",
            self.catch_up_events.clone(),
        );
        registry.register(
            "notify_queue_usage",
            "pg_notification_queue_usage(), sampled on each heartbeat",
            self.notify_queue_usage.clone(),
        );
        registry.register(
            "db_pool_size",
            "Connections in the pool",
            self.pool_size.clone(),
        );
        registry.register(
            "db_pool_available",
            "Idle connections in the pool",
            self.pool_available.clone(),
        );
        registry.register(
            "db_pool_waiting",
            "Requests waiting for a pool connection",
            self.pool_waiting.clone(),
        );
        registry.register(
            "task_restarts",
            "Background tasks restarted after a failure, a panic or an unexpected exit, by task",
            self.task_restarts.clone(),
        );
        registry.register(
            "body_memory_held_bytes",
            "Bytes of request bodies and of answers held for a rewrite, of FANOUT_BODY_MEMORY_BYTES",
            self.body_memory_held.clone(),
        );
        registry.register(
            "proxy_relays_cut",
            "Relayed answers cut because their clients stopped reading while stalled answers held their whole budget",
            self.proxy_relays_cut.clone(),
        );
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// One publish→deliver lag observation (the histogram and the console's copy).
    pub fn observe_lag(&self, secs: f64) {
        self.deliver_lag.observe(secs);
        self.lag_window.observe(secs);
    }

    pub fn dropped(&self, reason: DropReason) {
        self.subscribers_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Subscribers ended for `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.subscribers_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .get()
    }

    /// Current subscribers of `kind` on this replica.
    pub fn subscribers_of(&self, kind: SubscriberKind) -> i64 {
        self.subscribers
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .get()
    }

    pub fn task_restarted(&self, task: Task) {
        self.task_restarts
            .get_or_create(&TaskLabel {
                task: task.as_str(),
            })
            .inc();
    }

    pub fn shed(&self, reason: ShedReason) {
        self.subscribers_shed
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }
}
