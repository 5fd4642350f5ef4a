//! Tables (stdout), JSON results, and BENCHMARKS.md: every scenario's rows, the machine, the
//! durability settings, the nchan ratios and the issue's targets with met / not met.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{BenchError, Result};
use crate::pg::{Durability, Pg};
use crate::scenarios::{self, Ctx, Row};
use crate::sut::FanoutOpts;
use crate::{progress, Common};

/// Prints the rows, one markdown table per scenario.
pub fn print_table(rows: &[Row]) {
    print!("{}", tables(rows));
}

fn tables(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if !order.contains(&r.scenario.as_str()) {
            order.push(&r.scenario);
        }
    }
    for scenario in order {
        let group: Vec<&Row> = rows.iter().filter(|r| r.scenario == scenario).collect();
        let mut cols: Vec<String> = Vec::new();
        for r in &group {
            for k in r.values.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        let _ = writeln!(out, "\n### {scenario}\n");
        let _ = writeln!(out, "| system | case | {} |", cols.join(" | "));
        let _ = writeln!(
            out,
            "|---|---|{}",
            cols.iter().map(|_| "---|").collect::<String>()
        );
        for r in group {
            let cells: Vec<String> = cols
                .iter()
                .map(|c| match r.values.get(c) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(v) => v.to_string(),
                })
                .collect();
            let _ = writeln!(out, "| {} | {} | {} |", r.system, r.case, cells.join(" | "));
        }
    }
    out
}

/// Writes `{"rows": […], "notes": […]}`.
pub async fn write_json(
    path: &Path,
    rows: &[Row],
    notes: &[String],
    pg_settings: &str,
) -> Result<()> {
    let v = json!({"rows": rows, "notes": notes, "machine": machine(), "pg_settings": pg_settings});
    tokio::fs::write(path, serde_json::to_vec_pretty(&v)?)
        .await
        .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

fn machine() -> Value {
    json!({
        "nproc": sh("nproc", &[]),
        "free": sh("free", &["-m"]),
        "uname": sh("uname", &["-a"]),
        "cpu": sh("sh", &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]),
        "nofile": sh("sh", &["-c", "ulimit -Hn"]),
        "date": sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "git": sh("sh", &["-c", &format!(
            "cd {} && echo \"$(git rev-parse --short HEAD) ($(git status --porcelain -- src sql | wc -l) uncommitted change(s) under src/ and sql/)\"",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").display()
        )]),
        "nginx": sh("sh", &["-c", "nginx -v 2>&1; dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null"]),
    })
}

/// The analysis rendered after the results: `bench/notes.md`.
fn notes_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("notes.md")
}

/// `report --notes-only`: `out`'s results part (everything before the notes' first line, as a
/// run or `--from` rendered it) kept as it is, and the notes rendered after it again from
/// `bench/notes.md` — for a change to the notes when the run's saved rows are not at hand. The
/// file is what `--from` with those rows would write.
pub async fn rerender_notes(out: &Path) -> Result<ExitCode> {
    let text = tokio::fs::read_to_string(out)
        .await
        .map_err(|e| BenchError::io(format!("reading {}", out.display()), e))?;
    let notes = tokio::fs::read_to_string(notes_path())
        .await
        .map_err(|e| BenchError::io("reading bench/notes.md", e))?;
    let first = notes.lines().next().unwrap_or_default();
    let Some(at) = text
        .match_indices(&format!("\n\n{first}\n"))
        .map(|(at, _)| at + 2)
        .next()
        .filter(|_| !first.is_empty())
    else {
        return Err(BenchError::Missing(format!(
            "{} has no notes part starting with {first:?} (bench/notes.md's first line): render it with --from",
            out.display()
        )));
    };
    let rendered = format!("{}{}\n", &text[..at], notes.trim_end());
    tokio::fs::write(out, rendered)
        .await
        .map_err(|e| BenchError::io(format!("writing {}", out.display()), e))?;
    progress(&format!("wrote {} (notes rendered again)", out.display()));
    Ok(ExitCode::SUCCESS)
}

