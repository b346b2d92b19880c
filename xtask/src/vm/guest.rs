//! Running the kernel subset of the end-to-end tests: in a VM booted by
//! virtme-ng with the host's root file system, or on the host itself, and
//! reading back what the test binaries printed.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::kernels::Kernel;

/// The tests every kernel runs: what loads and exercises every program —
/// CPU stacks by frame pointer and by unwind table, every network event,
/// socket events' and off-CPU stacks walked by table through libc,
/// scoping by cgroup in the kernel, on-demand attach and detach, and the
/// unwinder's maps emptied when processes exit. The accuracy comparisons
/// against `perf` and the exporter tests run on the host only (`cargo
/// xtask test`): they test userspace, which is the same on every kernel.
pub const SUBSET: &[(&str, &[&str])] = &[
    (
        "kernels",
        &[
            "cpu_stacks_by_frame_pointer",
            "cpu_stacks_without_frame_pointers_by_unwind_table",
            "every_network_event_is_recorded_or_refused_by_name",
            "a_kernel_without_btf_gets_a_message_that_says_what_to_install",
            "unreadable_btf_is_named_and_explained",
        ],
    ),
    (
        "network",
        &[
            "bytes_sent_and_received_are_attributed_exactly_to_the_functions_that_moved_them",
            "retransmits_over_a_lossy_link_agree_with_the_kernel_counter",
            "resets_and_connect_latency_are_measured_on_real_connections",
            "bytes_through_libc_wrappers_sit_under_the_functions_that_called_them",
        ],
    ),
    (
        "offcpu",
        &["off_cpu_time_splits_as_the_fixture_measured_it_with_whole_chains"],
    ),
    (
        "scope",
        &["kubelet_cgroups_name_the_container_and_scoping_drops_the_rest_in_the_kernel"],
    ),
    (
        "oncall",
        &["on_demand_attaches_nothing_until_enabled_and_detaches_when_the_window_ends"],
    ),
    (
        "unwind",
        &[
            "per_process_maps_are_empty_after_the_processes_exit",
            "the_row_store_grows_with_the_objects_and_gives_shards_back",
        ],
    ),
];

/// Longest a VM may take to boot and run the subset.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Memory and CPUs of each VM.
const VM_MEMORY: &str = "4G";
const VM_CPUS: &str = "2";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Builds the end-to-end test binaries and returns them by target name.
pub fn build_test_binaries(root: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(&cargo);
    build.current_dir(root).args(["build", "--release"]);
    if let Some(path) = crate::setup::path_with_cargo_bin() {
        build.env("PATH", path);
    }
    crate::setup::run_command(&mut build)?;
    let mut tests = Command::new(&cargo);
    tests.current_dir(root).args([
        "test",
        "--release",
        "-p",
        "hearth-tests",
        "--no-run",
        "--message-format=json",
    ]);
    if let Some(path) = crate::setup::path_with_cargo_bin() {
        tests.env("PATH", path);
    }
    let output = tests
        .stderr(Stdio::inherit())
        .output()
        .context("building the end-to-end tests")?;
    if !output.status.success() {
        bail!("building the end-to-end tests failed");
    }
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (
            message.pointer("/target/name").and_then(|v| v.as_str()),
            message.get("executable").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        binaries.insert(name.to_owned(), PathBuf::from(exe));
    }
    for (target, _) in SUBSET {
        if !binaries.contains_key(*target) {
            bail!("cargo built no test binary {target}");
        }
    }
    Ok(binaries)
}

/// How much longer than on the host the tests may wait under emulation.
const TCG_TIME_SCALE: u32 = 5;

/// The script that runs the subset and writes its logs into `out`.
fn script(
    root: &Path,
    binaries: &BTreeMap<String, PathBuf>,
    out: &Path,
    accel: Option<Accel>,
) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let hearth = root.join("target/release/hearth");
    let scale = if accel == Some(Accel::Tcg) {
        TCG_TIME_SCALE
    } else {
        1
    };
    let mut text = format!(
        "export PATH='{path}'\nexport XTASK_TIME_SCALE={scale}\ncd '{}'\n\
         '{}' check --json > '{}/check.json' 2> '{}/check.err'\n",
        root.display(),
        hearth.display(),
        out.display(),
        out.display()
    );
    for (target, tests) in SUBSET {
        let binary = binaries[*target].display();
        let log = format!("{}/{target}.log", out.display());
        let _ = writeln!(
            text,
            "'{binary}' --test-threads=1 --exact {} > '{log}' 2>&1",
            tests.join(" "),
        );
        // A test that failed runs once more, alone, into a log of its own
        // (emulated kernels are slow and uneven; a second failure stands).
        let _ = writeln!(text, "retry=''");
        for test in *tests {
            let _ = writeln!(
                text,
                "grep -qx '    {test}' '{log}' && retry=\"$retry {test}\""
            );
        }
        let _ = writeln!(
            text,
            "[ -n \"$retry\" ] && '{binary}' --test-threads=1 --exact $retry > '{}/{target}.retry.log' 2>&1",
            out.display()
        );
    }
    text.push_str("echo hearth-vm-test-done\n");
    text
}

