//! Resident memory and CPU time of server processes, from `/proc/<pid>/status` and
//! `/proc/<pid>/stat`.

use serde::Serialize;

use crate::error::{BenchError, Result};

/// One sample of a set of processes (summed).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// `VmRSS`, KiB.
    pub rss_kb: u64,
    /// utime + stime, microseconds (nanosecond resolution when the threads' run times agree).
    pub cpu_us: u64,
    /// utime and stime alone, microseconds (clock-tick resolution): the kernel's share.
    pub user_tick_us: u64,
    pub sys_tick_us: u64,
    /// Context switches (voluntary and not) over every live thread.
    pub switches: u64,
}

impl ProcSample {
    /// `self - before`, saturating.
    pub fn since(&self, before: &ProcSample) -> ProcSample {
        ProcSample {
            rss_kb: self.rss_kb.saturating_sub(before.rss_kb),
            cpu_us: self.cpu_us.saturating_sub(before.cpu_us),
            user_tick_us: self.user_tick_us.saturating_sub(before.user_tick_us),
            sys_tick_us: self.sys_tick_us.saturating_sub(before.sys_tick_us),
            switches: self.switches.saturating_sub(before.switches),
        }
    }

    /// `self + other`.
    pub fn plus(&self, other: &ProcSample) -> ProcSample {
        ProcSample {
            rss_kb: self.rss_kb + other.rss_kb,
            cpu_us: self.cpu_us + other.cpu_us,
            user_tick_us: self.user_tick_us + other.user_tick_us,
            sys_tick_us: self.sys_tick_us + other.sys_tick_us,
            switches: self.switches + other.switches,
        }
    }

    /// The kernel's share of the CPU time (stime over utime + stime), if any was counted.
    pub fn kernel_share(&self) -> Option<f64> {
        let total = self.user_tick_us + self.sys_tick_us;
        (total > 0).then(|| self.sys_tick_us as f64 / total as f64)
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf(3) has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Samples one process.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| BenchError::io(format!("reading /proc/{pid}/status"), e))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| BenchError::io(format!("reading /proc/{pid}/stat"), e))?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| BenchError::Protocol(format!("unparsable /proc/{pid}/stat")))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ')' : state(3) ppid(4) … utime(14) stime(15) → indexes 11 and 12.
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let cpu_ticks = ticks(11) + ticks(12);
    let tick_us = 1_000_000 / clock_ticks();
    let (user_tick_us, sys_tick_us) = (ticks(11) * tick_us, ticks(12) * tick_us);
    let stat_us = cpu_ticks * tick_us;
    // Nanosecond run time of every live thread; it misses threads that have exited, so it is
    // used only when it agrees with the (tick-resolution, complete) figure above.
    let (runtime_ns, switches) = threads(pid);
    let sched_us = runtime_ns / 1000;
    let cpu_us = if sched_us + tick_us >= stat_us && sched_us <= stat_us + 2 * tick_us {
        sched_us
    } else {
        stat_us
    };
    Ok(ProcSample {
        rss_kb,
        cpu_us,
        user_tick_us,
        sys_tick_us,
        switches,
    })
}

/// Summed over every live thread of `pid` (one walk of `/proc/<pid>/task`): time on CPU, ns (the
/// first field of `schedstat`), and context switches (`voluntary_ctxt_switches` +
/// `nonvoluntary_ctxt_switches` of `status`).
fn threads(pid: u32) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let (mut runtime_ns, mut switches) = (0, 0);
    for task in entries.flatten().map(|e| e.path()) {
        if let Ok(s) = std::fs::read_to_string(task.join("schedstat")) {
            runtime_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(task.join("status")) {
            switches += s
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (runtime_ns, switches)
}

/// Samples a set of processes and sums them.
pub fn sample_all(pids: &[u32]) -> Result<ProcSample> {
    let mut total = ProcSample::default();
    for &pid in pids {
        total = total.plus(&sample(pid)?);
    }
    Ok(total)
}

/// The children of `parent` (from `/proc/*/stat`).
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_itself() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kb > 0);
    }
}