/// `report`: run everything (or load saved rows) and write the markdown.
pub async fn report(
    opts: &FanoutOpts,
    common: &Common,
    out: PathBuf,
    from: Vec<PathBuf>,
    skip_100k: bool,
    hold_100k: u64,
) -> Result<ExitCode> {
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut machine_v = machine();
    // Which build was measured: `target/release/mcp-fanout` is the plain build CI tests,
    // `target/pgo/mcp-fanout` the profile-guided one the image ships (scripts/build-pgo).
    machine_v["binary"] = json!(opts.binary.display().to_string());
    let mut machine_from_file = false;
    let mut pg_settings = String::new();
    if from.is_empty() {
        let mut ctx = Ctx {
            fanout: opts.clone(),
            nchan: true,
            min_workers: common.workers.max(1),
            rows: Vec::new(),
        };
        if let Err(e) = crate::nchan::Nchan::start().await {
            notes.push(format!("nchan could not be started, so no comparison: {e}"));
            ctx.nchan = false;
        }
        if opts.urls.is_empty() && !opts.memory {
            match Pg::start(opts.database_url.as_deref(), opts.durability).await {
                Ok(pg) => pg_settings = pg.settings().await.unwrap_or_default(),
                Err(e) => notes.push(format!("Postgres settings could not be read: {e}")),
            }
        }
        macro_rules! step {
            ($name:expr, $call:expr) => {{
                progress(&format!("=== {} ===", $name));
                if let Err(e) = $call.await {
                    progress(&format!("{} failed: {e}", $name));
                    notes.push(format!("`{}` failed: {e}", $name));
                }
            }};
        }
        step!(
            "idle-memory",
            scenarios::idle_memory(&mut ctx, &[5000, 10000, 19000], 1, Duration::from_secs(5))
        );
        step!(
            "fanout-burst",
            scenarios::fanout_burst(&mut ctx, 19_000, 50, 32, 3)
        );
        step!(
            "coalesce-burst",
            scenarios::coalesce_burst(&mut ctx, 10_000, 1000, 32, 100)
        );
        step!(
            "single-event",
            scenarios::single_event(&mut ctx, &[1000, 5000, 19000], 5)
        );
        ctx.nchan = false;
        step!(
            "cross-replica",
            scenarios::cross_replica(
                &mut ctx,
                3,
                &[1, 100, 2000],
                10.0,
                Duration::from_secs(10),
                crate::sut::Via::Admin(0)
            )
        );
        step!(
            "publish-latency",
            scenarios::publish_latency(&mut ctx, 10.0, Duration::from_secs(20))
        );
        step!(
            "publish-throughput",
            scenarios::publish_throughput(&mut ctx, 100, 32, 1000, 4, 200, Duration::from_secs(10))
        );
        step!(
            "catch-up",
            scenarios::catch_up(&mut ctx, 3, &[(10_000, 1000), (100_000, 10)])
        );
        step!(
            "proxy-overhead",
            crate::proxy::proxy_overhead(&mut ctx, &crate::proxy::ProxyRun::default())
        );
        if skip_100k {
            notes.push("The 100k-over-6-replicas idle run was skipped (--skip-100k).".to_string());
        } else {
            step!(
                "idle-memory 100k",
                scenarios::idle_memory(&mut ctx, &[100_000], 6, Duration::from_secs(hold_100k))
            );
        }
        rows = ctx.rows;
        let json_path = common
            .json
            .clone()
            .unwrap_or_else(|| out.with_extension("json"));
        write_json(&json_path, &rows, &notes, &pg_settings).await?;
        progress(&format!("results saved to {}", json_path.display()));
    } else {
        for path in &from {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| BenchError::io(format!("reading {}", path.display()), e))?;
            let v: Value = serde_json::from_str(&text)?;
            let more: Vec<Row> =
                serde_json::from_value(v.get("rows").cloned().unwrap_or(Value::Null))?;
            rows.extend(more);
            if let Some(ns) = v.get("notes").and_then(Value::as_array) {
                notes.extend(ns.iter().filter_map(Value::as_str).map(ToString::to_string));
            }
            if let Some(m) = v.get("machine").filter(|_| !machine_from_file) {
                machine_v = m.clone();
                machine_from_file = true;
            }
            if let Some(s) = v.get("pg_settings").and_then(Value::as_str) {
                pg_settings = s.to_string();
            }
        }
    }
    if pg_settings.is_empty() {
        pg_settings = match opts.durability {
            Durability::On => {
                "fsync=on, full_page_writes=on, synchronous_commit=on (the bench's own cluster)"
                    .to_string()
            }
            Durability::Off => {
                "fsync=off, synchronous_commit=off (the test kit's cluster)".to_string()
            }
        };
    }
    if rows
        .iter()
        .any(|r| r.scenario == "idle-memory" && r.num("subscribers").unwrap_or(0.0) >= 100_000.0)
    {
        notes.retain(|n| !n.contains("--skip-100k"));
    }
    let md = render(&rows, &notes, &machine_v, &pg_settings);
    tokio::fs::write(&out, md)
        .await
        .map_err(|e| BenchError::io(format!("writing {}", out.display()), e))?;
    print_table(&rows);
    progress(&format!("wrote {}", out.display()));
    Ok(ExitCode::SUCCESS)
}

