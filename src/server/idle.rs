//! Connections that do nothing are closed: one that has not started a request within the
//! first-request deadline (it sent nothing, only the HTTP/2 preface, or a head too slowly), or
//! one with no request in progress for the idle deadline. A request is in progress from the
//! moment hyper hands it to the service until its response body is done (so a stream or a long
//! poll is never idle); reading its body has a deadline of its own (`http::body`).
//!
//! And they make room: when a listener is at its connection cap and a new connection waits, the
//! connection with nothing in progress for the longest ([`Sheddable`]) is closed at once, as
//! its deadline would close it later. So sockets that do nothing (idle keep-alives, silent or
//! slow-headed connections) never keep a client that has something to ask out; only requests in
//! progress (streams, polls, calls) hold a listener full.
//!
//! A request head must be whole within [`HEAD_WITHIN`] of its first byte, or the connection is
//! closed. hyper's own header-read timeout is off: it starts whenever hyper waits for a head, so it
//! closed every idle keep-alive connection 10 s after its last answer (whatever
//! `FANOUT_IDLE_SECS` said: a load balancer keeping connections for 60 s met closed ones) and a
//! new connection before `FANOUT_FIRST_REQUEST_SECS`. Here a head's clock starts at its first
//! byte ([`Activity::bytes_read`], from the socket's reads on an HTTP/1.x connection between
//! requests); a connection's first head is bounded by the first-request deadline.
//!
//! Nothing here runs per request but a few atomic updates: the connection's task is not woken
//! when a request starts or ends, and no timer is armed per request. One timer per connection
//! checks the deadline when it would fall; while a request is in progress it looks again one
//! deadline later. A connection joins its listener's [`Sheddable`] table once, at accept, and
//! leaves it when it closes; the table is searched only at the cap.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slab::Slab;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The requests in progress on one connection.
pub(super) struct Activity {
    /// When the connection was accepted (the origin of `idle_since_ns`).
    born: Instant,
    in_flight: AtomicUsize,
    /// When the connection last had no request in progress, in nanoseconds after `born` (0: since
    /// accept).
    idle_since_ns: AtomicU64,
    /// Whether any request has started on this connection.
    served: AtomicBool,
    /// Set when the listener asks it to close to make room ([`Sheddable`]), until it has
    /// answered: it is not asked twice.
    asked: AtomicBool,
    /// The listener's ask.
    shed: Notify,
    /// Its listener's [`Sheddable::wanted`]: a connection that goes idle while a place is wanted
    /// offers its own.
    wanted: Arc<AtomicBool>,
    /// Whether its requests are HTTP/1.x (known from the first): only then are heads timed.
    h1: AtomicBool,
    /// When the first byte of a head was read while no request was in progress, in nanoseconds
    /// after `born` (0: no head being read).
    head_at_ns: AtomicU64,
}

/// One request in progress; dropped with its response body.
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // Written before the count goes down, so a check that sees no request in progress sees
        // when the last one ended (the latest end, when several end together).
        let now = u64::try_from(a.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        a.idle_since_ns.fetch_max(now, Ordering::Release);
        let was = a.in_flight.fetch_sub(1, Ordering::AcqRel);
        // Idle now, while a new connection waits at the cap with nobody idle to take the place
        // of: this one offers its own (it answers in `Member::expired`).
        if was == 1 && a.wanted.load(Ordering::Acquire) {
            a.shed.notify_one();
        }
    }
}

/// Why a connection was closed for doing nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idle {
    /// No request started within the first-request deadline.
    NoRequest,
    /// No request in progress for the idle deadline.
    BetweenRequests,
    /// Nothing in progress when its listener, at its cap, needed the place for a new connection.
    AtCap,
    /// A request head not whole within [`HEAD_WITHIN`] of its first byte.
    SlowHead,
}

impl Idle {
    pub(super) const ALL: [Idle; 4] = [
        Idle::NoRequest,
        Idle::BetweenRequests,
        Idle::AtCap,
        Idle::SlowHead,
    ];

