//! Whether this replica's LISTEN connection is up (connected and caught up), as one value with two
//! readers: the `listen_connected` gauge, and whoever must act at once on a change (the cluster
//! view's heartbeat writes this replica's row when it changes, not at its next tick).

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

pub struct ListenState {
    gauge: Gauge,
    tx: watch::Sender<bool>,
}

impl ListenState {
    /// Down until [`ListenState::set`] says otherwise; `gauge` follows it.
    pub fn new(gauge: Gauge) -> ListenState {
        gauge.set(0);
        ListenState {
            gauge,
            tx: watch::channel(false).0,
        }
    }

    /// Records the state; receivers of [`ListenState::changes`] are woken only when it differs
    /// from the last one recorded.
    pub fn set(&self, connected: bool) {
        self.gauge.set(i64::from(connected));
        self.tx.send_if_modified(|was| {
            let changed = *was != connected;
            *was = connected;
            changed
        });
    }

    pub fn is_connected(&self) -> bool {
        *self.tx.borrow()
    }

    /// Wakes (`changed()`) on every change after this call.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_wakes_and_a_repeat_does_not() {
        let gauge = Gauge::default();
        let state = ListenState::new(gauge.clone());
        let mut rx = state.changes();
        state.set(false);
        assert!(!rx.has_changed().unwrap_or(true));
        state.set(true);
        assert!(rx.has_changed().unwrap_or(false));
        assert!(*rx.borrow_and_update());
        assert_eq!(gauge.get(), 1);
        assert!(state.is_connected());
        state.set(true);
        assert!(!rx.has_changed().unwrap_or(true));
        state.set(false);
        assert_eq!(gauge.get(), 0);
        assert!(rx.has_changed().unwrap_or(false));
    }
}