fn find<'a>(
    rows: &'a [Row],
    scenario: &str,
    system: &str,
    pred: impl Fn(&Row) -> bool,
) -> Vec<&'a Row> {
    rows.iter()
        .filter(|r| r.scenario == scenario && r.system == system && pred(r))
        .collect()
}

fn med(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "not measured".to_string())
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// The issue's targets against the rows.
pub fn targets(rows: &[Row]) -> Vec<[String; 4]> {
    let mut t = Vec::new();
    let subs = |r: &Row| r.num("subscribers").unwrap_or(0.0);
    let procs = |r: &Row| r.num("processes").unwrap_or(1.0);

    let idle = find(rows, "idle-memory", "mcp-fanout", |r| {
        subs(r) == 19000.0 && procs(r) == 1.0
    });
    let kb = idle.first().and_then(|r| r.num("kb_per_conn"));
    let nchan_kb = find(rows, "idle-memory", "nchan", |r| subs(r) == 19000.0)
        .first()
        .and_then(|r| r.num("kb_per_conn"));
    t.push([
        "idle memory per SSE connection (19k, one replica)".into(),
        "≤ 8 KB (stretch 4 KB)".into(),
        format!("{} KB (nchan {} KB)", f(kb, 2), f(nchan_kb, 2)),
        verdict(kb.map(|k| k <= 8.0)).into(),
    ]);

    let big = find(rows, "idle-memory", "mcp-fanout", |r| subs(r) >= 100_000.0);
    let big_ok = big
        .first()
        .map(|r| r.ok() && r.num("held_s").unwrap_or(0.0) >= 600.0);
    t.push([
        "idle connections".into(),
        "to the open-file limit on one replica; ≥ 100k over 6 replicas for 10 min, then one publish reaches all".into(),
        match big.first() {
            Some(r) => format!(
                "19k on one replica: {}; 100k over 6 held {} s, one publish to all in {} ms, ok={}",
                idle.first().map(|r| if r.ok() { "ok" } else { "FAILED" }).unwrap_or("not measured"),
                f(r.num("held_s"), 0),
                f(r.num("one_event_to_all_ms"), 1),
                r.ok()
            ),
            None => format!(
                "19k on one replica: {}; 100k not measured",
                idle.first().map(|r| if r.ok() { "ok" } else { "FAILED" }).unwrap_or("not measured")
            ),
        },
        verdict(big_ok).into(),
    ]);

    let burst = med(find(rows, "fanout-burst", "mcp-fanout", |_| true)
        .iter()
        .filter_map(|r| r.num("cpu_us_per_delivery"))
        .collect());
    let nburst = med(find(rows, "fanout-burst", "nchan", |_| true)
        .iter()
        .filter_map(|r| r.num("cpu_us_per_delivery"))
        .collect());
    let ratio = match (burst, nburst) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a),
        _ => None,
    };
    t.push([
        "fanout-burst server CPU per delivered event".into(),
        "≤ 0.5 µs and ≥ 10× better than nchan".into(),
        format!(
            "{} µs (nchan {} µs, ratio {}×)",
            f(burst, 3),
            f(nburst, 3),
            f(ratio, 1)
        ),
        verdict(burst.map(|b| b <= 0.5 && ratio.is_some_and(|r| r >= 10.0))).into(),
    ]);

    let se = |sys: &str, n: f64| {
        find(rows, "single-event", sys, |r| subs(r) == n)
            .first()
            .and_then(|r| r.num("last_delivery_ms_median"))
    };
    let (a, b) = (se("mcp-fanout", 19000.0), se("nchan", 19000.0));
    t.push([
        "single-event time to the last delivery at 19k".into(),
        "≤ 0.5 × nchan's".into(),
        format!(
            "{} ms (nchan {} ms, ratio {})",
            f(a, 1),
            f(b, 1),
            f(a.zip(b).map(|(a, b)| a / b), 2)
        ),
        verdict(a.zip(b).map(|(a, b)| a <= 0.5 * b)).into(),
    ]);
    single_event_cpu_target(rows, a.zip(b), &mut t);

    let per = |n: f64| {
        find(rows, "single-event", "mcp-fanout", |r| subs(r) == n)
            .first()
            .and_then(|r| r.num("us_per_subscriber"))
    };
    let scale = per(19000.0).zip(per(1000.0)).map(|(a, b)| a / b);
    t.push([
        "scaling: time to last delivery per subscriber, 19k vs 1k".into(),
        "≤ 1.2×".into(),
        format!(
            "{}× ({} vs {} µs per subscriber)",
            f(scale, 2),
            f(per(19000.0), 2),
            f(per(1000.0), 2)
        ),
        verdict(scale.map(|s| s <= 1.2)).into(),
    ]);

    let cross = |k: f64| {
        find(rows, "cross-replica", "mcp-fanout", |r| subs(r) == 3.0 * k)
            .first()
            .map(|r| (r.num("lat_p50_ms"), r.num("lat_p99_ms")))
    };
    let c100 = cross(100.0);
    let publish100 = find(rows, "cross-replica", "mcp-fanout", |r| subs(r) == 300.0)
        .first()
        .and_then(|r| r.num("publish_p50_ms"));
    t.push([
        "cross-replica publish→deliver, 3 × 100".into(),
        "p50 ≤ 3 ms, p99 ≤ 8 ms (first target: ≤ 10), publish request p50 ≤ 1.5 ms".into(),
        format!(
            "p50 {} ms, p99 {} ms, publish p50 {} ms",
            f(c100.and_then(|c| c.0), 2),
            f(c100.and_then(|c| c.1), 2),
            f(publish100, 2)
        ),
        verdict(c100.and_then(|(a, b)| Some(a? <= 3.0 && b? <= 8.0 && publish100? <= 1.5))).into(),
    ]);
    let c2k = cross(2000.0);
    t.push([
        "cross-replica publish→deliver, 3 × 2k".into(),
        "p99 ≤ 100 ms".into(),
        format!(
            "p99 {} ms (p50 {} ms)",
            f(c2k.and_then(|c| c.1), 2),
            f(c2k.and_then(|c| c.0), 2)
        ),
        verdict(c2k.and_then(|c| c.1).map(|p| p <= 100.0)).into(),
    ]);

    let single = find(rows, "publish-throughput", "mcp-fanout", |r| {
        r.case.starts_with("single")
    })
    .first()
    .and_then(|r| r.num("committed_per_s"));
    let pgb = find(rows, "publish-throughput", "pgbench", |_| true)
        .first()
        .and_then(|r| r.num("committed_per_s"));
    t.push([
        "single-event publish throughput".into(),
        "≥ 2 × the outbox tps of pgbench -c 4".into(),
        format!(
            "{}/s vs pgbench {} tps ({}×)",
            f(single, 0),
            f(pgb, 0),
            f(single.zip(pgb).map(|(a, b)| a / b), 2)
        ),
        verdict(single.zip(pgb).map(|(a, b)| a >= 2.0 * b)).into(),
    ]);

    let batched = find(rows, "publish-throughput", "mcp-fanout", |r| {
        r.case.starts_with("batches")
    });
    let bc = batched.first().and_then(|r| r.num("committed_per_s"));
    let bd = batched
        .first()
        .and_then(|r| r.num("delivered_events_per_s"));
    t.push([
        "batched publish throughput".into(),
        "≥ 100k events/s committed and delivered".into(),
        format!("{}/s committed, {}/s delivered", f(bc, 0), f(bd, 0)),
        verdict(bc.zip(bd).map(|(a, b)| a >= 100_000.0 && b >= 100_000.0)).into(),
    ]);

    let cu = |e: &str| {
        find(rows, "catch-up", "mcp-fanout", |r| r.case.starts_with(e))
            .first()
            .map(|r| (r.num("last_delivery_after_reconnect_s"), r.ok()))
    };
    let (c10, c100k) = (cu("10000 "), cu("100000 "));
    t.push([
        "catch-up".into(),
        "10k events to 3 × 1k within 30 s, 100k to 3 × 10 within 5 s, of reconnect; none disconnected".into(),
        format!(
            "10k: {} s (ok={}); 100k: {} s (ok={})",
            f(c10.and_then(|c| c.0), 2),
            c10.map(|c| c.1.to_string()).unwrap_or_default(),
            f(c100k.and_then(|c| c.0), 2),
            c100k.map(|c| c.1.to_string()).unwrap_or_default()
        ),
        verdict(c10.zip(c100k).and_then(|(a, b)| {
            Some(a.0? <= 30.0 && a.1 && b.0? <= 5.0 && b.1)
        }))
        .into(),
    ]);
    proxy_target(rows, &mut t);
    t
}