    /// The reason's name in logs and in `mcp_fanout_connections_closed_total{reason}`.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Idle::NoRequest => "no_request",
            Idle::BetweenRequests => "idle",
            Idle::AtCap => "at_cap",
            Idle::SlowHead => "slow_head",
        }
    }
}

impl Activity {
    fn new(wanted: Arc<AtomicBool>) -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ns: AtomicU64::new(0),
            served: AtomicBool::new(false),
            asked: AtomicBool::new(false),
            shed: Notify::new(),
            wanted,
            h1: AtomicBool::new(false),
            head_at_ns: AtomicU64::new(0),
        })
    }

    /// Nanoseconds since `born` (at least 1: 0 means "none" where it is stored).
    fn now_ns(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The socket read some bytes: between requests on an HTTP/1.x connection, they start a
    /// head, whose clock starts now. Called on every read; a few atomic loads.
    pub(super) fn bytes_read(&self) {
        if self.h1.load(Ordering::Relaxed)
            && self.head_at_ns.load(Ordering::Relaxed) == 0
            && !self.busy()
        {
            self.head_at_ns.store(self.now_ns(), Ordering::Release);
        }
    }

    /// When the head being read started, if one is.
    fn head_started(&self) -> Option<Instant> {
        match self.head_at_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.born + Duration::from_nanos(ns)),
        }
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Since when nothing has been in progress (meaningful only when not [`Self::busy`]).
    fn idle_since(&self) -> Instant {
        self.born + Duration::from_nanos(self.idle_since_ns.load(Ordering::Acquire))
    }

    /// A request starts (its head is whole): the connection is not idle until it is dropped.
    /// `http1`: it came on HTTP/1.x, whose next heads are timed.
    pub(super) fn begin(self: &Arc<Activity>, http1: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_at_ns.store(0, Ordering::Release);
        if !self.served.swap(true, Ordering::AcqRel) && http1 {
            self.h1.store(true, Ordering::Relaxed);
        }
        InFlight(self.clone())
    }
}

/// The connections of one listener, so that at its cap the one idle the longest can be asked to
/// close (see the module's doc).
#[derive(Default)]
pub(super) struct Sheddable {
    conns: Mutex<Table>,
    /// A new connection waits for a place ([`Sheddable::want_place`]) and nobody has given one
    /// up yet: the first connection that is asked, or that goes idle, while it is set closes and
    /// clears it.
    wanted: Arc<AtomicBool>,
}

/// The connections, and where the next search starts.
#[derive(Default)]
struct Table {
    conns: Slab<Arc<Activity>>,
    next: usize,
}

/// Time a request head has from its first byte to its end (hyper's `header_read_timeout`, timed
/// from the right moment).
pub(super) const HEAD_WITHIN: Duration = Duration::from_secs(10);

/// How often an HTTP/1.x connection looks whether a head has started (so a slow head is closed
/// between [`HEAD_WITHIN`] and this much later): a timer wake every few seconds per HTTP/1.x
/// connection hyper holds (streams are handed off), not one per request.
const HEAD_LOOK_EVERY: Duration = Duration::from_secs(3);

/// The idle connections one search compares, at most: the one idle the longest among them is
/// asked. The search goes round the table from where the last one stopped, so a flood of new
/// connections at the cap costs a bounded look each, not a pass over every open connection;
/// with fewer idle connections than this, it is the one idle the longest of all.
const SEARCH_IDLE: usize = 64;

/// A connection's entry in its listener's [`Sheddable`] table, removed when dropped (when the
/// connection's task ends).
pub(super) struct Member {
    table: Arc<Sheddable>,
    key: usize,
    activity: Arc<Activity>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut table = self.table.conns.lock().unwrap_or_else(|p| p.into_inner());
        table.conns.try_remove(self.key);
    }
}

impl Sheddable {
    /// A new connection waits for a place: the connection idle the longest is asked to give up
    /// its own, and until one has (or [`Sheddable::place_found`]) any connection that goes idle
    /// gives up its own. `false` when nobody was idle to ask.
    pub(super) fn want_place(&self) -> bool {
        self.wanted.store(true, Ordering::Release);
        self.ask_longest_idle()
    }

