//! The scenarios: each one starts what it measures, drives it, and appends result rows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::clients::{Clients, Phase};
use crate::error::{BenchError, Result};
use crate::pgbench::{self, pgbench_outbox, pgbench_paced};
use crate::procstat::ProcSample;
use crate::progress;
use crate::sut::{Fanout, FanoutOpts, Published, Sut, Via, LISTEN_APP};

/// One line of results.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// `mcp-fanout` or `nchan`.
    pub system: String,
    /// What varies within the scenario.
    pub case: String,
    /// Measured values, in display order.
    pub values: Map<String, Value>,
}

impl Row {
    pub(crate) fn new(scenario: &str, system: &str, case: impl Into<String>) -> Row {
        Row {
            scenario: scenario.to_string(),
            system: system.to_string(),
            case: case.into(),
            values: Map::new(),
        }
    }

    pub(crate) fn set(&mut self, key: &str, v: impl Into<Value>) -> &mut Row {
        self.values.insert(key.to_string(), v.into());
        self
    }

    /// A number, if present.
    pub fn num(&self, key: &str) -> Option<f64> {
        self.values.get(key).and_then(Value::as_f64)
    }

    /// Whether the accounting found no loss, duplicate, disorder or disconnect.
    pub fn ok(&self) -> bool {
        self.values
            .get("ok")
            .and_then(Value::as_bool)
            .unwrap_or(true)
    }
}

/// Shared settings of a run.
pub struct Ctx {
    /// How to start mcp-fanout.
    pub fanout: FanoutOpts,
    /// Also measure nchan.
    pub nchan: bool,
    /// At least this many client processes.
    pub min_workers: usize,
    /// Rows so far.
    pub rows: Vec<Row>,
}

impl Ctx {
    fn systems(&self) -> Vec<&'static str> {
        if self.nchan {
            vec!["mcp-fanout", "nchan"]
        } else {
            vec!["mcp-fanout"]
        }
    }

    async fn start(&self, system: &str, replicas: usize) -> Result<Arc<Sut>> {
        progress(&format!("starting {system} ({replicas} replica(s))"));
        let sut = if system == "nchan" {
            Sut::nchan().await?
        } else {
            Sut::Fanout(Box::new(Fanout::start(&self.fanout, replicas).await?))
        };
        Ok(Arc::new(sut))
    }

    /// One mcp-fanout replica in memory mode, whatever the run's mode.
    async fn start_memory(&self) -> Result<Arc<Sut>> {
        progress("starting mcp-fanout (1 replica, memory mode)");
        let opts = FanoutOpts {
            memory: true,
            ..self.fanout.clone()
        };
        Ok(Arc::new(Sut::Fanout(Box::new(
            Fanout::start(&opts, 1).await?,
        ))))
    }

    pub(crate) fn push(&mut self, mut row: Row) {
        if self.fanout.memory && row.system == "mcp-fanout" {
            row.system = "mcp-fanout (memory mode)".to_string();
        }
        progress(&format!(
            "result: {} / {} / {}: {}",
            row.scenario,
            row.system,
            row.case,
            Value::Object(row.values.clone())
        ));
        self.rows.push(row);
    }
}

/// Opens `n` subscribers on `sut` and waits until the server counts them.
async fn subscribe(ctx: &Ctx, sut: &Sut, n: usize) -> Result<Clients> {
    let clients = Clients::for_subscribers(n, ctx.min_workers).await?;
    subscribe_with(clients, sut, n).await
}

/// [`subscribe`] with `clients` as given (e.g. [`Clients::resuming`]).
async fn subscribe_with(mut clients: Clients, sut: &Sut, n: usize) -> Result<Clients> {
    clients.connect(&sut.targets(), n).await?;
    match sut {
        Sut::Fanout(_) => sut.wait_subscribers(n, Duration::from_secs(120)).await?,
        Sut::Nchan(..) => {
            // nchan's channel info does not always count subscribers held by another worker
            // process: make sure with a warm-up event that every one of them is live.
            let _ = sut.wait_subscribers(n, Duration::from_secs(3)).await;
            const WARM_UP: u64 = u64::MAX / 2;
            clients.expect(1).await?;
            sut.publish_one(Via::Admin(0), WARM_UP, 0).await?;
            let phase = clients
                .collect(Duration::from_secs(60), crate::worker::mix(WARM_UP))
                .await?;
            if phase.report.complete != n {
                return Err(BenchError::Failed(format!(
                    "only {} of {n} nchan subscribers got the warm-up event",
                    phase.report.complete
                )));
            }
        }
    }
    Ok(clients)
}

