//! A subscriber's slot: taken at registration, given back on drop, so counts stay right on every
//! path (clean end, client gone, write stall, panic). Drop also records why the server ended it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Shared;
use crate::metrics::{DropReason, KindLabel, SubscriberKind};
use crate::per_client::Place;
use crate::socket::{Cut, SocketState, StreamCut};

pub struct SubscriberGuard {
    shared: Arc<Shared>,
    kind: SubscriberKind,
    session: Option<String>,
    reason: Option<DropReason>,
    /// The connection's socket: says when the server cut it (a write stall).
    socket: Option<SocketState>,
    /// The subscriber's own stream, on a connection that carries others (HTTP/2): says when the
    /// server reset it.
    stream: Option<StreamCut>,
    /// The client's place this slot also holds (`FANOUT_MAX_SUBSCRIBERS_PER_CLIENT`), given back
    /// with it.
    _place: Option<Place>,
}

impl SubscriberGuard {
    pub(super) fn new(
        shared: Arc<Shared>,
        kind: SubscriberKind,
        session: Option<String>,
    ) -> SubscriberGuard {
        shared
            .metrics
            .subscribers
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
        SubscriberGuard {
            shared,
            kind,
            session,
            reason: None,
            socket: None,
            stream: None,
            _place: None,
        }
    }

    /// The slot also holds one of its client's places, given back with it.
    pub(super) fn held_by(mut self, place: Place) -> SubscriberGuard {
        self._place = Some(place);
        self
    }

    /// Records that the server ended this subscriber, and why.
    pub fn end(&mut self, reason: DropReason) {
        self.reason.get_or_insert(reason);
    }

    /// Ties the subscriber to its connection's socket, so a cut of it is the drop's reason.
    pub fn watch_socket(&mut self, socket: SocketState) {
        self.socket = Some(socket);
    }

    /// Ties the subscriber to its own stream (HTTP/2), so a reset of it is the drop's reason.
    pub fn watch_stream(&mut self, stream: Option<StreamCut>) {
        self.stream = stream;
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.shared.subscribers.fetch_sub(1, Ordering::AcqRel);
        let metrics = &self.shared.metrics;
        metrics
            .subscribers
            .get_or_create(&KindLabel {
                kind: self.kind.as_str(),
            })
            .dec();
        let cut = self
            .socket
            .as_ref()
            .and_then(SocketState::cut_reason)
            .or_else(|| self.stream.as_ref().and_then(StreamCut::reason));
        let reason = match cut {
            Some(Cut::WriteStall) => Some(DropReason::WriteStall),
            None => self.reason,
        };
        match reason {
            Some(reason) => {
                metrics.dropped(reason);
                tracing::info!(
                    kind = self.kind.as_str(),
                    session = self.session.as_deref().unwrap_or(""),
                    reason = reason.as_str(),
                    "subscriber ended by server"
                );
            }
            None => tracing::debug!(
                kind = self.kind.as_str(),
                session = self.session.as_deref().unwrap_or(""),
                "subscriber left"
            ),
        }
    }
}
