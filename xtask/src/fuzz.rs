//! `cargo xtask fuzz`: the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer),
//! each for a bounded time over its corpus in `fuzz/corpus/<target>`, which
//! the run grows and the repository keeps. Prints one line per target with
//! the executions it ran; fails on the first crash, whose input libFuzzer
//! leaves in `fuzz/artifacts/<target>`.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::setup::run_command;

/// The targets, in the order they run.
pub const TARGETS: [&str; 4] = ["unwind_table", "symbolize_elf", "spool_reader", "config"];
/// cargo-fuzz, from crates.io.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Largest input tried (bytes): a whole small ELF object (the seeds are
/// 1–3 KiB static and shared objects with `.eh_frame`, symbols and zlib
/// DWARF), spool files and config files fit; short inputs keep executions
/// fast and the kept corpus small.
const MAX_LEN: &str = "8192";

/// Runs every target for `seconds` each.
pub fn run(root: &Path, seconds: u64) -> anyhow::Result<()> {
    install_cargo_fuzz()?;
    let fuzz = root.join("fuzz");
    for target in TARGETS {
        let corpus = fuzz.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut command = Command::new("cargo");
        command
            .current_dir(&fuzz)
            .args(["+nightly", "fuzz", "run", "--release", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={MAX_LEN}"))
            .arg("-print_final_stats=1")
            .stdin(Stdio::null());
        if let Some(path) = crate::setup::path_with_cargo_bin() {
            command.env("PATH", path);
        }
        let output = command
            .output()
            .with_context(|| format!("running cargo fuzz on {target}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        std::fs::write(
            root.join(format!("target/fuzz-{target}.log")),
            log.as_bytes(),
        )?;
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed ({}); the input is in fuzz/artifacts/{target}:\n{}",
                output.status,
                tail.join("\n")
            );
        }
        let runs = stat(&log, "stat::number_of_executed_units:").unwrap_or(0);
        let corpus_files = std::fs::read_dir(&corpus)?.count();
        println!(
            "fuzz {target}: {runs} executions in {seconds} s, no crash; corpus {corpus_files} inputs"
        );
    }
    Ok(())
}

/// A `-print_final_stats` value.
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().parse().ok())
}

fn install_cargo_fuzz() -> anyhow::Result<()> {
    let works = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    run_command(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
    .context("installing cargo-fuzz from crates.io")
}

#[cfg(test)]
mod tests {
    #[test]
    fn final_stats_are_read() {
        let log = "Done 1234 runs in 10 second(s)\nstat::number_of_executed_units: 1234\n\
                   stat::peak_rss_mb: 80\n";
        assert_eq!(
            super::stat(log, "stat::number_of_executed_units:"),
            Some(1234)
        );
        assert_eq!(super::stat(log, "stat::nothing:"), None);
    }
}
