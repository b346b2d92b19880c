//! `cargo xtask vm-test`: the end-to-end tests that touch the kernel, run
//! inside each of Debian's kernels from 5.10 on (booted by virtme-ng under
//! qemu with the host's root file system) and on the host, with one line
//! per kernel.

mod guest;
mod kernels;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::setup::run_command;
use guest::{Accel, Outcome};
use kernels::{Apt, KERNELS};

/// virtme-ng, from PyPI, in a venv of the cache.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// What `--kernel` takes besides the names in [`KERNELS`].
pub const HOST: &str = "host";

/// Every kernel, in the order they run.
pub fn all_kernels() -> Vec<String> {
    KERNELS
        .iter()
        .map(|k| k.name.to_owned())
        .chain([HOST.to_owned()])
        .collect()
}

/// Where downloads and unpacked kernels are kept between runs.
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    base.join("hearth").join("vm")
}

/// Runs the kernel subset on each of `names`; fails unless all pass.
pub fn run(root: &Path, names: &[String], readme: bool) -> anyhow::Result<()> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let binaries = guest::build_test_binaries(root)?;
    let out = root.join("target/vm-test");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;

    let mut kernels = Vec::new();
    let wants_vm = names.iter().any(|n| n != HOST);
    let vng = if wants_vm {
        Some(install_virtme_ng(&cache)?)
    } else {
        None
    };
    if wants_vm {
        let apt = Apt::new(&cache)?;
        apt.update()?;
        for name in names.iter().filter(|n| *n != HOST) {
            let spec = KERNELS
                .iter()
                .find(|k| k.name == name)
                .with_context(|| format!("no kernel {name} in the list"))?;
            kernels.push(kernels::prepare(&apt, &cache, *spec)?);
        }
    }
    let accel = match (&vng, kernels.first()) {
        (Some(vng), Some(first)) => guest::probe_kvm(vng, first),
        _ => Accel::Tcg,
    };

    let started = Instant::now();
    let mut outcomes = Vec::new();
    for name in names {
        let outcome = if name == HOST {
            guest::run_on_host(root, &binaries, &out.join(HOST))?
        } else {
            let kernel = kernels
                .iter()
                .find(|k| k.spec.name == name)
                .expect("prepared above");
            let vng = vng.as_deref().expect("installed above");
            guest::run_in_vm(root, vng, kernel, accel, &binaries, &out.join(name))?
        };
        println!("{}", outcome.line());
        outcome.report_failures();
        outcomes.push(outcome);
    }
    println!(
        "vm-test: all kernels in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for outcome in &outcomes {
        println!("{}", outcome.line());
    }
    if readme && names.len() == all_kernels().len() {
        guest::write_readme_table(&root.join("README.md"), &outcomes)?;
        println!("vm-test: README.md's kernel table rewritten from this run");
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.green()).collect();
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|o| o.name.as_str()).collect();
        bail!(
            "kernel tests failed on {} (logs in {})",
            names.join(", "),
            out.display()
        );
    }
    Ok(())
}

/// virtme-ng in a venv under `cache`; returns the `vng` path.
fn install_virtme_ng(cache: &Path) -> anyhow::Result<PathBuf> {
    let venv = cache.join("venv");
    let vng = venv.join("bin/vng");
    let works = Command::new(&vng)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(vng);
    }
    println!("vm-test: installing {VIRTME_NG} into {}", venv.display());
    run_command(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("creating a Python venv (Debian's python3-venv)")?;
    run_command(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        VIRTME_NG,
    ]))
    .context("installing virtme-ng from PyPI")?;
    Ok(vng)
}
