//! The dedicated LISTEN connection (never from the pool: LISTEN on a pooled connection never
//! delivers). Its `Connection` is driven with `poll_message` — spawning it as a plain future
//! would silently drop notifications.
//!
//! When notifications can be lost: only while this connection is down (Postgres delivers a NOTIFY
//! only to sessions listening at commit time). The caller must therefore read the log after its
//! cursor after every (re)connect, once LISTEN is active — that read covers every commit the
//! connection may have missed — and should read it periodically as a safety net.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::db::{timed, DbError};

pub enum Control {
    /// A message on the control channel (heartbeats and cluster messages).
    Message(String),
    /// The connection ended.
    Closed(Option<tokio_postgres::Error>),
}

pub struct Listener {
    pub client: Client,
    /// Woken (coalesced) by every notification on the events channel.
    pub events: Arc<Notify>,
    pub control: mpsc::UnboundedReceiver<Control>,
    driver: JoinHandle<()>,
}

impl Listener {
    pub async fn connect(
        cfg: &tokio_postgres::Config,
        tls: MakeRustlsConnect,
        events_channel: &str,
        control_channel: &str,
        timeout: Duration,
    ) -> Result<Listener, DbError> {
        let (client, mut connection) = timed(timeout, async {
            cfg.connect(tls).await.map_err(DbError::Query)
        })
        .await?;
        let events = Arc::new(Notify::new());
        let (tx, control) = mpsc::unbounded_channel();
        let wake = events.clone();
        let events_name = events_channel.to_owned();
        let driver = tokio::spawn(async move {
            let end = futures::future::poll_fn(|cx| loop {
                match connection.poll_message(cx) {
                    Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                        if n.channel() == events_name {
                            // The payload is not trusted: it is only a wake-up.
                            wake.notify_one();
                        } else {
                            let _ = tx.send(Control::Message(n.payload().to_owned()));
                        }
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(e)),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await;
            let _ = tx.send(Control::Closed(end));
        });
        let listen = format!("LISTEN \"{events_channel}\"; LISTEN \"{control_channel}\"");
        timed(timeout, async {
            client.batch_execute(&listen).await.map_err(DbError::Query)
        })
        .await?;
        Ok(Listener {
            client,
            events,
            control,
            driver,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
