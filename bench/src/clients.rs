//! The coordinator's side of the client processes: spawns `fanout-bench worker` subprocesses,
//! spreads subscribers over them and over source addresses, and merges their phase reports.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Proc};

use crate::error::{BenchError, Result};
use crate::worker::{histogram, Command, ConnTarget, PhaseReport, Reply};

/// Most connections one client process holds (the open-file limit is 20k per process here).
pub const PER_WORKER: usize = 10_000;

/// One kind of subscription: where, and the request that opens it.
#[derive(Debug, Clone)]
pub struct SubTarget {
    /// Server address.
    pub addr: SocketAddr,
    /// The full HTTP/1.1 request.
    pub request: String,
}

struct Worker {
    id: usize,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn send(&mut self, cmd: &Command) -> Result<()> {
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .map_err(|e| BenchError::io(format!("sending a command to worker {}", self.id), e))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| BenchError::io(format!("flushing worker {}'s stdin", self.id), e))
    }

    async fn recv(&mut self) -> Result<Reply> {
        let line = self
            .lines
            .next_line()
            .await
            .map_err(|e| BenchError::io(format!("reading worker {}", self.id), e))?
            .ok_or_else(|| BenchError::Worker {
                id: self.id,
                what: "exited (stdout closed)".to_string(),
            })?;
        let reply: Reply = serde_json::from_str(&line).map_err(|e| BenchError::Worker {
            id: self.id,
            what: format!("unparsable reply {line:?}: {e}"),
        })?;
        if let Reply::Error { message } = &reply {
            return Err(BenchError::Worker {
                id: self.id,
                what: message.clone(),
            });
        }
        Ok(reply)
    }
}

/// Merged report of one phase over every worker.
#[derive(Debug, Clone)]
pub struct Phase {
    /// The merged counters (its `latency_us` is empty: see `hist`).
    pub report: PhaseReport,
    /// Merged publish→receive latency, µs.
    pub hist: Histogram<u64>,
}

/// Every client process of a run.
pub struct Clients {
    workers: Vec<Worker>,
    /// Subscribers opened.
    pub subscribers: usize,
    /// Subscribers opened from now on resume after a clean end (see [`Clients::resuming`]).
    resume: bool,
}

impl Clients {
    /// CPU (and RSS) of the client processes, summed.
    pub fn sample(&self) -> Result<crate::procstat::ProcSample> {
        let pids: Vec<u32> = self.workers.iter().filter_map(|w| w.child.id()).collect();
        crate::procstat::sample_all(&pids)
    }

