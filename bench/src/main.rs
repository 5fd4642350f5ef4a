//! `fanout-bench`: the load generator for mcp-fanout. Each scenario is one subcommand; it starts
//! what it measures (a throwaway Postgres and N replicas of the release binary, or nchan) or
//! targets given URLs, opens SSE subscribers over several client processes (this executable,
//! re-run as `fanout-bench worker`) and `127.0.0.x` source addresses, publishes, and accounts
//! for every delivery. Progress goes to stderr, a table to stdout, JSON to `--json <file>`.

mod clients;
mod error;
mod hyper_floor;
mod lean_floor;
mod nchan;
mod pg;
mod pgbench;
mod procstat;
mod proxy;
mod report;
mod scenarios;
mod sse;
mod sut;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::{BenchError, Result};
use crate::pg::Durability;
use crate::scenarios::Ctx;
use crate::sut::{find_binary, FanoutOpts, Via};

/// Prints a progress line to stderr, with the time since start.
pub fn progress(msg: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    eprintln!("[bench {:>7.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// `12.3 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Raises the soft open-file limit to the hard one; returns (soft, hard).
pub fn raise_fd_limit() -> (u64, u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let hard = rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(_, h)| h)
                .unwrap_or(soft);
            (soft, hard)
        }
        Err(_) => (0, 0),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "fanout-bench",
    about = "Load generator for mcp-fanout: one subcommand per scenario (see BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Compare {
    Nchan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PublishVia {
    Admin,
    Sql,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// The mcp-fanout binary (default: target/release/mcp-fanout next to this executable or in
    /// the workspace).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Measure running replicas at these base URLs instead of starting any (repeatable).
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Admin bearer token for --url targets.
    #[arg(long)]
    token: Option<String>,
    /// Use this Postgres (superuser URL; a fresh database is created) instead of starting one.
    #[arg(long)]
    database_url: Option<String>,
    /// Durability of the Postgres the bench starts: `on` (fsync and synchronous_commit on: the
    /// headline setting; default except for `smoke`) or `off` (the test kit's fast cluster).
    #[arg(long, value_enum)]
    durability: Option<Durability>,
    /// Run mcp-fanout in memory mode (no database, one replica).
    #[arg(long)]
    memory: bool,
    /// Extra environment for the replicas, KEY=VALUE (repeatable).
    #[arg(long = "env")]
    env: Vec<String>,
    /// Also measure nchan in the same run (idle-memory, fanout-burst, single-event).
    #[arg(long, value_enum)]
    compare: Option<Compare>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// At least this many client processes (default: one per 10,000 subscribers).
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn case(p: &str) -> std::result::Result<(u64, usize), String> {
    let (e, k) = p
        .split_once(':')
        .ok_or_else(|| format!("{p}: expected EVENTS:PER_REPLICA"))?;
    Ok((
        e.trim().parse().map_err(|x| format!("{e}: {x}"))?,
        k.trim().parse().map_err(|x| format!("{k}: {x}"))?,
    ))
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// RSS per idle SSE connection (5k / 10k / 19k on one replica by default; `--replicas 6
    /// --subscribers 100000 --hold-secs 600` for the 100k run), then one publish to all.
    IdleMemory {
        #[command(flatten)]
        common: Common,
        /// Subscriber counts, one run each.
        #[arg(long, value_delimiter = ',', default_value = "5000,10000,19000")]
        sizes: Vec<usize>,
        /// One size (overrides --sizes).
        #[arg(long)]
        subscribers: Option<usize>,
        /// Replicas the subscribers are spread over.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// How long the connections stay idle before the RSS sample and the publish.
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
    },
    /// 50 events published back to back by 32 concurrent publishers to 19k subscribers on one
    /// replica: server CPU per delivered event.
    FanoutBurst {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 19_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 50)]
        events: u64,
        #[arg(long, default_value_t = 32)]
        publishers: usize,
        /// Bursts measured (one row each).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// 1,000 list_changed published back to back by 32 publishers to 10k subscribers on one
    /// replica, coalescing off and on (`FANOUT_COALESCE_MS`): frames written and server CPU.
    CoalesceBurst {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 1000)]
        events: u64,
        #[arg(long, default_value_t = 32)]
        publishers: usize,
        /// The coalescing window of the "on" run, ms.
        #[arg(long, default_value_t = 100)]
        window_ms: u64,
    },
    /// One event at a time to 1k / 5k / 19k subscribers on one replica: time to the last delivery.
    SingleEvent {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,19000")]
        sizes: Vec<usize>,
        /// Events per size (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
    /// Subscribers spread over 3 replicas, 10 events/s published on one: publish→deliver latency.
    CrossReplica {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Subscribers per replica, one run each.
        #[arg(long, value_delimiter = ',', default_value = "100,2000")]
        per_replica: Vec<usize>,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Publish through the admin endpoint of replica 0, or through SQL.
        #[arg(long, value_enum, default_value = "admin")]
        via: PublishVia,
    },
    /// Where a lone publish's time goes, at 10/s with no subscriber: the same client's GET
    /// /healthz and HTTP publish in memory mode (no database), the HTTP publish in Postgres mode
    /// (one replica), `SELECT mcp_fanout.publish(…)` from pgbench, pgbench's plain INSERT +
    /// pg_notify outbox, and the transaction's parts each alone (a round trip, a commit, the
    /// outbox as one statement with and without a listener, the log's head UPDATE + INSERT without
    /// and with its NOTIFY trigger), one client each at the same rate.
    PublishLatency {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        duration_secs: u64,
    },
    /// Single events from 32 concurrent HTTP publishers, then batches of 1000 × 200-byte params,
    /// to 100 subscribers; and `pgbench -c 4` running the plain INSERT + pg_notify outbox. The
    /// subscribers resume as SSE clients do (after `retry:`, with `Last-Event-ID`) when the server
    /// ends a lagging stream; every event is still counted at every subscriber (`resumed`: how
    /// many times).
    PublishThroughput {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 32)]
        publishers: usize,
        #[arg(long, default_value_t = 1000)]
        batch: u64,
        #[arg(long, default_value_t = 4)]
        batch_publishers: usize,
        /// Bytes of padding in each batched event's params.
        #[arg(long, default_value_t = 200)]
        pad: usize,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
    },
    /// LISTEN outage while events are published (the backends are terminated over and over):
    /// time from the reconnect to the last delivery.
    CatchUp {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// EVENTS:SUBSCRIBERS_PER_REPLICA, one run each.
        #[arg(long, value_parser = case, value_delimiter = ',', default_value = "10000:1000,100000:10")]
        cases: Vec<(u64, usize)>,
    },
    /// Seconds, tiny sizes: replicas in Postgres mode and memory mode; exits non-zero on any loss,
    /// duplicate or disorder.
    Smoke {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        #[arg(long, default_value_t = 48)]
        subscribers: usize,
    },
    /// `tools/call` through a stateless FastMCP upstream (Python SDK 1.x, JSON answers): direct,
    /// through mcp-fanout in proxy mode and through nginx `proxy_pass`, loaded by wrk: added
    /// p50/p99, proxy CPU per request, requests/s. Needs wrk and `./scripts/e2e-setup py1`.
    ProxyOverhead {
        #[command(flatten)]
        common: Common,
        /// The upstream: the FastMCP server (python), or nginx answering at once (static: the
        /// proxy is the bottleneck, for its CPU per request).
        #[arg(long, value_enum, default_value = "python")]
        upstream: proxy::UpstreamKind,
        /// Python with the MCP SDK 1.x and uvicorn (default: target/e2e/py1/bin/python).
        #[arg(long)]
        python: Option<PathBuf>,
        /// wrk connections, one load each (threads: 2, or 1 for one connection).
        #[arg(long, value_delimiter = ',', default_value = "8,1")]
        connections: Vec<usize>,
        /// Seconds per load.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Systems, in order (direct first: the added latency is against it).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "direct,mcp-fanout,nginx,hyper-floor,mcp-fanout-session"
        )]
        systems: Vec<String>,
        /// Times the whole set is measured (one row each).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Each wrk connection waits this long before each request: a set rate (connections /
        /// pace), so the proxies are measured at the same requests/s whatever the upstream, each
        /// request arriving at a process that had gone to sleep (as behind a slow upstream).
        #[arg(long)]
        pace_ms: Option<u64>,
    },
    /// Runs every scenario with its defaults (and nchan) and writes BENCHMARKS.md; or renders it
    /// from saved `--json` results with `--from`.
    Report {
        #[command(flatten)]
        common: Common,
        /// Where to write the markdown.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
        /// Render from these saved JSON results instead of running (repeatable).
        #[arg(long)]
        from: Vec<PathBuf>,
        /// Keep the results part of the existing `--out` file and render only the notes
        /// (`bench/notes.md`) after it again: for a change to the notes when the saved results
        /// are not at hand.
        #[arg(long, conflicts_with = "from")]
        notes_only: bool,
        /// Skip the 100k-over-6-replicas idle run.
        #[arg(long)]
        skip_100k: bool,
        /// How long the 100k connections are held.
        #[arg(long, default_value_t = 600)]
        hold_100k_secs: u64,
    },
    /// (internal) A client process, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
    /// (internal) `proxy-overhead`'s `hyper-floor` system: a bare hyper proxy to UPSTREAM.
    #[command(hide = true)]
    HyperFloor { upstream: String },
    /// (internal) `proxy-overhead`'s `lean-floor` system: a proxy with no HTTP library to UPSTREAM.
    #[command(hide = true)]
    LeanFloor { upstream: String },
    /// (internal) `proxy-overhead`'s `lean-floor-http`: `lean-floor` through the `http` types.
    #[command(hide = true)]
    LeanFloorHttp { upstream: String },
}

