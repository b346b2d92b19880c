//! The workloads: a fixed amount of CPU-bound work on every core, a churn
//! of short-lived processes, and hundreds of mostly idle processes with
//! distinct binaries.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::procs::{Group, spawn_group};

/// Compiles `source` (embedded) into `work/name` with frame pointers, as
/// the profilers walk them.
fn compile(work: &Path, name: &str, source: &str, extra: &[&str]) -> anyhow::Result<PathBuf> {
    let c = work.join(format!("{name}.c"));
    std::fs::write(&c, source)?;
    let out = work.join(name);
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"])
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg(&c)
        .status()
        .context("running gcc (cargo xtask setup installs it)")?;
    if !status.success() {
        bail!("compiling {name} failed");
    }
    Ok(out)
}

/// The CPU-bound workload, sized to take about `seconds` alone.
pub struct CpuWork {
    program: PathBuf,
    pub threads: usize,
    pub rounds: u64,
}

impl CpuWork {
    pub fn build(work: &Path, threads: usize, seconds: f64) -> anyhow::Result<Self> {
        // As distribution packages are built: the table unwinder's case.
        let program = compile(
            work,
            "cpu_work",
            include_str!("cpu_work.c"),
            &["-fomit-frame-pointer"],
        )?;
        let mut this = Self {
            program,
            threads,
            rounds: 20_000,
        };
        // Scale the work from a short run (after a warm-up one), then once
        // more from a run of about the wanted length.
        this.run()?;
        for _ in 0..2 {
            let took = this.run()?;
            this.rounds = ((this.rounds as f64) * seconds / took).max(1.0) as u64;
        }
        Ok(this)
    }

    /// Runs the fixed work once; its wall time in seconds.
    pub fn run(&self) -> anyhow::Result<f64> {
        let started = Instant::now();
        let status = Command::new(&self.program)
            .args([self.threads.to_string(), self.rounds.to_string()])
            .stdout(Stdio::null())
            .status()
            .context("running the CPU workload")?;
        if !status.success() {
            bail!("the CPU workload failed: {status}");
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

/// The short-lived process of the churn: burns `burn_us` in its own
/// function, then exits.
pub fn build_short_lived(work: &Path) -> anyhow::Result<PathBuf> {
    compile(work, "short_lived", include_str!("idle_work.c"), &[])
}

/// Starts `count` runs of `program` (built by [`build_short_lived`]), one
/// after another, `parallel` at a time; returns when all have exited.
pub fn churn(program: &Path, burn_us: u64, count: usize, parallel: usize) -> anyhow::Result<()> {
    let per_shell = count / parallel;
    let program = program.display();
    let script =
        format!("i=0; while [ $i -lt {per_shell} ]; do {program} 0 {burn_us}; i=$((i+1)); done");
    let shells: Vec<_> = (0..parallel)
        .map(|_| {
            Command::new("sh")
                .args(["-c", &script])
                .spawn()
                .context("starting the churn")
        })
        .collect::<Result<_, _>>()?;
    for mut shell in shells {
        if !shell.wait()?.success() {
            bail!("the churn shell failed");
        }
    }
    Ok(())
}

/// `count` copies of the idle workload, each linked with its own build id
/// (distinct binaries to the profiler), waking every `period_ms` to burn
/// `burn_us`.
pub fn many_processes(
    work: &Path,
    count: usize,
    period_ms: u64,
    burn_us: u64,
) -> anyhow::Result<Vec<Group>> {
    let dir = work.join("many");
    std::fs::create_dir_all(&dir)?;
    let object = dir.join("idle_work.o");
    let source = dir.join("idle_work.c");
    std::fs::write(&source, include_str!("idle_work.c"))?;
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-c", "-o"])
        .arg(&object)
        .arg(&source)
        .status()
        .context("running gcc")?;
    if !status.success() {
        bail!("compiling the idle workload failed");
    }
    let mut groups = Vec::with_capacity(count);
    for i in 0..count {
        let program = dir.join(format!("idle_{i:04}"));
        if !program.exists() {
            let status = Command::new("gcc")
                .arg(format!(
                    "-Wl,--build-id=0x{:032x}",
                    0x4845_4152_5448_0000u128 + i as u128
                ))
                .arg("-o")
                .arg(&program)
                .arg(&object)
                .status()
                .context("linking an idle workload copy")?;
            if !status.success() {
                bail!("linking {} failed", program.display());
            }
        }
        let program = program.to_str().context("path")?.to_owned();
        groups.push(spawn_group(&[
            &program,
            &period_ms.to_string(),
            &burn_us.to_string(),
        ])?);
    }
    Ok(groups)
}
