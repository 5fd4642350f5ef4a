//! The Postgres bridge: one per replica. It LISTENs on the deployment's channels, and on every
//! wake-up (and after every reconnect, and on every heartbeat tick) reads the log after its
//! cursor and pushes those events, in seq order, into the local broadcaster. NOTIFY payloads are
//! never trusted: a forged or repeated NOTIFY costs one read and nothing else.

pub mod backoff;
pub mod control;
pub mod listen_state;
pub mod listener;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use self::backoff::Backoff;
pub use self::control::{control_channel, ControlMessage};
pub use self::listen_state::ListenState;
use self::listener::{Control, Listener};
use crate::broadcast::Broadcaster;
use crate::db::{column, describe, timed, DbError};
use crate::log::postgres::{PageReader, PgLog};
use crate::log::LogError;
use crate::metrics::Metrics;
use crate::shutdown::Lifecycle;

/// Events read from the log per catch-up query.
const PAGE: usize = 1000;

pub fn events_channel(schema: &str) -> String {
    format!("{schema}.events")
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the LISTEN connection closed{}", .0.as_ref().map(|e| format!(": {}", describe(e))).unwrap_or_default())]
    Closed(Option<tokio_postgres::Error>),
    #[error("no heartbeat came back within {0:?}")]
    HeartbeatTimeout(Duration),
}

impl BridgeError {
    /// A connection problem (the database or the network): reconnecting is the cure. Anything else
    /// — a row that does not decode, a statement the database refuses for what it says — fails the
    /// bridge: it is restarted (with backoff) by its supervisor, and the replica is not ready
    /// meanwhile.
    pub fn is_transient(&self) -> bool {
        match self {
            BridgeError::Db(DbError::Decode { .. }) | BridgeError::Log(LogError::Internal(_)) => {
                false
            }
            BridgeError::Db(_) | BridgeError::Log(_) => true,
            BridgeError::Closed(_) | BridgeError::HeartbeatTimeout(_) => true,
        }
    }
}

pub struct Bridge {
    pub broadcaster: Broadcaster,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    /// Up once connected and caught up, down when the connection is lost.
    pub listening: Arc<ListenState>,
    /// Names this replica's heartbeat NOTIFYs.
    pub replica_id: String,
    pub log: Arc<PgLog>,
    pub listen_config: tokio_postgres::Config,
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
    pub heartbeat_every: Duration,
    pub heartbeat_timeout: Duration,
    pub timeout: Duration,
}

