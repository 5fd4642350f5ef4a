//! The console's time series: once a second, the change of a few counters (events published and
//! delivered, drops by reason, the lag buckets) becomes one point; the last [`POINTS`] are kept.
//! Nothing is done per event beyond the counters the metrics already keep.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::metrics::lag::{quantile_ms, BUCKETS};
use crate::metrics::{DropReason, Metrics};

/// Seconds between points.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Points kept: five minutes.
pub const POINTS: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    /// Unix seconds at the end of the interval.
    t: f64,
    published_per_s: f64,
    delivered_per_s: f64,
    dropped: [u64; DropReason::ALL.len()],
    lag_p50_ms: Option<f64>,
    lag_p99_ms: Option<f64>,
}

/// Counter totals at one instant.
#[derive(Clone, Copy)]
struct Totals {
    at: Instant,
    published: u64,
    delivered: u64,
    dropped: [u64; DropReason::ALL.len()],
    lag: [u64; BUCKETS],
}

impl Totals {
    fn read(m: &Metrics) -> Totals {
        Totals {
            at: Instant::now(),
            published: m.events_published.get(),
            delivered: m.events_delivered.get(),
            dropped: DropReason::ALL.map(|reason| m.drops(reason)),
            lag: m.lag_window.snapshot(),
        }
    }

    /// The point for the interval from `earlier` to `self`.
    fn since(&self, earlier: &Totals, t: f64) -> Point {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        let lag: [u64; BUCKETS] =
            std::array::from_fn(|i| self.lag[i].saturating_sub(earlier.lag[i]));
        Point {
            t,
            published_per_s: rate(self.published, earlier.published),
            delivered_per_s: rate(self.delivered, earlier.delivered),
            dropped: std::array::from_fn(|i| self.dropped[i].saturating_sub(earlier.dropped[i])),
            lag_p50_ms: quantile_ms(&lag, 0.5),
            lag_p99_ms: quantile_ms(&lag, 0.99),
        }
    }
}

#[derive(Default)]
pub struct Series {
    points: Mutex<VecDeque<Point>>,
}

impl Series {
    fn push(&self, p: Point) {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        if points.len() == POINTS {
            points.pop_front();
        }
        points.push_back(p);
    }

    /// `{"interval_secs", "window_points", "drop_reasons", "points": [{t, published_per_s, delivered_per_s,
    /// dropped: [per reason], lag_p50_ms, lag_p99_ms}]}`, oldest first.
    pub fn to_json(&self) -> Value {
        let points: Vec<Value> = self
            .points
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| {
                json!({
                    "t": p.t,
                    "published_per_s": p.published_per_s,
                    "delivered_per_s": p.delivered_per_s,
                    "dropped": p.dropped,
                    "lag_p50_ms": p.lag_p50_ms,
                    "lag_p99_ms": p.lag_p99_ms,
                })
            })
            .collect();
        json!({
            "interval_secs": INTERVAL.as_secs(),
            "window_points": POINTS,
            "drop_reasons": DropReason::ALL.map(DropReason::as_str),
            "points": points,
        })
    }
}

/// Samples the counters every [`INTERVAL`] until `stop`.
pub async fn run(metrics: Arc<Metrics>, series: Arc<Series>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = Totals::read(&metrics);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Totals::read(&metrics);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        series.push(now.since(&last, at));
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_the_change_over_its_interval() {
        let m = Metrics::new();
        let a = Totals::read(&m);
        m.events_published.inc_by(10);
        m.events_delivered.inc_by(40);
        m.dropped(DropReason::WriteStall);
        m.lag_window.observe(0.001);
        let mut b = Totals::read(&m);
        b.at = a.at + Duration::from_secs(2);
        let p = b.since(&a, 7.0);
        assert_eq!(p.published_per_s, 5.0);
        assert_eq!(p.delivered_per_s, 20.0);
        let stall = DropReason::ALL
            .iter()
            .position(|r| *r == DropReason::WriteStall)
            .expect("reason");
        assert_eq!(p.dropped.iter().sum::<u64>(), 1);
        assert_eq!(p.dropped[stall], 1);
        assert_eq!(p.lag_p50_ms, Some(1.0));

        let s = Series::default();
        for i in 0..POINTS + 5 {
            s.push(Point { t: i as f64, ..p });
        }
        let v = s.to_json();
        let points = v["points"].as_array().expect("points");
        assert_eq!(points.len(), POINTS);
        assert_eq!(points[POINTS - 1]["t"], (POINTS + 4) as f64);
    }
}