/// The proxy's cost against nginx's, at 8 connections (the first round).
/// The performance goal for a lone event at 19k: time ≤ 0.85 × nchan's and server CPU per
/// delivery ≤ nchan's, with where the CPU goes (the server's kernel and user parts, the clients').
fn single_event_cpu_target(rows: &[Row], times: Option<(f64, f64)>, t: &mut Vec<[String; 4]>) {
    let row = |sys: &str| {
        find(rows, "single-event", sys, |r| {
            r.num("subscribers").unwrap_or(0.0) == 19000.0
        })
        .first()
        .copied()
    };
    let (ours, theirs) = (row("mcp-fanout"), row("nchan"));
    let cpu = |r: Option<&Row>| r.and_then(|r| r.num("cpu_us_per_delivery_median"));
    let split = |r: Option<&Row>| {
        let k = |key: &str| r.and_then(|r| r.num(key));
        format!(
            "kernel {} + user {}, clients {}",
            f(k("server_kernel_us_per_delivery"), 2),
            f(k("server_user_us_per_delivery"), 2),
            f(k("client_cpu_us_per_delivery"), 2)
        )
    };
    let (a, b) = (cpu(ours), cpu(theirs));
    t.push([
        "single-event at 19k: time to the last delivery, server CPU per delivery".into(),
        "time ≤ 0.85 × nchan's, CPU ≤ nchan's".into(),
        format!(
            "time ratio {}; {} µs ({}) vs nchan {} µs ({})",
            f(times.map(|(a, b)| a / b), 2),
            f(a, 2),
            split(ours),
            f(b, 2),
            split(theirs)
        ),
        verdict(
            times
                .zip(a.zip(b))
                .map(|((ta, tb), (ca, cb))| ta <= 0.85 * tb && ca <= cb),
        )
        .into(),
    ]);
}