    /// Spawns `n` worker processes of this very executable.
    pub async fn spawn(n: usize) -> Result<Clients> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::io("finding the bench's own executable", e))?;
        let mut workers = Vec::with_capacity(n);
        for id in 0..n.max(1) {
            let mut child = Proc::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| BenchError::io(format!("starting worker {id}"), e))?;
            let stdin = child.stdin.take().ok_or_else(|| BenchError::Worker {
                id,
                what: "no stdin".to_string(),
            })?;
            let stdout = child.stdout.take().ok_or_else(|| BenchError::Worker {
                id,
                what: "no stdout".to_string(),
            })?;
            workers.push(Worker {
                id,
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
        }
        Ok(Clients {
            workers,
            subscribers: 0,
            resume: false,
        })
    }

    /// Enough workers for `subscribers` connections (at least `min`).
    pub async fn for_subscribers(subscribers: usize, min: usize) -> Result<Clients> {
        Clients::spawn(subscribers.div_ceil(PER_WORKER).max(min).max(1)).await
    }

    /// Subscribers opened after this behave as an SSE client does when the server ends its stream
    /// cleanly: they reconnect after the server's `retry:` with `Last-Event-ID` and go on
    /// counting (each reconnect is counted in the phase's `resumed`). Without it a clean end is a
    /// disconnect, and what was not received before it is missing.
    pub fn resuming(mut self) -> Clients {
        self.resume = true;
        self
    }

    /// Opens `total` subscribers spread evenly over `targets` and over the workers; each worker
    /// uses its own four `127.0.0.x` source addresses. Fails unless every one opens.
    pub async fn connect(&mut self, targets: &[SubTarget], total: usize) -> Result<()> {
        if targets.is_empty() || total == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let nw = self.workers.len();
        // per_target[i] subscribers for target i; then split over workers.
        let per_target: Vec<usize> = (0..targets.len())
            .map(|i| total / targets.len() + usize::from(i < total % targets.len()))
            .collect();
        for (w, worker) in self.workers.iter_mut().enumerate() {
            let mine: Vec<ConnTarget> = targets
                .iter()
                .zip(&per_target)
                .map(|(t, &c)| ConnTarget {
                    addr: t.addr,
                    request: t.request.clone(),
                    count: c / nw + usize::from(w < c % nw),
                })
                .filter(|t| t.count > 0)
                .collect();
            let base = 10 + 4 * (w % 60);
            let src_ips = (0..4)
                .map(|j| Ipv4Addr::new(127, 0, 0, u8::try_from(base + j).unwrap_or(250)))
                .collect();
            worker
                .send(&Command::Connect {
                    targets: mine,
                    src_ips,
                    parallel: 200,
                    timeout_ms: 60_000,
                    resume: self.resume,
                })
                .await?;
        }
        let (mut ok, mut failed, mut first) = (0, 0, None);
        for worker in &mut self.workers {
            match worker.recv().await? {
                Reply::Connected {
                    ok: o,
                    failed: f,
                    first_error,
                } => {
                    ok += o;
                    failed += f;
                    if first.is_none() {
                        first = first_error;
                    }
                }
                other => {
                    return Err(BenchError::Worker {
                        id: worker.id,
                        what: format!("answered {other:?} to connect"),
                    })
                }
            }
        }
        self.subscribers += ok;
        crate::progress(&format!(
            "{ok} subscribers connected in {:.1} s ({failed} failed)",
            started.elapsed().as_secs_f64()
        ));
        if failed > 0 {
            return Err(BenchError::Failed(format!(
                "{failed} of {total} subscribers could not connect; first error: {}",
                first.unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// Starts a phase in which every subscriber should receive `count` frames.
    pub async fn expect(&mut self, count: u64) -> Result<()> {
        self.expect_coalesced(count, None).await
    }

    /// Starts a phase of at most `count` frames whose last is event `last` (coalesced
    /// list_changed); `None`: exactly `count`.
    pub async fn expect_coalesced(&mut self, count: u64, last: Option<u64>) -> Result<()> {
        for w in &mut self.workers {
            w.send(&Command::Expect { count, last }).await?;
        }
        for w in &mut self.workers {
            match w.recv().await? {
                Reply::Ok => {}
                other => {
                    return Err(BenchError::Worker {
                        id: w.id,
                        what: format!("answered {other:?} to expect"),
                    })
                }
            }
        }
        Ok(())
    }

    /// Waits (up to `timeout`) for every subscriber to complete the phase; merges the reports.
    pub async fn collect(&mut self, timeout: Duration, expect_hash: u64) -> Result<Phase> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        for w in &mut self.workers {
            w.send(&Command::Collect {
                timeout_ms,
                expect_hash,
            })
            .await?;
        }
        let mut merged = PhaseReport::default();
        let mut hist = histogram()?;
        let mut last_progress = Instant::now();
        let nw = self.workers.len();
        let mut progress: Vec<(usize, usize, u64)> = vec![(0, 0, 0); nw];
        for (i, w) in self.workers.iter_mut().enumerate() {
            loop {
                match w.recv().await? {
                    Reply::Progress {
                        complete,
                        open,
                        frames,
                    } => {
                        progress[i] = (complete, open, frames);
                        if last_progress.elapsed() >= Duration::from_secs(2) {
                            let c: usize = progress.iter().map(|p| p.0).sum();
                            let o: usize = progress.iter().map(|p| p.1).sum();
                            let f: u64 = progress.iter().map(|p| p.2).sum();
                            crate::progress(&format!(
                                "  … {c}/{o} subscribers complete, {f} frames (worker view)"
                            ));
                            last_progress = Instant::now();
                        }
                    }
                    Reply::Collected(r) => {
                        for &(v, c) in &r.latency_us {
                            let _ = hist.record_n(v.max(1), c);
                        }
                        merge(&mut merged, r);
                        break;
                    }
                    other => {
                        return Err(BenchError::Worker {
                            id: w.id,
                            what: format!("answered {other:?} to collect"),
                        })
                    }
                }
            }
        }
        Ok(Phase {
            report: merged,
            hist,
        })
    }

    /// Closes every connection and waits for the workers to exit.
    pub async fn close(mut self) -> Result<()> {
        for w in &mut self.workers {
            // A worker that already died is reported by its exit status below.
            let _ = w.send(&Command::Close).await;
        }
        for w in &mut self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), w.recv()).await;
            match tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await {
                Ok(Ok(_)) => {}
                _ => {
                    let _ = w.child.start_kill();
                }
            }
        }
        Ok(())
    }
}

fn merge(into: &mut PhaseReport, r: PhaseReport) {
    into.subscribers += r.subscribers;
    into.open += r.open;
    into.complete += r.complete;
    into.frames += r.frames;
    into.missing += r.missing;
    into.extra += r.extra;
    into.wrong_set += r.wrong_set;
    into.order_violations += r.order_violations;
    into.closed += r.closed;
    into.resumed += r.resumed;
    if r.first_recv_ns != 0 && (into.first_recv_ns == 0 || r.first_recv_ns < into.first_recv_ns) {
        into.first_recv_ns = r.first_recv_ns;
    }
    into.last_recv_ns = into.last_recv_ns.max(r.last_recv_ns);
    if into.close_error.is_none() {
        into.close_error = r.close_error;
    }
}