fn fanout_opts(c: &Common, default_durability: Durability) -> Result<FanoutOpts> {
    let binary = if c.urls.is_empty() {
        find_binary(c.binary.as_deref())?
    } else {
        c.binary.clone().unwrap_or_default()
    };
    let env = c
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| BenchError::Failed(format!("--env {kv}: expected KEY=VALUE")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(FanoutOpts {
        binary,
        urls: c.urls.clone(),
        token: c.token.clone(),
        database_url: c.database_url.clone(),
        durability: c.durability.unwrap_or(default_durability),
        memory: c.memory,
        env,
    })
}

fn ctx(c: &Common, default_durability: Durability) -> Result<Ctx> {
    Ok(Ctx {
        fanout: fanout_opts(c, default_durability)?,
        nchan: c.compare == Some(Compare::Nchan),
        min_workers: c.workers.max(1),
        rows: Vec::new(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Worker) {
        return match worker::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fanout-bench worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (soft, hard) = raise_fd_limit();
    progress(&format!("open-file limit: soft {soft}, hard {hard}"));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fanout-bench: cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fanout-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> Result<ExitCode> {
    let (mut ctx, json, outcome) = match cmd {
        Cmd::Worker => return Ok(ExitCode::SUCCESS),
        Cmd::HyperFloor { upstream } => {
            hyper_floor::serve(&upstream).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::LeanFloor { upstream } => {
            lean_floor::serve(&upstream, false).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::LeanFloorHttp { upstream } => {
            lean_floor::serve(&upstream, true).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::IdleMemory {
            common,
            sizes,
            subscribers,
            replicas,
            hold_secs,
        } => {
            let mut ctx = ctx(&common, Durability::On)?;
            let sizes = subscribers.map(|s| vec![s]).unwrap_or(sizes);
            let r =
                scenarios::idle_memory(&mut ctx, &sizes, replicas, Duration::from_secs(hold_secs))
                    .await;
            (ctx, common.json, r)
        }
        Cmd::FanoutBurst {
            common,
            subscribers,
            events,
            publishers,
            rounds,
        } => {
            let mut ctx = ctx(&common, Durability::On)?;
            let r =
                scenarios::fanout_burst(&mut ctx, subscribers, events, publishers, rounds).await;
            (ctx, common.json, r)
        }
        Cmd::CoalesceBurst {
            common,
            subscribers,
            events,
            publishers,
            window_ms,
        } => {
            let mut ctx = ctx(&common, Durability::On)?;
            let r = scenarios::coalesce_burst(&mut ctx, subscribers, events, publishers, window_ms)
                .await;
            (ctx, common.json, r)
        }
        Cmd::SingleEvent {
            common,
            sizes,
            repeats,
        } => {
            let mut ctx = ctx(&common, Durability::On)?;
            let r = scenarios::single_event(&mut ctx, &sizes, repeats).await;
            (ctx, common.json, r)
        }
        Cmd::CrossReplica {
            common,
            replicas,
            per_replica,
            rate,
            duration_secs,
            via,
        } => {
            let mut ctx = ctx(&common, Durability::On)?;
            let via = match via {
                PublishVia::Admin => Via::Admin(0),
                PublishVia::Sql => Via::Sql,
            };
            let r = scenarios::cross_replica(
                &mut ctx,
                replicas,
                &per_replica,
                rate,
                Duration::from_secs(duration_secs),
                via,
            )
            .await;
            (ctx, common.json, r)
        }
        Cmd::PublishLatency {
            common,
            rate,
            duration_secs,
        } => {
            let mut ctx = ctx(&common, Durability::On)?;
            let r = scenarios::publish_latency(&mut ctx, rate, Duration::from_secs(duration_secs))
                .await;
            (ctx, common.json, r)
        }
        Cmd::PublishThroughput {
            common,
            subscribers,
            publishers,
            batch,
            batch_publishers,
            pad,
            duration_secs,
        } => {
            let mut ctx = ctx(&common, Durability::On)?;
            let r = scenarios::publish_throughput(
                &mut ctx,
                subscribers,
                publishers,
                batch,
                batch_publishers,
                pad,
                Duration::from_secs(duration_secs),
            )
            .await;
            (ctx, common.json, r)
        }
        Cmd::CatchUp {
            common,
            replicas,
            cases,
        } => {
            let mut ctx = ctx(&common, Durability::On)?;
            let r = scenarios::catch_up(&mut ctx, replicas, &cases).await;
            (ctx, common.json, r)
        }
        Cmd::Smoke {
            common,
            replicas,
            subscribers,
        } => {
            let mut ctx = ctx(&common, Durability::Off)?;
            let r = scenarios::smoke(&mut ctx, replicas, subscribers).await;
            report::print_table(&ctx.rows);
            if let Some(path) = &common.json {
                report::write_json(path, &ctx.rows, &[], "").await?;
            }
            return match r {
                Ok((passed, failed)) => {
                    println!("{passed} passed, {failed} failed");
                    Ok(if failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Err(e) => {
                    println!("smoke run failed: {e}");
                    println!("0 passed, 1 failed");
                    Ok(ExitCode::FAILURE)
                }
            };
        }
        Cmd::ProxyOverhead {
            common,
            upstream,
            python,
            connections,
            duration_secs,
            systems,
            rounds,
            pace_ms,
        } => {
            let mut ctx = ctx(&common, Durability::On)?;
            let mut run = proxy_run(
                upstream,
                python,
                &connections,
                duration_secs,
                systems,
                rounds,
            )?;
            run.pace_ms = pace_ms;
            let r = proxy::proxy_overhead(&mut ctx, &run).await;
            (ctx, common.json, r)
        }
        Cmd::Report {
            common,
            out,
            from,
            notes_only,
            skip_100k,
            hold_100k_secs,
        } => {
            if notes_only {
                return report::rerender_notes(&out).await;
            }
            return report::report(
                &common_for_report(&common)?,
                &common,
                out,
                from,
                skip_100k,
                hold_100k_secs,
            )
            .await;
        }
    };
    report::print_table(&ctx.rows);
    if let Some(path) = &json {
        report::write_json(path, &ctx.rows, &[], "").await?;
    }
    let bad = ctx.rows.iter().filter(|r| !r.ok()).count();
    match outcome {
        Ok(()) if bad == 0 => Ok(ExitCode::SUCCESS),
        Ok(()) => {
            eprintln!("fanout-bench: {bad} row(s) with loss, duplicates, disorder or disconnects");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            ctx.rows.clear();
            Err(e)
        }
    }
}

/// A `proxy-overhead` run: each connection count with 2 wrk threads (1 for one connection).
fn proxy_run(
    upstream: proxy::UpstreamKind,
    python: Option<PathBuf>,
    connections: &[usize],
    duration_secs: u64,
    systems: Vec<String>,
    rounds: usize,
) -> Result<proxy::ProxyRun> {
    if let Some(s) = systems.iter().find(|s| {
        !proxy::SYSTEMS.contains(&s.as_str()) && !proxy::LEAN_FLOORS.contains(&s.as_str())
    }) {
        return Err(BenchError::Failed(format!(
            "--systems {s}: expected some of {}, {}",
            proxy::SYSTEMS.join(", "),
            proxy::LEAN_FLOORS.join(", ")
        )));
    }
    let loads = connections
        .iter()
        .map(|&c| proxy::Load {
            connections: c.max(1),
            threads: c.clamp(1, 2),
            duration: Duration::from_secs(duration_secs.max(1)),
        })
        .collect();
    Ok(proxy::ProxyRun {
        upstream,
        python,
        loads,
        systems,
        rounds,
        pace_ms: None,
    })
}

fn common_for_report(c: &Common) -> Result<FanoutOpts> {
    fanout_opts(c, Durability::On)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_lists_parse() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "fanout-bench",
            "catch-up",
            "--cases",
            "10000:1000,100000:10",
        ])
        .expect("parses");
        match cli.cmd {
            Cmd::CatchUp { cases, .. } => assert_eq!(cases, vec![(10_000, 1000), (100_000, 10)]),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["fanout-bench", "single-event", "--sizes", "1,2"])
            .expect("parses");
        match cli.cmd {
            Cmd::SingleEvent { sizes, .. } => assert_eq!(sizes, vec![1, 2]),
            other => panic!("parsed as {other:?}"),
        }
    }
}