fn proxy_target(rows: &[Row], t: &mut Vec<[String; 4]>) {
    let c8 = |sys: &str| {
        find(rows, "proxy-overhead", sys, |r| {
            r.num("connections") == Some(8.0)
        })
        .first()
        .map(|r| (r.num("proxy_cpu_us_per_request"), r.num("requests_per_s")))
    };
    let c1 = find(rows, "proxy-overhead", "mcp-fanout", |r| {
        r.num("connections") == Some(1.0)
    })
    .first()
    .and_then(|r| r.num("added_p50_ms"));
    let (fan, ngx) = (c8("mcp-fanout"), c8("nginx"));
    let cpu = fan.and_then(|f| f.0).zip(ngx.and_then(|n| n.0));
    let rps = fan.and_then(|f| f.1).zip(ngx.and_then(|n| n.1));
    t.push([
        "proxy-overhead: `tools/call` through the proxy, wrk -c8 (added p50 at -c1)".into(),
        "CPU per request ≤ nginx's, added p50 ≤ 0.1 ms, requests/s within 5 % of nginx's".into(),
        format!(
            "{} µs/request (nginx {} µs); added p50 {} ms; {}/s (nginx {}/s)",
            f(cpu.map(|c| c.0), 1),
            f(cpu.map(|c| c.1), 1),
            f(c1, 3),
            f(rps.map(|r| r.0), 0),
            f(rps.map(|r| r.1), 0)
        ),
        verdict(
            cpu.zip(rps)
                .zip(c1)
                .map(|((c, r), a)| c.0 <= c.1 && a <= 0.1 && r.0 >= 0.95 * r.1),
        )
        .into(),
    ]);
}

