//! The profilers the workload runs under, started and stopped the same
//! way each time: Hearth (`record`, and `run` at two rates), `perf record`
//! and a bpftrace stack aggregation, all machine-wide.

use std::{
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::procs::{
    Group, bpf_run_time, cpu_seconds, free_port, http_get, metric, peak_rss, usage,
};

/// What watches the machine while the workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    HearthRecord(u32),
    /// `hearth run` at a rate, with `--unwind` when not the default.
    HearthRun(u32, Option<&'static str>),
    Perf(u32),
    Bpftrace(u32),
}

impl Tool {
    pub fn name(self) -> String {
        match self {
            Tool::HearthRecord(hz) => format!("hearth record -F {hz}"),
            Tool::HearthRun(hz, None) => format!("hearth run -F {hz}"),
            Tool::HearthRun(hz, Some(unwind)) => format!("hearth run -F {hz} --unwind {unwind}"),
            Tool::Perf(hz) => format!("perf record -a -g -F {hz}"),
            Tool::Bpftrace(hz) => format!("bpftrace profile:hz:{hz}"),
        }
    }
}

/// Paths the tools need.
pub struct Context {
    pub hearth: PathBuf,
    pub work: PathBuf,
}

/// A started tool.
pub struct Watcher {
    tool: Tool,
    /// Taken when stopped.
    group: Option<Group>,
    metrics_port: Option<u16>,
}

/// What a tool cost, read as it stopped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stopped {
    pub peak_rss: u64,
    /// Samples the kernel could not hand to Hearth (ring full); 0 for others.
    pub lost: f64,
}

/// How long a tool gets after starting before the workload begins: BPF
/// programs loaded and attached, bpftrace's program compiled.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest wait for a tool to start or to exit.
const PATIENCE: Duration = Duration::from_secs(60);

pub fn start(tool: Tool, context: &Context) -> anyhow::Result<Watcher> {
    start_with(tool, context, &[])
}

/// As [`start`], with extra environment (e.g. `HEARTH_*` settings).
pub fn start_with(tool: Tool, context: &Context, env: &[(&str, &str)]) -> anyhow::Result<Watcher> {
    let hearth = context.hearth.to_str().context("hearth path")?;
    let work = &context.work;
    let file = |name: &str| work.join(name).display().to_string();
    let mut metrics_port = None;
    let (argv, stdout): (Vec<String>, Option<PathBuf>) = match tool {
        Tool::HearthRecord(hz) => (
            vec![
                hearth.into(),
                "record".into(),
                "-F".into(),
                hz.to_string(),
                "--duration".into(),
                "1h".into(),
                "--output".into(),
                file("record.pb.gz"),
            ],
            None,
        ),
        Tool::HearthRun(hz, unwind) => {
            let port = free_port();
            metrics_port = Some(port);
            let mut argv: Vec<String> = vec![
                hearth.into(),
                "run".into(),
                "-F".into(),
                hz.to_string(),
                "--metrics-listen".into(),
                format!("127.0.0.1:{port}"),
                "--control-socket".into(),
                file("ctl/control.sock"),
            ];
            if let Some(unwind) = unwind {
                argv.extend(["--unwind".into(), unwind.into()]);
            }
            (argv, None)
        }
        Tool::Perf(hz) => (
            vec![
                "perf".into(),
                "record".into(),
                "-a".into(),
                "-g".into(),
                "-F".into(),
                hz.to_string(),
                "-q".into(),
                "-o".into(),
                file("perf.data"),
            ],
            None,
        ),
        Tool::Bpftrace(hz) => (
            vec![
                "bpftrace".into(),
                "-e".into(),
                format!("profile:hz:{hz} {{ @[kstack, ustack, comm] = count(); }}"),
            ],
            Some(work.join("bpftrace.out")),
        ),
    };
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    match &stdout {
        Some(path) => command.stdout(std::fs::File::create(path)?),
        None => command.stdout(Stdio::null()),
    };
    let group = Group(
        command
            .spawn()
            .with_context(|| format!("starting {}", tool.name()))?,
    );
    let started = Instant::now();
    let ready = || match (tool, metrics_port, &stdout) {
        (Tool::HearthRun(..), Some(port), _) => http_get(port, "/readyz").is_some(),
        (Tool::Bpftrace(_), _, Some(out)) => {
            std::fs::read_to_string(out).is_ok_and(|t| t.contains("Attaching"))
        }
        _ => true,
    };
    while !ready() {
        if started.elapsed() > PATIENCE {
            bail!("{} did not start within {PATIENCE:?}", tool.name());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(SETTLE);
    Ok(Watcher {
        tool,
        group: Some(group),
        metrics_port,
    })
}

impl Watcher {
    /// CPU seconds the tool's threads have used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.group
            .as_ref()
            .and_then(|g| cpu_seconds(g.pid()))
            .unwrap_or(0.0)
    }

    /// Run time (ns) and runs of the tool's BPF programs so far.
    pub fn bpf_run_time(&self) -> (u64, u64) {
        self.group
            .as_ref()
            .map_or((0, 0), |g| bpf_run_time(g.pid()))
    }

    /// Resident bytes now.
    pub fn rss(&self) -> u64 {
        self.group
            .as_ref()
            .and_then(|g| usage(g.pid()))
            .map_or(0, |(_, rss)| rss)
    }

    /// Hearth run's metrics text.
    pub fn metrics(&self) -> Option<String> {
        http_get(self.metrics_port?, "/metrics")
    }

    /// Stops the tool the way a user would (SIGINT, SIGTERM for the
    /// daemon) and waits for it to finish writing.
    pub fn stop(mut self) -> anyhow::Result<Stopped> {
        let Some(mut group) = self.group.take() else {
            return Ok(Stopped::default());
        };
        let lost = self.metrics().map_or(0.0, |m| {
            metric(&m, "hearth_kernel_samples_lost_total{reason=\"ring_full\"}")
        });
        let peak = peak_rss(group.pid()).unwrap_or(0);
        let signal = match self.tool {
            Tool::HearthRun(..) => libc::SIGTERM,
            _ => libc::SIGINT,
        };
        group.signal(signal);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = group.0.try_wait()? {
                // perf re-raises the signal it stopped on, as a shell expects.
                let stopped_by_us = status.signal() == Some(signal);
                if !status.success() && !stopped_by_us {
                    bail!("{} exited with {status}", self.tool.name());
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("{} did not stop within {PATIENCE:?}", self.tool.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Stopped {
            peak_rss: peak,
            lost,
        })
    }
}

/// Whether `program` can be run (perf and bpftrace come from apt).
pub fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Removes what the tools wrote, so runs do not fill the disk.
pub fn clean(work: &Path) {
    for name in ["record.pb.gz", "perf.data", "perf.data.old", "bpftrace.out"] {
        let _ = std::fs::remove_file(work.join(name));
    }
}