/// Adds the loss / duplicate / order accounting of a phase to a row.
fn account(row: &mut Row, phase: &Phase, published: &Published, subscribers: usize) {
    let r = &phase.report;
    let ok = r.complete == subscribers
        && r.missing == 0
        && r.extra == 0
        && r.wrong_set == 0
        && r.order_violations == 0
        && r.closed == 0;
    row.set("events", published.count())
        .set("delivered", r.frames)
        .set("missing", r.missing)
        .set("duplicates", r.extra)
        .set("wrong_set", r.wrong_set)
        .set("out_of_order", r.order_violations)
        .set("disconnected", r.closed)
        .set("ok", ok);
    if let Some(e) = &r.close_error {
        if r.closed > 0 {
            row.set("disconnect_reason", e.clone());
        }
    }
}

fn latency(row: &mut Row, phase: &Phase) {
    let h = &phase.hist;
    if h.is_empty() {
        return;
    }
    row.set(
        "lat_p50_ms",
        round3(h.value_at_quantile(0.50) as f64 / 1000.0),
    )
    .set(
        "lat_p99_ms",
        round3(h.value_at_quantile(0.99) as f64 / 1000.0),
    )
    .set("lat_max_ms", round3(h.max() as f64 / 1000.0));
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn since_ms(later_ns: u64, earlier_ns: u64) -> f64 {
    round3(later_ns.saturating_sub(earlier_ns) as f64 / 1e6)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cpu_row(row: &mut Row, before: &ProcSample, after: &ProcSample, delivered: u64) {
    let cpu = after.since(before).cpu_us;
    row.set("server_cpu_ms", round1(cpu as f64 / 1000.0));
    if delivered > 0 {
        row.set("cpu_us_per_delivery", round3(cpu as f64 / delivered as f64));
    }
}

// ---------------------------------------------------------------------------------------------

/// `idle-memory`: RSS per idle SSE connection, then one publish that must reach every one.
pub async fn idle_memory(
    ctx: &mut Ctx,
    sizes: &[usize],
    replicas: usize,
    hold: Duration,
) -> Result<()> {
    for &size in sizes {
        for system in ctx.systems() {
            let replicas = if system == "nchan" { 1 } else { replicas };
            let sut = ctx.start(system, replicas).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = sut.sample()?;
            let started = Instant::now();
            let mut clients = subscribe(ctx, &sut, size).await?;
            let connect_s = started.elapsed().as_secs_f64();
            let hold_until = Instant::now() + hold.max(Duration::from_secs(2));
            let mut next_note = Instant::now() + Duration::from_secs(30);
            while Instant::now() < hold_until {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if Instant::now() >= next_note {
                    let have = sut.subscribers().await.unwrap_or(-1.0);
                    let s = sut.sample()?;
                    progress(&format!(
                        "  holding: {have} subscribers on {system}, RSS {} MiB, {:.0} s left",
                        s.rss_kb / 1024,
                        hold_until
                            .saturating_duration_since(Instant::now())
                            .as_secs_f64()
                    ));
                    next_note = Instant::now() + Duration::from_secs(30);
                }
            }
            let after = sut.sample()?;
            let still = sut.subscribers().await?;
            clients.expect(1).await?;
            let p = sut.burst(Via::Admin(0), 0, 1, 1, 1, 0).await?;
            let phase = clients.collect(Duration::from_secs(120), p.hash()).await?;
            let mut row = Row::new(
                "idle-memory",
                system,
                format!("{size} subscribers / {replicas} process(es)"),
            );
            let delta_kb = after.rss_kb.saturating_sub(before.rss_kb);
            row.set("subscribers", size)
                .set("processes", replicas)
                .set("held_s", round1(hold.as_secs_f64().max(2.0)))
                .set("connect_s", round1(connect_s))
                .set("server_count_after_hold", still)
                .set("rss_before_mib", round1(before.rss_kb as f64 / 1024.0))
                .set("rss_after_mib", round1(after.rss_kb as f64 / 1024.0))
                .set("kb_per_conn", round3(delta_kb as f64 / size as f64))
                .set(
                    "one_event_to_all_ms",
                    since_ms(phase.report.last_recv_ns, p.start_ns),
                );
            account(&mut row, &phase, &p, size);
            ctx.push(row);
            clients.close().await?;
        }
    }
    Ok(())
}

/// `fanout-burst`: `events` published back to back by `publishers` concurrent publishers to
/// `subs` subscribers on one process; server CPU per delivered event.
pub async fn fanout_burst(
    ctx: &mut Ctx,
    subs: usize,
    events: u64,
    publishers: usize,
    rounds: usize,
) -> Result<()> {
    for system in ctx.systems() {
        let sut = ctx.start(system, 1).await?;
        let mut clients = subscribe(ctx, &sut, subs).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut first = 0;
        for round in 1..=rounds.max(1) {
            clients.expect(events).await?;
            let before = sut.sample()?;
            let p = sut
                .burst(Via::Admin(0), first, events, publishers, 1, 0)
                .await?;
            first += events;
            let phase = clients.collect(Duration::from_secs(180), p.hash()).await?;
            let after = sut.sample()?;
            let mut row = Row::new(
                "fanout-burst",
                system,
                format!("{subs} subscribers, {events} events, round {round}"),
            );
            let span_ns = phase.report.last_recv_ns.saturating_sub(p.start_ns);
            row.set("subscribers", subs)
                .set("publishers", publishers)
                .set("publish_ms", since_ms(p.end_ns, p.start_ns))
                .set("last_delivery_ms", round3(span_ns as f64 / 1e6));
            if span_ns > 0 {
                row.set(
                    "deliveries_per_s",
                    (phase.report.frames as f64 / (span_ns as f64 / 1e9)).round(),
                );
            }
            cpu_row(&mut row, &before, &after, phase.report.frames);
            latency(&mut row, &phase);
            account(&mut row, &phase, &p, subs);
            ctx.push(row);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        clients.close().await?;
    }
    Ok(())
}

/// Where the CPU of a fan-out goes, over a whole series: the server's kernel share (stime over
/// utime + stime) and its kernel and user µs per delivery, and the client processes' µs per
/// delivery (they share the cores: the time to the last delivery includes theirs); and each
/// side's context switches per delivery (how often a writer or a reader slept and was woken).
fn split_cpu(row: &mut Row, server: &ProcSample, client: &ProcSample, frames: u64) {
    let Some(share) = server.kernel_share() else {
        return;
    };
    let per = |us: f64| round3(us / frames.max(1) as f64);
    let cpu = server.cpu_us as f64;
    row.set("server_kernel_share", round3(share))
        .set("server_kernel_us_per_delivery", per(cpu * share))
        .set("server_user_us_per_delivery", per(cpu * (1.0 - share)))
        .set("client_cpu_us_per_delivery", per(client.cpu_us as f64))
        .set("server_switches_per_delivery", per(server.switches as f64))
        .set("client_switches_per_delivery", per(client.switches as f64));
}

/// `single-event`: one event at a time to each size; time to the last delivery.
pub async fn single_event(ctx: &mut Ctx, sizes: &[usize], repeats: usize) -> Result<()> {
    for system in ctx.systems() {
        let sut = ctx.start(system, 1).await?;
        let mut n = 0;
        for &size in sizes {
            if let Sut::Fanout(f) = &*sut {
                f.refresh_marker().await?;
            }
            let mut clients = subscribe(ctx, &sut, size).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            // A mark to start a system-wide profile on (the connects are over).
            progress(&format!(
                "single-event: {system}, {size} subscribers connected, repeats start"
            ));
            let mut ttl = Vec::new();
            let mut cpu = Vec::new();
            let mut all_ok = true;
            let mut last_row = None;
            let mut merged = crate::worker::histogram()?;
            // Over every repeat: the server's and the clients' CPU, and the frames delivered.
            let (mut server, mut client, mut frames) =
                (ProcSample::default(), ProcSample::default(), 0u64);
            for _ in 0..repeats.max(1) {
                clients.expect(1).await?;
                let (before, client_before) = (sut.sample()?, clients.sample()?);
                let p = sut.burst(Via::Admin(0), n, 1, 1, 1, 0).await?;
                n += 1;
                let phase = clients.collect(Duration::from_secs(60), p.hash()).await?;
                let (after, client_after) = (sut.sample()?, clients.sample()?);
                ttl.push(since_ms(phase.report.last_recv_ns, p.start_ns));
                cpu.push(after.since(&before).cpu_us as f64 / phase.report.frames.max(1) as f64);
                server = server.plus(&after.since(&before));
                client = client.plus(&client_after.since(&client_before));
                frames += phase.report.frames;
                let mut r = Row::new("single-event", system, "");
                account(&mut r, &phase, &p, size);
                all_ok &= r.ok();
                merged
                    .add(&phase.hist)
                    .map_err(|e| BenchError::Failed(format!("merging histograms: {e}")))?;
                last_row = Some((r, phase));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let mut row = Row::new("single-event", system, format!("{size} subscribers"));
            let mut sorted = ttl.clone();
            let med = median(&mut sorted);
            row.set("subscribers", size)
                .set("repeats", repeats)
                .set("last_delivery_ms_median", med)
                .set(
                    "last_delivery_ms_min",
                    sorted.first().copied().unwrap_or(0.0),
                )
                .set(
                    "last_delivery_ms_max",
                    sorted.last().copied().unwrap_or(0.0),
                )
                .set("us_per_subscriber", round3(med * 1000.0 / size as f64))
                .set("cpu_us_per_delivery_median", round3(median(&mut cpu)));
            split_cpu(&mut row, &server, &client, frames);
            if let Some((r, mut phase)) = last_row {
                phase.hist = merged;
                latency(&mut row, &phase);
                for k in ["missing", "duplicates", "out_of_order", "disconnected"] {
                    if let Some(v) = r.values.get(k) {
                        row.set(k, v.clone());
                    }
                }
            }
            row.set("ok", all_ok);
            ctx.push(row);
            clients.close().await?;
        }
    }
    Ok(())
}

/// `cross-replica`: subscribers spread over `replicas`, `rate` events/s published on replica 0
/// (or through SQL) for `duration`; publish→deliver latency.
pub async fn cross_replica(
    ctx: &mut Ctx,
    replicas: usize,
    per_replica: &[usize],
    rate: f64,
    duration: Duration,
    via: Via,
) -> Result<()> {
    let sut = ctx.start("mcp-fanout", replicas).await?;
    let mut n = 0;
    for &k in per_replica {
        if let Sut::Fanout(f) = &*sut {
            f.refresh_marker().await?;
        }
        let subs = k * replicas;
        let mut clients = subscribe(ctx, &sut, subs).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress(&format!(
            "publishing {rate}/s for {} s to {replicas} × {k}",
            duration.as_secs()
        ));
        let before = sut.sample()?;
        let p = sut.at_rate(via, n, rate, duration).await?;
        n += p.count();
        clients.expect(p.count()).await?;
        let phase = clients.collect(Duration::from_secs(60), p.hash()).await?;
        let after = sut.sample()?;
        let mut row = Row::new(
            "cross-replica",
            "mcp-fanout",
            format!("{replicas} × {k} subscribers, {rate}/s"),
        );
        row.set("subscribers", subs)
            .set("via", format!("{via:?}"))
            .set("duration_s", duration.as_secs());
        latency(&mut row, &phase);
        let mut req = p.request_us.clone();
        req.sort_unstable();
        if !req.is_empty() {
            row.set("publish_p50_ms", round3(req[req.len() / 2] as f64 / 1000.0));
        }
        cpu_row(&mut row, &before, &after, phase.report.frames);
        account(&mut row, &phase, &p, subs);
        ctx.push(row);
        clients.close().await?;
    }
    Ok(())
}

/// `publish-throughput`: single events from `publishers` concurrent HTTP publishers, then
/// batches, each for `duration`, to `subs` subscribers; then `pgbench -c 4` running the plain
/// INSERT + pg_notify outbox on the same server.
pub async fn publish_throughput(
    ctx: &mut Ctx,
    subs: usize,
    publishers: usize,
    batch: u64,
    batch_publishers: usize,
    pad: usize,
    duration: Duration,
) -> Result<()> {
    let sut = ctx.start("mcp-fanout", 1).await?;
    // The batched case publishes faster than the clients read (100 subscribers × ~30k events/s on
    // two shared cores): they fall behind by ~30 s, where the server ends a lagging subscriber's
    // stream cleanly (`FANOUT_MAX_LAG_SECS`) and it resumes from the log. The clients do that too,
    // so the row counts every event at every subscriber across the resumes (`resumed`).
    let clients = Clients::for_subscribers(subs, ctx.min_workers)
        .await?
        .resuming();
    let mut clients = subscribe_with(clients, &sut, subs).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut first = 0;
    let cases = [
        (
            format!("single events, {publishers} HTTP publishers"),
            publishers,
            1,
            0,
        ),
        (
            format!("batches of {batch} × {pad}-byte params, {batch_publishers} publishers"),
            batch_publishers,
            batch,
            pad,
        ),
    ];
    for (case, pubs, b, pad) in cases {
        progress(&format!(
            "publish-throughput: {case} for {} s",
            duration.as_secs()
        ));
        let before = sut.sample()?;
        let p = sut
            .for_duration(Via::Admin(0), first, duration, pubs, b, pad)
            .await?;
        first += p.count() + 1_000_000;
        clients.expect(p.count()).await?;
        let phase = clients.collect(Duration::from_secs(300), p.hash()).await?;
        let after = sut.sample()?;
        let publish_s = p.end_ns.saturating_sub(p.start_ns) as f64 / 1e9;
        let deliver_s = phase.report.last_recv_ns.saturating_sub(p.start_ns) as f64 / 1e9;
        let mut row = Row::new("publish-throughput", "mcp-fanout", case);
        row.set("subscribers", subs)
            .set(
                "committed_per_s",
                (p.count() as f64 / publish_s.max(1e-9)).round(),
            )
            .set(
                "delivered_events_per_s",
                (p.count() as f64 / deliver_s.max(1e-9)).round(),
            )
            .set(
                "last_delivery_after_publish_end_ms",
                since_ms(phase.report.last_recv_ns, p.end_ns),
            );
        let mut req = p.request_us.clone();
        req.sort_unstable();
        if !req.is_empty() {
            row.set("request_p50_ms", round3(req[req.len() / 2] as f64 / 1000.0))
                .set(
                    "request_p99_ms",
                    round3(req[req.len() * 99 / 100] as f64 / 1000.0),
                );
        }
        cpu_row(&mut row, &before, &after, phase.report.frames);
        latency(&mut row, &phase);
        account(&mut row, &phase, &p, subs);
        row.set("resumed", phase.report.resumed);
        ctx.push(row);
    }
    clients.close().await?;
    if let Sut::Fanout(f) = &*sut {
        if let Some(pg) = &f.pg {
            let tps = pgbench_outbox(pg.server(), &f.db, duration).await?;
            let mut row = Row::new(
                "publish-throughput",
                "pgbench",
                "INSERT + pg_notify outbox, pgbench -c 4 -j 2, one listener",
            );
            row.set("committed_per_s", tps.round());
            ctx.push(row);
        }
    }
    Ok(())
}

/// `publish-latency`: where a lone publish's time goes, at `rate`/s with no subscriber (nothing
/// else runs): the same client's `GET /healthz` and HTTP publish in memory mode (no database:
/// HTTP, validation, the broadcaster) and the HTTP publish in Postgres mode (one replica: plus the
/// writer, the transaction, the commit); then, on the same server and at the same rate, one
/// pgbench client running `SELECT mcp_fanout.publish(…)` (the same transaction without HTTP and
/// without the replica), the plain outbox, and the transaction's parts each alone
/// ([`pgbench::PARTS`]).
pub async fn publish_latency(ctx: &mut Ctx, rate: f64, duration: Duration) -> Result<()> {
    let row = |system: &str, case: &str, lat_us: &mut Vec<u64>| {
        lat_us.sort_unstable();
        let at = |q: f64| {
            let i = ((lat_us.len() as f64 * q) as usize).min(lat_us.len().saturating_sub(1));
            round3(lat_us.get(i).copied().unwrap_or(0) as f64 / 1000.0)
        };
        let mut row = Row::new("publish-latency", system, case);
        row.set("rate", rate)
            .set("publishes", lat_us.len())
            .set("p50_ms", at(0.5))
            .set("p90_ms", at(0.9))
            .set("p99_ms", at(0.99))
            .set("ok", !lat_us.is_empty());
        row
    };
    let memory = ctx.start_memory().await?;
    let mut p = memory.health_at_rate(rate, duration).await?;
    ctx.push(row(
        "mcp-fanout (memory mode)",
        "HTTP GET /healthz (the client's round trip, nothing published)",
        &mut p.request_us,
    ));
    let mut p = memory.at_rate(Via::Admin(0), 0, rate, duration).await?;
    ctx.push(row(
        "mcp-fanout (memory mode)",
        "HTTP publish, no database",
        &mut p.request_us,
    ));
    drop(memory);
    let sut = ctx.start("mcp-fanout", 1).await?;
    let mut p = sut.at_rate(Via::Admin(0), 0, rate, duration).await?;
    ctx.push(row(
        "mcp-fanout",
        "HTTP publish, Postgres, 1 replica",
        &mut p.request_us,
    ));
    let Sut::Fanout(f) = &*sut else {
        return Ok(());
    };
    let Some(pg) = f.pg.as_ref() else {
        return Ok(());
    };
    let server = pg.server();
    let publish = "SELECT mcp_fanout.publish('notifications/tools/list_changed', '{\"n\":1}'::jsonb, NULL, NULL);\n";
    let mut lat = pgbench_paced(server, &f.db, rate, duration, publish).await?;
    ctx.push(row(
        "pgbench",
        "SELECT mcp_fanout.publish(…), 1 client (the replica listening)",
        &mut lat,
    ));
    pgbench::parts_tables(server, &f.db).await?;
    let mut lat = pgbench_paced(server, &f.db, rate, duration, pgbench::OUTBOX).await?;
    ctx.push(row(
        "pgbench",
        "outbox INSERT + pg_notify, 1 client",
        &mut lat,
    ));
    for part in &pgbench::PARTS {
        let listening = match part.listen {
            Some(channel) => Some(pgbench::Listening::on(server, &f.db, channel).await?),
            None => None,
        };
        let mut lat = pgbench_paced(server, &f.db, rate, duration, part.script).await?;
        drop(listening);
        ctx.push(row("pgbench (a part alone)", part.case, &mut lat));
    }
    Ok(())
}

/// `catch-up`: for each `(events, per_replica)` case, `replicas` replicas with `per_replica`
/// subscribers each; the LISTEN backends are terminated over and over while `events` are
/// published; then the time from the reconnect to the last delivery.
pub async fn catch_up(ctx: &mut Ctx, replicas: usize, cases: &[(u64, usize)]) -> Result<()> {
    for &(events, per) in cases {
        let sut = ctx.start("mcp-fanout", replicas).await?;
        let Sut::Fanout(f) = &*sut else {
            return Err(BenchError::Failed("catch-up needs mcp-fanout".to_string()));
        };
        let pg =
            f.pg.as_ref()
                .ok_or_else(|| BenchError::Failed("catch-up needs Postgres mode".to_string()))?;
        let server = pg.server().clone();
        let db = f.db.clone();
        let subs = per * replicas;
        let mut clients = subscribe(ctx, &sut, subs).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let reconnects_before = f.metric_sum("mcp_fanout_listen_reconnects_total").await?;
        clients.expect(events).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let terminator = {
            let stop = Arc::clone(&stop);
            let server = server.clone();
            let db = db.clone();
            tokio::spawn(async move {
                let mut kills = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    kills += server.terminate_app(&db, LISTEN_APP).await.unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                kills
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress(&format!(
            "catch-up: publishing {events} events while terminating the LISTEN backends"
        ));
        let p = sut.burst(Via::Admin(0), 0, events, 2, 1000, 0).await?;
        stop.store(true, Ordering::Relaxed);
        let kills = terminator
            .await
            .map_err(|e| BenchError::Failed(format!("terminator task: {e}")))?;
        let outage_end_ns = crate::worker::now_ns();
        // The reconnect: when every replica's LISTEN backend is back, and when the last started.
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.backends(&db, LISTEN_APP).await? < replicas {
            if Instant::now() >= deadline {
                return Err(BenchError::Timeout(
                    "LISTEN connections to come back".to_string(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = server
            .scalar(
                &db,
                &format!(
                    "SELECT (extract(epoch FROM max(backend_start)) * 1e9)::bigint::text FROM pg_stat_activity \
                     WHERE datname = '{db}' AND application_name = '{LISTEN_APP}'"
                ),
            )
            .await?
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(outage_end_ns);
        let phase = clients.collect(Duration::from_secs(180), p.hash()).await?;
        let reconnects =
            f.metric_sum("mcp_fanout_listen_reconnects_total").await? - reconnects_before;
        let dropped = f.metric_sum("mcp_fanout_subscribers_dropped_total").await?;
        let reconnect_ns = started.max(outage_end_ns.min(started));
        let mut row = Row::new(
            "catch-up",
            "mcp-fanout",
            format!("{events} events, {replicas} × {per} subscribers"),
        );
        row.set("subscribers", subs)
            .set(
                "publish_s",
                round3(p.end_ns.saturating_sub(p.start_ns) as f64 / 1e9),
            )
            .set("listen_terminations", kills)
            .set("listen_reconnects", reconnects)
            .set(
                "last_delivery_after_reconnect_s",
                round3(phase.report.last_recv_ns.saturating_sub(reconnect_ns) as f64 / 1e9),
            )
            .set(
                "last_delivery_after_publish_end_s",
                round3(phase.report.last_recv_ns.saturating_sub(p.end_ns) as f64 / 1e9),
            )
            .set("server_dropped_subscribers", dropped);
        latency(&mut row, &phase);
        account(&mut row, &phase, &p, subs);
        ctx.push(row);
        clients.close().await?;
    }
    Ok(())
}

/// `coalesce-burst`: `events` list_changed (the bench's event method) published back to back by
/// `publishers` to `subs` subscribers on one replica, once with coalescing off and once with
/// `FANOUT_COALESCE_MS=window_ms`: frames written and server CPU. With coalescing on, every
/// subscriber must end with the newest event, ids increasing, none disconnected.
pub async fn coalesce_burst(
    ctx: &mut Ctx,
    subs: usize,
    events: u64,
    publishers: usize,
    window_ms: u64,
) -> Result<()> {
    for window in [0, window_ms] {
        let mut opts = ctx.fanout.clone();
        opts.env.retain(|(k, _)| k != "FANOUT_COALESCE_MS");
        opts.env
            .push(("FANOUT_COALESCE_MS".to_string(), window.to_string()));
        progress(&format!(
            "starting mcp-fanout (1 replica, FANOUT_COALESCE_MS={window})"
        ));
        let sut = Arc::new(Sut::Fanout(Box::new(Fanout::start(&opts, 1).await?)));
        let mut clients = subscribe(ctx, &sut, subs).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        clients.expect(events).await?;
        let before = sut.sample()?;
        let p = sut
            .burst(Via::Admin(0), 0, events, publishers, 1, 0)
            .await?;
        if window > 0 {
            // Concurrent publishers: the newest event is the one with the highest id, whatever
            // its publish index. (Workers count frames from the start; this only sets the goal.)
            let newest = p
                .keys
                .iter()
                .zip(&p.ns)
                .max_by_key(|(key, _)| **key)
                .map(|(_, n)| *n);
            clients.expect_coalesced(events, newest).await?;
        }
        let phase = clients.collect(Duration::from_secs(300), p.hash()).await?;
        let after = sut.sample()?;
        let coalesced = match &*sut {
            Sut::Fanout(f) => f.metric_sum("mcp_fanout_events_coalesced_total").await?,
            Sut::Nchan(..) => 0.0,
        };
        let state = if window == 0 {
            "off".to_string()
        } else {
            format!("on ({window} ms)")
        };
        let mut row = Row::new(
            "coalesce-burst",
            "mcp-fanout",
            format!("{subs} subscribers, {events} list_changed, coalescing {state}"),
        );
        let span_ns = phase.report.last_recv_ns.saturating_sub(p.start_ns);
        row.set("subscribers", subs)
            .set("publishers", publishers)
            .set("publish_ms", since_ms(p.end_ns, p.start_ns))
            .set("last_delivery_ms", round3(span_ns as f64 / 1e6))
            .set("frames_written", phase.report.frames)
            .set(
                "frames_per_subscriber",
                round3(phase.report.frames as f64 / subs.max(1) as f64),
            )
            .set("coalesced", coalesced);
        cpu_row(&mut row, &before, &after, phase.report.frames);
        // Off: every event once, in order. On: the newest at every subscriber (else counted
        // missing), in order.
        account(&mut row, &phase, &p, subs);
        ctx.push(row);
        clients.close().await?;
    }
    Ok(())
}

/// Idle subscribers of the smoke run's memory guard, and the RSS each may cost at most. Memory,
/// not timing: a stream that keeps hyper's connection buffers (19.5 KB) or its finished task
/// (7.2 KB) alive fails it; today's ~3.5 KB passes with room for allocator noise.
const SMOKE_IDLE_SUBSCRIBERS: usize = 3000;
const SMOKE_IDLE_MAX_KB: f64 = 6.0;

/// `smoke`: tiny sizes, Postgres mode (the kit's fast cluster unless told otherwise) and memory
/// mode; asserts zero loss, duplicates and disorder, and bounds idle memory per subscriber;
/// returns (passed, failed).
pub async fn smoke(ctx: &mut Ctx, replicas: usize, subs: usize) -> Result<(usize, usize)> {
    let mut passed = 0;
    let mut failed = 0;
    let mut tally = |ctx: &mut Ctx, row: Row| {
        if row.ok() {
            passed += 1;
        } else {
            failed += 1;
        }
        ctx.push(row);
    };
    // Postgres mode.
    {
        let sut = ctx.start("mcp-fanout", replicas).await?;
        let mut clients = subscribe(ctx, &sut, subs).await?;
        let mut first = 0;
        let steps: [(&str, Via, u64, usize, u64); 3] = [
            (
                "postgres: 40 single events, 4 publishers on every replica",
                Via::Spread,
                40,
                4,
                1,
            ),
            ("postgres: 2 batches of 20", Via::Admin(1), 40, 2, 20),
            ("postgres: 20 events through SQL", Via::Sql, 20, 1, 1),
        ];
        for (case, via, count, pubs, batch) in steps {
            clients.expect(count).await?;
            let p = sut.burst(via, first, count, pubs, batch, 0).await?;
            first += count;
            let phase = clients.collect(Duration::from_secs(30), p.hash()).await?;
            let mut row = Row::new("smoke", "mcp-fanout", case);
            latency(&mut row, &phase);
            account(&mut row, &phase, &p, subs);
            tally(ctx, row);
        }
        // A LISTEN outage while publishing.
        if let Sut::Fanout(f) = &*sut {
            if let Some(pg) = &f.pg {
                clients.expect(50).await?;
                let server = pg.server().clone();
                let db = f.db.clone();
                server.terminate_app(&db, LISTEN_APP).await?;
                let p = sut.burst(Via::Admin(0), first, 50, 1, 10, 0).await?;
                server.terminate_app(&db, LISTEN_APP).await?;
                let phase = clients.collect(Duration::from_secs(30), p.hash()).await?;
                let mut row = Row::new(
                    "smoke",
                    "mcp-fanout",
                    "postgres: 50 events across LISTEN terminations",
                );
                latency(&mut row, &phase);
                account(&mut row, &phase, &p, subs);
                tally(ctx, row);
            }
        }
        clients.close().await?;
    }
    // Memory mode.
    {
        let sut = ctx.start_memory().await?;
        let mut clients = subscribe(ctx, &sut, subs).await?;
        let mut first = 0;
        for (case, count, pubs, batch) in [
            (
                "memory: 60 single events, 4 publishers",
                60u64,
                4usize,
                1u64,
            ),
            ("memory: 2 batches of 20", 40, 2, 20),
        ] {
            clients.expect(count).await?;
            let p = sut
                .burst(Via::Admin(0), first, count, pubs, batch, 0)
                .await?;
            first += count;
            let phase = clients.collect(Duration::from_secs(30), p.hash()).await?;
            let mut row = Row::new("smoke", "mcp-fanout", case);
            latency(&mut row, &phase);
            account(&mut row, &phase, &p, subs);
            tally(ctx, row);
        }
        clients.close().await?;
    }
    // Idle memory per subscriber, on a fresh memory-mode replica.
    {
        let sut = ctx.start_memory().await?;
        let before = sut.sample()?;
        let mut idle = subscribe(ctx, &sut, SMOKE_IDLE_SUBSCRIBERS).await?;
        let after = sut.sample()?;
        idle.expect(1).await?;
        let p = sut.burst(Via::Admin(0), 0, 1, 1, 1, 0).await?;
        let phase = idle.collect(Duration::from_secs(30), p.hash()).await?;
        let kb = after.rss_kb.saturating_sub(before.rss_kb) as f64 / SMOKE_IDLE_SUBSCRIBERS as f64;
        let mut row = Row::new(
            "smoke",
            "mcp-fanout",
            format!(
                "memory: {SMOKE_IDLE_SUBSCRIBERS} idle subscribers, ≤ {SMOKE_IDLE_MAX_KB} KB each"
            ),
        );
        row.set("kb_per_conn", round3(kb));
        account(&mut row, &phase, &p, SMOKE_IDLE_SUBSCRIBERS);
        if kb > SMOKE_IDLE_MAX_KB {
            row.set("ok", false);
        }
        tally(ctx, row);
        idle.close().await?;
    }
    Ok((passed, failed))
}