    /// The waiting connection has its place (given up or freed otherwise): nobody else closes
    /// for it.
    pub(super) fn place_found(&self) {
        self.wanted.store(false, Ordering::Release);
    }

    /// Enters a new connection in the table, with its activity tied to this listener.
    pub(super) fn join(self: &Arc<Self>) -> Member {
        let activity = Activity::new(self.wanted.clone());
        let key = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .conns
            .insert(activity.clone());
        Member {
            table: self.clone(),
            key,
            activity,
        }
    }

    /// Asks the connection with nothing in progress for the longest (not asked already; among
    /// the first [`SEARCH_IDLE`] found) to close; `false` when every connection has a request in
    /// progress. One that has started a request by the time it hears the ask stays open and
    /// passes the ask on.
    pub(super) fn ask_longest_idle(&self) -> bool {
        let mut table = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let slots = table.conns.capacity();
        let start = table.next % slots.max(1);
        let (mut longest, mut found, mut stop): (Option<&Arc<Activity>>, usize, usize) =
            (None, 0, start);
        for i in (start..slots).chain(0..start) {
            stop = i + 1;
            let Some(a) = table.conns.get(i) else {
                continue;
            };
            if a.busy() || a.asked.load(Ordering::Acquire) {
                continue;
            }
            found += 1;
            if longest.is_none_or(|l| a.idle_since() < l.idle_since()) {
                longest = Some(a);
            }
            if found == SEARCH_IDLE {
                break;
            }
        }
        let longest = longest.cloned();
        table.next = stop;
        match longest {
            Some(a) => {
                a.asked.store(true, Ordering::Release);
                a.shed.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Member {
    /// The connection's requests in progress (and its head's clock).
    pub(super) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Resolves when the connection has done nothing for its deadline — `first_request` after
    /// accept if no request has started, else `idle` after the last one ended — when a head has
    /// taken longer than [`HEAD_WITHIN`], or when it has nothing in progress and its listener
    /// needs its place ([`Sheddable::ask_longest_idle`]).
    pub(super) async fn expired(&self, first_request: Duration, idle: Duration) -> Idle {
        let a = &self.activity;
        loop {
            let (limit, why) = if a.served.load(Ordering::Acquire) {
                (idle, Idle::BetweenRequests)
            } else {
                (first_request, Idle::NoRequest)
            };
            let now = Instant::now();
            let deadline = if a.busy() {
                // Busy: nothing can expire before a request ends and `limit` passes after it.
                now + limit
            } else {
                let deadline = a.idle_since() + limit;
                if deadline <= now {
                    return why;
                }
                match a.head_started() {
                    Some(at) if at + HEAD_WITHIN <= now => return Idle::SlowHead,
                    Some(at) => deadline.min(at + HEAD_WITHIN),
                    None => deadline,
                }
            };
            // A head may start on HTTP/1.x (or before the first request tells the version) without
            // waking this task: look again soon.
            let may_time_heads = a.h1.load(Ordering::Relaxed) || !a.served.load(Ordering::Acquire);
            let deadline = if may_time_heads {
                deadline.min(now + HEAD_LOOK_EVERY)
            } else {
                deadline
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = a.shed.notified() => {
                    if a.busy() {
                        // A request started since it was asked: another connection is.
                        a.asked.store(false, Ordering::Release);
                        if self.table.wanted.load(Ordering::Acquire) {
                            self.table.ask_longest_idle();
                        }
                    } else if self.table.wanted.swap(false, Ordering::AcqRel) {
                        return Idle::AtCap;
                    } else {
                        // The place was found meanwhile (another connection gave up its own,
                        // or one closed).
                        a.asked.store(false, Ordering::Release);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(table: &Arc<Sheddable>) -> Member {
        table.join()
    }

    #[tokio::test]
    async fn deadlines_count_only_while_nothing_is_in_progress() {
        let table = Arc::new(Sheddable::default());
        let activity = member(&table);
        let first = Duration::from_millis(100);
        let idle = Duration::from_millis(300);
        let started = Instant::now();
        assert_eq!(activity.expired(first, idle).await, Idle::NoRequest);
        assert!(started.elapsed() >= first);

        let request = activity.activity.begin(true);
        let waiting = tokio::time::timeout(idle * 3, activity.expired(first, idle));
        assert!(
            waiting.await.is_err(),
            "a request in progress is never idle"
        );
        drop(request);
        let ended = Instant::now();
        assert_eq!(activity.expired(first, idle).await, Idle::BetweenRequests);
        assert!(ended.elapsed() >= idle);
    }

    #[tokio::test]
    async fn at_the_cap_the_connection_idle_longest_is_asked_and_a_busy_one_passes_the_ask_on() {
        use futures::FutureExt;
        let table = Arc::new(Sheddable::default());
        let long = Duration::from_secs(3600);
        // Joined in this order: `oldest` idle since before the others.
        let oldest = member(&table);
        let busy = member(&table);
        let newer = member(&table);
        let _in_progress = busy.activity.begin(true);
        let heard = |m: &Member| m.expired(long, long).now_or_never();

        assert!(table.want_place());
        assert_eq!(heard(&busy), None, "a busy connection is never asked");
        assert_eq!(heard(&newer), None, "only the one idle longest is asked");
        assert_eq!(heard(&oldest), Some(Idle::AtCap));
        drop(oldest);

        // The next ask goes to `newer`; it starts a request before it hears it, so it stays
        // open and the ask passes on: with nobody else idle, to nobody.
        let late = member(&table);
        assert!(table.want_place());
        let started = newer.activity.begin(true);
        assert_eq!(
            heard(&newer),
            None,
            "a connection that started a request stays"
        );
        assert_eq!(heard(&late), Some(Idle::AtCap), "the ask passed on");
        drop(late);
        assert!(!table.want_place(), "nothing idle: nobody is asked");
        assert_eq!(heard(&newer), None, "busy: it keeps its place");
        // The place is still wanted: the first connection to go idle gives up its own, unasked.
        drop(started);
        assert_eq!(
            heard(&newer),
            Some(Idle::AtCap),
            "idle again: it gives up its place"
        );
        // Once a place is found, going idle closes nothing.
        let other = member(&table);
        let request = other.activity.begin(true);
        drop(request);
        assert_eq!(heard(&other), None, "no place wanted any more");
        assert!(table.want_place());
        table.place_found();
        assert_eq!(
            heard(&other),
            None,
            "the place was found before it heard the ask"
        );
    }

    #[tokio::test]
    async fn a_search_looks_at_a_bounded_part_of_a_large_table_and_goes_round_it() {
        use futures::FutureExt;
        let table = Arc::new(Sheddable::default());
        let long = Duration::from_secs(3600);
        let n = SEARCH_IDLE * 3 + 5;
        let members: Vec<Member> = (0..n).map(|_| member(&table)).collect();
        let mut asked = vec![false; n];
        for round in 0..n {
            assert!(table.want_place(), "round {round}: an idle one is asked");
            let heard: Vec<usize> = (0..n)
                .filter(|&i| !asked[i] && members[i].expired(long, long).now_or_never().is_some())
                .collect();
            assert_eq!(
                heard.len(),
                1,
                "round {round}: exactly one is asked: {heard:?}"
            );
            asked[heard[0]] = true;
        }
        assert!(
            asked.iter().all(|a| *a),
            "every idle connection is reached in turn"
        );
        assert!(!table.want_place(), "each is asked once");
    }

    /// The metrics table of docs/api.md names every reason.
    #[test]
    fn the_documented_metric_names_every_reason() {
        let doc = include_str!("../../docs/api.md");
        let row = doc
            .lines()
            .find(|l| l.starts_with("| `mcp_fanout_connections_closed_total"))
            .unwrap_or_else(|| panic!("docs/api.md has no row for connections_closed"));
        for why in Idle::ALL {
            assert!(
                row.contains(&format!("`{}`", why.as_str())),
                "{why:?}: {row}"
            );
        }
    }
}