/// `vng`, run with its venv's bin directory first on PATH (it starts
/// `virtme-run` from there), under `timeout` so a hung boot ends.
fn vng_command(vng: &Path, timeout: Duration) -> Command {
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=10", &timeout.as_secs().to_string()])
        .arg(vng);
    let bin = vng.parent().expect("vng lives in a venv's bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(bin.to_owned()).chain(std::env::split_paths(&path));
    command.env(
        "PATH",
        std::env::join_paths(dirs).expect("PATH entries without ':'"),
    );
    command
}

/// Whether KVM runs Debian's kernels here: one short boot with it. Some
/// hosts' KVM (nested, or paravirtual backends) cannot; qemu's emulation
/// (TCG) is used then.
pub fn probe_kvm(vng: &Path, kernel: &Kernel) -> Accel {
    let output = vng_command(vng, Duration::from_secs(90))
        .arg("--run")
        .arg(&kernel.image)
        .args([
            "--cpus",
            "1",
            "--memory",
            "1G",
            "--exec",
            "echo hearth-kvm-works",
        ])
        .stdin(Stdio::null())
        .output();
    let works =
        output.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("hearth-kvm-works"));
    let accel = if works { Accel::Kvm } else { Accel::Tcg };
    println!(
        "vm-test: {}",
        if works {
            "KVM runs the kernels"
        } else {
            "KVM cannot run Debian's kernels on this host; using qemu's emulation (TCG)"
        }
    );
    accel
}

/// Boots `kernel` and runs the subset in it; boots again once if the VM
/// left no result (a hung boot).
pub fn run_in_vm(
    root: &Path,
    vng: &Path,
    kernel: &Kernel,
    accel: Accel,
    binaries: &BTreeMap<String, PathBuf>,
    out: &Path,
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(out)?;
    let script_path = out.join("run.sh");
    std::fs::write(&script_path, script(root, binaries, out, Some(accel)))?;
    let started = Instant::now();
    for attempt in 1..=2 {
        let console = std::fs::File::create(out.join(format!("console-{attempt}.log")))?;
        let mut command = vng_command(vng, VM_TIMEOUT);
        command.arg("--run").arg(&kernel.image);
        if accel == Accel::Tcg {
            command.arg("--disable-kvm");
        }
        let status = command
            .args(["--cpus", VM_CPUS, "--memory", VM_MEMORY, "--rwdir"])
            .arg(out)
            .arg("--exec")
            .arg(format!("sh '{}'", script_path.display()))
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .status()
            .context("running vng (virtme-ng)")?;
        if out.join("check.json").exists() || out.join("check.err").exists() {
            break;
        }
        println!(
            "vm-test: {} left no result on boot {attempt} ({status}); see {}",
            kernel.spec.name,
            out.display()
        );
    }
    Ok(Outcome::read(
        kernel.spec.name,
        &kernel.version,
        kernel.spec.release,
        Some(accel),
        out,
        started.elapsed(),
    ))
}

/// Runs the subset on the running kernel.
pub fn run_on_host(
    root: &Path,
    binaries: &BTreeMap<String, PathBuf>,
    out: &Path,
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(out)?;
    let script_path = out.join("run.sh");
    std::fs::write(&script_path, script(root, binaries, out, None))?;
    let started = Instant::now();
    let status = Command::new("sh")
        .arg(&script_path)
        .current_dir(root)
        .stdout(Stdio::null())
        .status()
        .context("running the kernel tests on the host")?;
    if !status.success() {
        bail!("the kernel test script failed on the host: {status}");
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Ok(Outcome::read(
        super::HOST,
        release.trim(),
        "this machine",
        None,
        out,
        started.elapsed(),
    ))
}

/// What one kernel's run gave.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub version: String,
    pub release: String,
    pub accel: Option<Accel>,
    pub passed: usize,
    pub failed: usize,
    pub seconds: f64,
    /// `hearth check --json` in that kernel.
    pub check: Option<serde_json::Value>,
    /// What each failed test printed (libtest's failure section), or why
    /// it gave no result.
    pub failures: Vec<(String, String)>,
    /// Tests that failed once and passed when run again, with what the
    /// first run printed.
    pub retried: Vec<(String, String)>,
}

