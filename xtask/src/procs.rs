//! Helpers the harnesses share: child process groups, a process's CPU
//! time and memory from procfs, the agent's HTTP endpoints, and medians.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Child,
};

use anyhow::Context as _;

/// Stops a child and everything in its process group when dropped.
pub struct Group(pub Child);

impl Group {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `signal` to the child alone.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: signalling our own child and its process group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `argv` in its own process group, output discarded. It is killed
/// if the harness dies without dropping it (killed by a timeout, say), so
/// no busy program outlives the run and skews the next one.
pub fn spawn_group(argv: &[&str]) -> anyhow::Result<Group> {
    let child = hearth_devtools::quiet_command(argv)
        .spawn()
        .with_context(|| format!("starting {argv:?}"))?;
    Ok(Group(child))
}

pub use hearth_devtools::free_port;

/// The body of a 200 answer to `GET path` on `127.0.0.1:port`.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1);
    (status == Some("200")).then_some(response)
}

/// The value of one Prometheus series in `text`, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// (CPU seconds, resident bytes) of a process, from procfs.
pub fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?) / ticks;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let resident = statm.split_whitespace().nth(1)?.parse::<u64>().ok()? * page;
    Some((cpu, resident))
}

/// CPU seconds all live threads of a process have run, from each thread's
/// `schedstat` (nanoseconds; `stat`'s clock ticks are too coarse for a
/// profiler that runs for 1% of a few seconds).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Some(nanos as f64 / 1e9)
}

/// Run time (ns) and run count of the BPF programs a process holds open,
/// from their fdinfo; counted only while `kernel.bpf_stats_enabled` is 1.
pub fn bpf_run_time(pid: u32) -> (u64, u64) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    let field = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.contains("prog_type:"))
        .fold((0, 0), |(ns, runs), info| {
            (
                ns + field(&info, "run_time_ns:"),
                runs + field(&info, "run_cnt:"),
            )
        })
}

/// Turns the kernel's BPF run-time statistics on while alive, restoring
/// the previous setting when dropped.
pub struct BpfStats(Option<String>);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> Self {
        let before = std::fs::read_to_string(Self::PATH).ok();
        let _ = std::fs::write(Self::PATH, "1");
        Self(before)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = std::fs::write(Self::PATH, before.trim());
        }
    }
}

/// The most memory a process has had resident (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn reads_this_process() {
        let (cpu, rss) = usage(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && rss > 0);
        assert!(peak_rss(std::process::id()).unwrap() >= rss / 2);
        assert!(cpu_seconds(std::process::id()).unwrap() > 0.0);
        assert_eq!(
            metric("a_total 3\nb_total{x=\"y\"} 4.5\n", "b_total{x=\"y\"}"),
            4.5
        );
    }
}