fn render(rows: &[Row], notes: &[String], machine: &Value, pg_settings: &str) -> String {
    let g = |k: &str| {
        machine
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `cargo run --release -p mcp-fanout-bench -- report --out BENCHMARKS.md` \
         (every scenario, with nchan in the same run) on {}. The load generator, the replicas, \
         Postgres and nginx all share the machine's cores, so absolute figures are pessimistic; \
         ratios measured in the same run are the comparable numbers.\n",
        g("date")
    );
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "- code measured: commit {}", g("git"));
    let binary = g("binary");
    let _ = writeln!(
        md,
        "- binary measured: {}",
        if binary.is_empty() {
            "not recorded (a run before the binary was)".to_string()
        } else {
            format!("`{binary}`")
        }
    );
    let _ = writeln!(md, "- `nproc`: {}", g("nproc"));
    let _ = writeln!(md, "- CPU: {}", g("cpu").trim());
    let _ = writeln!(md, "- `uname -a`: `{}`", g("uname"));
    let _ = writeln!(md, "- open files (hard limit per process): {}", g("nofile"));
    let _ = writeln!(md, "- nginx / nchan: {}", g("nginx").replace('\n', "; "));
    let _ = writeln!(md, "- `free -m`:\n\n```\n{}\n```\n", g("free"));
    let _ = writeln!(md, "## Durability\n");
    let _ = writeln!(
        md,
        "Postgres as measured: {pg_settings}. Headline figures run with fsync and \
         `synchronous_commit` on (the bench starts its own cluster for that; `--durability off` \
         uses the test kit's fast cluster, as `smoke` does). mcp-fanout runs with its defaults \
         (release build, `FANOUT_DB_POOL_SIZE=8`, group commit).\n"
    );
    let _ = writeln!(md, "## Commands\n");
    let _ = writeln!(
        md,
        "```sh\ncargo build --release -p mcp-fanout -p mcp-fanout-bench\n\
         B=target/release/fanout-bench\n\
         $B idle-memory --compare nchan                      # 5k / 10k / 19k on one replica\n\
         $B idle-memory --replicas 6 --subscribers 100000 --hold-secs 600\n\
         $B fanout-burst --compare nchan                     # 19k subscribers, 50 events, 32 publishers\n\
         $B coalesce-burst                                   # 1,000 list_changed to 10k, FANOUT_COALESCE_MS off / 100\n\
         $B single-event --compare nchan                     # 1k / 5k / 19k\n\
         $B cross-replica                                    # 3 × 100 and 3 × 2k, 10 events/s (report: also 3 × 1)\n\
         $B publish-latency                                  # a lone publish at 10/s: HTTP, Postgres, pgbench\n\
         $B publish-throughput                               # 32 publishers; batches of 1000; pgbench -c 4\n\
         $B catch-up                                         # 10k → 3 × 1k, 100k → 3 × 10\n\
         $B proxy-overhead                                   # tools/call direct / mcp-fanout / nginx / hyper-floor / mcp-fanout-session (wrk, py1 venv)\n\
         $B proxy-overhead --upstream static --systems mcp-fanout,hyper-floor,nginx  # the proxies' CPU per request, proxy-bound\n\
         $B proxy-overhead --upstream static --systems nginx,lean-floor,lean-floor-http,hyper-floor  # the floors: no HTTP library, http types, hyper\n\
         $B proxy-overhead --upstream static --pace-ms 20 --systems nginx,lean-floor,hyper-floor,mcp-fanout  # the same at a set 400/s (8 connections): each request wakes a sleeping proxy\n\
         $B smoke                                            # seconds; asserts no loss (scripts/bench-smoke)\n\
         $B report --out BENCHMARKS.md                       # all of the above, this file\n```\n\
         \nEvery scenario accepts `--json FILE`, `--binary PATH`, `--url URL…` (measure running \
         replicas), `--database-url`, `--durability on|off`, `--memory`, `--env KEY=VALUE`.\n"
    );
    let _ = writeln!(md, "## How it measures\n");
    let _ = writeln!(
        md,
        "- Subscribers are raw-TCP SSE clients (one tokio task per connection) in several client \
         processes (`fanout-bench worker`, ≤ 10k connections each) bound to `127.0.0.x` source \
         addresses. Each counts frames, checks that ids increase, and compares the set of events \
         received (count and a hash of the publish indexes) with what the publishes returned.\n\
         - Each event's params carry the publish index and the send time (unix ns); \
         publish→deliver latency goes into an HDR histogram; \"last delivery\" is the latest \
         receive time over every subscriber, from the first publish.\n\
         - Server RSS (`VmRSS`) and CPU time (utime + stime) come from `/proc/<pid>/status` and \
         `/proc/<pid>/stat` before and after (nginx: master + workers). CPU per delivered event = \
         server CPU during the phase / frames delivered. `single-event` also splits it into the \
         kernel's and user space's part (`stime` / `utime`, over the whole series) and reports \
         the client processes' CPU per delivery: everything shares the cores, so the time to the \
         last delivery follows the sum.\n\
         - mcp-fanout subscribers use `GET /mcp` (protocol 2025-06-18) resuming from a marker \
         event, so exactly the run's events count; nchan subscribers use its EventSource \
         location (config: `bench/nchan/nginx.conf`, memory store).\n"
    );
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "| metric | target | measured | verdict |\n|---|---|---|---|"
    );
    for [a, b, c, d] in targets(rows) {
        let _ = writeln!(md, "| {a} | {b} | {c} | {d} |");
    }
    let bad: Vec<&Row> = rows.iter().filter(|r| !r.ok()).collect();
    let _ = writeln!(
        md,
        "\nAccounting: {} result rows, {} with any loss, duplicate, disorder or disconnect.\n",
        rows.len(),
        bad.len()
    );
    let _ = writeln!(md, "## Results\n");
    md.push_str(&tables(rows));
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Run notes\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    if let Ok(text) = std::fs::read_to_string(notes_path()) {
        let _ = writeln!(md, "\n{}", text.trim_end());
    }
    md
}