impl Outcome {
    fn read(
        name: &str,
        version: &str,
        release: &str,
        accel: Option<Accel>,
        out: &Path,
        elapsed: Duration,
    ) -> Self {
        let (mut passed, mut failed) = (0, 0);
        let mut failures = Vec::new();
        let mut retried = Vec::new();
        for (target, tests) in SUBSET {
            let log_path = out.join(format!("{target}.log"));
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let retry_log = std::fs::read_to_string(out.join(format!("{target}.retry.log")))
                .unwrap_or_default();
            let (p, f) = count_results(&log);
            passed += p;
            // Tests that never reported (the VM died, or a filter matched
            // nothing) count as failed.
            failed += f + tests.len().saturating_sub(p + f);
            let before = failures.len();
            let failed_first = failed_tests(&log);
            let failed_again = failed_tests(&retry_log);
            let (retry_passed, _) = count_results(&retry_log);
            for test in *tests {
                let Some(why) = failure_of(&log, test, &failed_first) else {
                    continue;
                };
                let name = format!("{target}::{test}");
                if retry_passed > 0 && !failed_again.iter().any(|t| t == test) {
                    // Passed when run again: counted as passed, and named.
                    passed += 1;
                    failed = failed.saturating_sub(1);
                    retried.push((name, why));
                } else {
                    failures.push((name, why));
                }
            }
            if p + f < tests.len() && failures.len() == before {
                failures.push((
                    target.to_string(),
                    format!("no result in {}", log_path.display()),
                ));
            }
        }
        let check = std::fs::read_to_string(out.join("check.json"))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        if check.is_none() {
            failed += 1;
            let err = std::fs::read_to_string(out.join("check.err")).unwrap_or_default();
            failures.push(("hearth check --json".to_owned(), tail(&err, FAILURE_LINES)));
        }
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            release: release.to_owned(),
            accel,
            passed,
            failed,
            seconds: elapsed.as_secs_f64(),
            check,
            failures,
            retried,
        }
    }

    /// Every failed test with what it printed, for the log of a red run.
    pub fn report_failures(&self) {
        for (test, why) in &self.retried {
            println!(
                "vm-test {}: {test} failed once, then passed when run again; the first run:\n{why}",
                self.name
            );
        }
        for (test, why) in &self.failures {
            println!("vm-test {}: FAILED {test}:\n{why}", self.name);
        }
    }

    pub fn green(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }

    /// `vm-test 5.10 (5.10.0-46-amd64, Debian 11, TCG, 312 s): 11 passed, 0 failed`
    pub fn line(&self) -> String {
        let how = match self.accel {
            Some(Accel::Kvm) => ", KVM",
            Some(Accel::Tcg) => ", TCG",
            None => "",
        };
        let retried = match self.retried.len() {
            0 => String::new(),
            n => format!(" ({n} on a second run)"),
        };
        format!(
            "vm-test {} ({}, {}{how}, {:.0} s): {} passed{retried}, {} failed",
            self.name, self.version, self.release, self.seconds, self.passed, self.failed
        )
    }
}

/// Lines of a failed test's output shown in the run's own log.
const FAILURE_LINES: usize = 60;

/// The tests libtest lists as failed at the end of `log` (the names under
/// its last `failures:` line).
fn failed_tests(log: &str) -> Vec<String> {
    let Some(at) = log.rfind("\nfailures:\n") else {
        return Vec::new();
    };
    log[at..]
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with("    "))
        .map(|line| line.trim().to_owned())
        .collect()
}