impl Bridge {
    /// Runs until `stop`: connects, catches up, follows; reconnects with jittered backoff when
    /// the connection is lost. Returns the error it cannot get past by reconnecting (see
    /// [`BridgeError::is_transient`]), with the replica marked not ready.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> Result<(), BridgeError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let result = self.session(&stop, &mut backoff).await;
            self.listening.set(false);
            match result {
                Ok(()) => return Ok(()),
                Err(error) if !error.is_transient() => {
                    self.lifecycle.set_bridge_failed(true);
                    return Err(error);
                }
                Err(error) => tracing::warn!(%error, "LISTEN connection lost; reconnecting"),
            }
            self.metrics.listen_reconnects.inc();
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One connection's life. The backoff restarts once it is connected and caught up, so a
    /// connection that drops after working reconnects at once; only failing attempts back off.
    async fn session(
        &self,
        stop: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), BridgeError> {
        let schema = self.log.schema();
        let events = events_channel(schema);
        let control = control_channel(schema);
        let mut listener = Listener::connect(
            &self.listen_config,
            self.tls.clone(),
            &events,
            &control,
            self.timeout,
        )
        .await?;
        // Every read of the log below runs on this connection, planned once.
        let reader = self.log.page_reader(&listener.client).await?;
        // LISTEN is active: everything committed from now on wakes us; this read covers the rest.
        let caught_up = self.catch_up(&listener, &reader).await?;
        self.metrics.catch_up_events.inc_by(caught_up);
        self.listening.set(true);
        if self.lifecycle.is_bridge_failed() {
            self.lifecycle.set_bridge_failed(false);
            tracing::info!(head = self.broadcaster.head(), "LISTEN bridge works again");
        }
        backoff.reset();
        if !self.lifecycle.is_ready() && !self.lifecycle.is_draining() {
            self.lifecycle.set_ready();
            tracing::info!(head = self.broadcaster.head(), "LISTEN connected; ready");
        } else {
            tracing::info!(
                caught_up,
                head = self.broadcaster.head(),
                "LISTEN reconnected"
            );
        }
        let mut tick = tokio::time::interval(self.heartbeat_every);
        tick.reset();
        let mut beat = 0u64;
        let mut awaiting: Option<(String, Instant)> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = listener.events.notified() => {
                    self.catch_up(&listener, &reader).await?;
                }
                msg = listener.control.recv() => match msg {
                    Some(Control::Message(payload)) => {
                        if awaiting.as_ref().is_some_and(|(p, _)| *p == payload) {
                            awaiting = None;
                        } else {
                            self.on_control(&payload);
                        }
                    }
                    Some(Control::Closed(e)) => return Err(BridgeError::Closed(e)),
                    None => return Err(BridgeError::Closed(None)),
                },
                _ = tick.tick() => {
                    if let Some((_, since)) = &awaiting {
                        if since.elapsed() > self.heartbeat_timeout {
                            return Err(BridgeError::HeartbeatTimeout(self.heartbeat_timeout));
                        }
                    } else {
                        beat += 1;
                        let payload = ControlMessage::Heartbeat {
                            replica: self.replica_id.clone(),
                            beat,
                        }
                        .to_string();
                        self.heartbeat(&listener, &control, &payload).await?;
                        awaiting = Some((payload, Instant::now()));
                    }
                    // The safety net: a missed wake-up costs at most one tick.
                    self.catch_up(&listener, &reader).await?;
                    self.sample_pool();
                }
            }
        }
    }

    /// A NOTIFY to ourselves on the LISTEN connection: it must come back, or the connection is
    /// dead. Also samples the NOTIFY queue usage.
    async fn heartbeat(
        &self,
        listener: &Listener,
        control: &str,
        payload: &str,
    ) -> Result<(), BridgeError> {
        let rows = timed(self.timeout, async {
            listener
                .client
                .query_typed(
                    "SELECT pg_notify($1, $2), pg_notification_queue_usage()",
                    &[(&control, Type::TEXT), (&payload, Type::TEXT)],
                )
                .await
                .map_err(DbError::Query)
        })
        .await?;
        if let Some(row) = rows.first() {
            let usage: f64 = column(row, 1)?;
            self.metrics.notify_queue_usage.set(usage);
        }
        Ok(())
    }

    /// Reads the log after the broadcaster's head and pushes it, page by page, on the LISTEN
    /// connection (no pool checkout, the statement prepared once: it is a direct session).
    /// Returns the count.
    async fn catch_up(&self, listener: &Listener, reader: &PageReader) -> Result<u64, BridgeError> {
        let mut total = 0u64;
        loop {
            let cursor = self.broadcaster.head();
            let page = reader.fetch_after(&listener.client, cursor, PAGE).await?;
            let n = page.len();
            if n == 0 {
                return Ok(total);
            }
            self.broadcaster.push(&page);
            total += n as u64;
            self.metrics.bridge_events.inc_by(n as u64);
            if n < PAGE {
                return Ok(total);
            }
        }
    }

    /// Cluster messages. Anyone who can connect can NOTIFY: a forged takeover can end a stream
    /// (which then resumes), never deliver an event.
    fn on_control(&self, payload: &str) {
        match payload.parse::<ControlMessage>() {
            Ok(ControlMessage::Takeover {
                generation,
                session,
            }) => self
                .broadcaster
                .session_taken_elsewhere(&session, generation),
            Ok(ControlMessage::End { session }) => self.broadcaster.end_session(&session),
            Ok(ControlMessage::Heartbeat { .. }) => {}
            Err(error) => tracing::debug!(payload, %error, "unknown control message"),
        }
    }

    fn sample_pool(&self) {
        let status = self.log.pool().status();
        let m = &self.metrics;
        m.pool_size.set(status.size as i64);
        m.pool_available.set(status.available as i64);
        m.pool_waiting.set(status.waiting as i64);
    }
}
