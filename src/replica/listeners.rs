//! The replica's listeners (public, and admin when it has its own address): each an accept loop
//! serving a swappable router, stopped together.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use super::ServeError;
use crate::server::{self, ConnOptions, ListenerCounts, RouterSlot};

/// A bound listener before it serves.
pub struct Bound {
    pub role: &'static str,
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

/// Binds `addr` with the server's listen backlog; `role` names it in logs and errors.
pub fn bind(role: &'static str, addr: SocketAddr) -> Result<Bound, ServeError> {
    let listener = server::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(Bound {
        role,
        listener,
        addr,
    })
}

/// The running accept loops, by role.
pub struct Listeners {
    tasks: JoinSet<()>,
    roles: Vec<(Id, &'static str)>,
    stop_accepting: CancellationToken,
}

impl Listeners {
    pub fn new() -> Listeners {
        Listeners {
            tasks: JoinSet::new(),
            roles: Vec::new(),
            stop_accepting: CancellationToken::new(),
        }
    }

    /// Serves `slot`'s router on `bound` until [`Listeners::stop_accepting`].
    pub fn serve(
        &mut self,
        bound: Bound,
        slot: RouterSlot,
        opts: ConnOptions,
        refused: ListenerCounts,
    ) {
        tracing::info!(role = bound.role, addr = %bound.addr, "listening");
        let task = self.tasks.spawn(server::serve(
            bound.listener,
            slot,
            opts,
            self.stop_accepting.clone(),
            refused,
        ));
        self.roles.push((task.id(), bound.role));
    }

    /// Resolves when a listener stops on its own (it cannot be restarted: its socket is gone),
    /// with its role; never while all serve.
    pub async fn one_stopped(&mut self) -> &'static str {
        let Some(ended) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, cause) = match ended {
            Ok((id, ())) => (id, "it returned".to_owned()),
            Err(error) => (error.id(), error.to_string()),
        };
        let role = self
            .roles
            .iter()
            .find_map(|(task, role)| (*task == id).then_some(*role))
            .unwrap_or("public");
        tracing::error!(role, cause, "listener stopped while serving; exiting");
        role
    }

    /// New connections are no longer accepted; open ones carry on.
    pub fn stop_accepting(&self) {
        self.stop_accepting.cancel();
    }

    /// Waits until every listener has stopped and its connections (and handed-off streams) have
    /// ended, or `deadline`; `false` if the deadline came first.
    pub async fn closed_by(&mut self, deadline: tokio::time::Instant) -> bool {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        tokio::time::timeout_at(deadline, all).await.is_ok()
    }
}

impl Default for Listeners {
    fn default() -> Listeners {
        Listeners::new()
    }
}