/// What libtest printed for `test` if it is among `failed`: its `---- test
/// stdout ----` section (last [`FAILURE_LINES`] lines); `None` if it
/// passed or never ran.
fn failure_of(log: &str, test: &str, failed: &[String]) -> Option<String> {
    if !failed.iter().any(|t| t == test) {
        return None;
    }
    let header = format!("---- {test} stdout ----");
    let section: Vec<&str> = log
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.starts_with("---- ") && *l != "failures:")
        .collect();
    Some(tail(&section.join("\n"), FAILURE_LINES))
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sums libtest's `test result: ok. N passed; M failed;` lines.
fn count_results(log: &str) -> (usize, usize) {
    let number_before = |line: &str, word: &str| -> usize {
        line.split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    log.lines()
        .filter(|line| line.starts_with("test result:"))
        .fold((0, 0), |(p, f), line| {
            (
                p + number_before(line, "passed"),
                f + number_before(line, "failed"),
            )
        })
}

const TABLE_START: &str = "<!-- kernel-table:start (cargo xtask vm-test writes this) -->";
const TABLE_END: &str = "<!-- kernel-table:end -->";

/// Rewrites the table of tested kernels in the README from `outcomes`.
pub fn write_readme_table(readme: &Path, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(readme)?;
    let (Some(start), Some(end)) = (text.find(TABLE_START), text.find(TABLE_END)) else {
        bail!("README.md has no kernel table markers");
    };
    let mut table = format!(
        "{TABLE_START}\n\n| kernel | from | events | send/receive hooks | user registers | drop / \
         reset reasons | kernel tests |\n|---|---|---|---|---|---|---|\n"
    );
    for outcome in outcomes {
        let _ = writeln!(table, "{}", table_row(outcome));
    }
    table.push('\n');
    let rewritten = format!("{}{table}{}", &text[..start], &text[end..]);
    std::fs::write(readme, rewritten)?;
    Ok(())
}

fn table_row(outcome: &Outcome) -> String {
    let events = outcome
        .check
        .as_ref()
        .and_then(|c| c.get("events"))
        .and_then(|e| e.as_array())
        .cloned()
        .unwrap_or_default();
    let detail = |name: &str| -> String {
        events
            .iter()
            .find(|e| e.get("event").and_then(|v| v.as_str()) == Some(name))
            .and_then(|e| e.get("detail").and_then(|d| d.as_str()))
            .unwrap_or("")
            .to_owned()
    };
    let served: Vec<&str> = events
        .iter()
        .filter(|e| e.get("supported").and_then(|v| v.as_bool()) == Some(true))
        .filter_map(|e| e.get("event").and_then(|v| v.as_str()))
        .collect();
    let refused: Vec<&str> = events
        .iter()
        .filter(|e| e.get("supported").and_then(|v| v.as_bool()) == Some(false))
        .filter_map(|e| e.get("event").and_then(|v| v.as_str()))
        .collect();
    let events = if refused.is_empty() {
        format!("all {}", served.len())
    } else {
        format!("{} (refused: {})", served.len(), refused.join(", "))
    };
    let hooks = if detail("tx-bytes").contains("fexit") {
        "fexit on inet/inet6 sendmsg, recvmsg"
    } else {
        "socket tracepoints"
    };
    let registers = outcome
        .check
        .as_ref()
        .and_then(|c| c.get("user_registers").and_then(|v| v.as_str()))
        .map(|r| {
            if r.starts_with("bpf_") {
                "bpf_task_pt_regs"
            } else {
                "task stack"
            }
        })
        .unwrap_or("?");
    let yes = |text: String, missing: &str| if text.contains(missing) { "no" } else { "yes" };
    format!(
        "| {} | {} | {events} | {hooks} | {registers} | {} / {} | {} passed, {} failed |",
        outcome.version,
        outcome.release,
        yes(detail("drops"), "no drop reasons"),
        yes(detail("resets"), "no reset reasons"),
        outcome.passed,
        outcome.failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summaries_are_summed() {
        let log = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\
            test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 3 filtered out; finished in 1.2s\n\
            test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s\n";
        assert_eq!(count_results(log), (5, 1));
        assert_eq!(count_results(""), (0, 0));
    }

    #[test]
    fn a_failed_tests_section_is_kept() {
        let log = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n\
            ---- b stdout ----\nthread 'b' panicked at x.rs:1:2:\nshare 0.80 < 0.90\n\n\
            failures:\n    b\n";
        let failed = failed_tests(log);
        assert_eq!(failed, ["b"]);
        assert_eq!(failure_of(log, "a", &failed), None);
        let why = failure_of(log, "b", &failed).expect("b failed");
        assert!(why.contains("share 0.80 < 0.90"), "{why}");
        assert!(!why.contains("failures:"), "{why}");
    }
}
