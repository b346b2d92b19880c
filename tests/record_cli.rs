//! `hearth record` as a user meets it: what it profiles, how it stops, what
//! it prints, and how it fails.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use hearth_tests::*;

const LEAVES: [&str; 2] = ["leaf_a", "leaf_b"];

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_command_and_its_descendants_are_profiled_until_it_exits() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_two_leaves_c(dir.path());
    let out = dir.path().join("cmd.pb.gz");
    // sh forks two fixture processes: both are descendants of the command.
    let script = two_at_once(&fixture, "1.5");
    let output = run_hearth(
        &[
            "record",
            "-F",
            "499",
            "-o",
            path_str(&out),
            "--",
            "sh",
            "-c",
            &script,
        ],
        Duration::from_secs(60),
    );
    assert_success(&output);
    assert!(
        stderr(&output).contains("the command exited"),
        "{}",
        stderr(&output)
    );
    let by_process = pprof_values_by_process(&out);
    let fixture_pids = by_process
        .keys()
        .filter(|(name, _)| name == "two_leaves")
        .count();
    assert_eq!(
        fixture_pids, 2,
        "expected both forked fixtures: {by_process:?}"
    );
    assert!(
        by_process
            .keys()
            .all(|(name, _)| name == "two_leaves" || name == "sh"),
        "only the command's processes belong in the profile: {by_process:?}"
    );
}

#[test]
fn ctrl_c_stops_early_and_still_writes_the_profile() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let target = Running::spawn(&build_two_leaves_c(dir.path()), &["30"]);
    let out = dir.path().join("interrupted.folded");
    let recording = spawn_hearth(&[
        "record",
        "--pid",
        &target.pid().to_string(),
        "-d",
        "60s",
        "-o",
        path_str(&out),
    ]);
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: sending a signal to our own child.
    assert_eq!(
        unsafe { libc::kill(recording.pid() as i32, libc::SIGINT) },
        0
    );
    let output = recording.output_within(Duration::from_secs(20));
    assert_success(&output);
    assert!(
        stderr(&output).contains("interrupted"),
        "{}",
        stderr(&output)
    );
    let counts = folded_leaf_counts(&read_folded(&out), "two_leaves", &LEAVES);
    assert!(
        counts.iter().sum::<u64>() > 50,
        "too few samples kept: {counts:?}"
    );
}

#[test]
fn a_process_that_exited_and_whose_binary_was_deleted_is_still_named() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let vanishing = dir.path().join("vanishing");
    fs::copy(build_two_leaves_c(dir.path()), &vanishing).unwrap();
    let mut target = Running::spawn(&vanishing, &["2"]);
    let out = dir.path().join("gone.folded");
    let recording = spawn_hearth(&[
        "record",
        "--pid",
        &target.pid().to_string(),
        "-F",
        "499",
        "-d",
        "30s",
        "-o",
        path_str(&out),
    ]);
    std::thread::sleep(Duration::from_secs(1));
    fs::remove_file(&vanishing).unwrap();
    target.wait_for(Duration::from_secs(20));
    let output = recording.output_within(Duration::from_secs(30));
    assert_success(&output);
    assert!(
        stderr(&output).contains("the profiled processes exited"),
        "recording should end when its only target exits: {}",
        stderr(&output)
    );
    let stacks = read_folded(&out);
    let counts = folded_leaf_counts(&stacks, "vanishing", &LEAVES);
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "leaves not named after exit and deletion: {stacks:?}"
    );
    let share = full_chain_share(&stacks, "vanishing", &["main", "work"], &LEAVES);
    assert!(share >= 0.9, "frames lost after exit: {share}");
}

#[test]
fn inlined_functions_are_frames_of_their_own_and_cpp_is_demangled() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_cpp(
        "inlined.cpp",
        dir.path(),
        &["-O2", "-g", "-fno-omit-frame-pointer"],
    );
    let out = dir.path().join("inlined.folded");
    let output = run_hearth(
        &[
            "record",
            "-F",
            "499",
            "-o",
            path_str(&out),
            "--",
            path_str(&fixture),
            "1.5",
        ],
        Duration::from_secs(30),
    );
    assert_success(&output);
    let stacks = read_folded(&out);
    let (mut inlined, mut all) = (0, 0);
    for (frames, count) in stacks.iter().filter(|(f, _)| f[0] == "inlined") {
        all += count;
        if frames
            .windows(2)
            .any(|w| w[0].starts_with("fixture::outer") && w[1].starts_with("fixture::mix"))
        {
            inlined += count;
        }
    }
    assert!(all > 0, "no samples of the fixture: {stacks:?}");
    assert!(
        inlined * 2 > all,
        "only {inlined} of {all} samples show fixture::mix inlined under fixture::outer: {stacks:?}"
    );
}

#[test]
fn kernel_frames_are_marked_and_can_be_left_out() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // dd spends most of its time in read/write system calls.
    let dd = [
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=512",
        "count=3000000",
    ];
    let with_kernel = dir.path().join("k.folded");
    let mut args = vec!["record", "-F", "499", "-o", path_str(&with_kernel), "--"];
    args.extend(dd);
    assert_success(&run_hearth(&args, Duration::from_secs(60)));
    let stacks = read_folded(&with_kernel);
    let kernel: u64 = stacks
        .iter()
        .filter(|(f, _)| f.iter().any(|frame| frame.ends_with("_[k]")))
        .map(|(_, c)| c)
        .sum();
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    assert!(
        kernel * 2 > total,
        "dd should be mostly in the kernel: {kernel} of {total}"
    );

    let without = dir.path().join("u.folded");
    let mut args = vec![
        "record",
        "--no-kernel",
        "-F",
        "499",
        "-o",
        path_str(&without),
        "--",
    ];
    args.extend(dd);
    assert_success(&run_hearth(&args, Duration::from_secs(60)));
    let stacks = read_folded(&without);
    assert!(!stacks.is_empty());
    assert!(
        stacks
            .iter()
            .all(|(f, _)| f.iter().all(|frame| !frame.ends_with("_[k]"))),
        "--no-kernel still has kernel frames"
    );
}

#[test]
fn the_progress_line_shows_on_a_terminal_only() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let target = Running::spawn(&build_two_leaves_c(dir.path()), &["10"]);
    let pid = target.pid().to_string();

    let plain = dir.path().join("plain.folded");
    let output = run_hearth(
        &[
            "record",
            "--pid",
            &pid,
            "-d",
            "1500ms",
            "-o",
            path_str(&plain),
        ],
        Duration::from_secs(30),
    );
    assert_success(&output);
    let text = stderr(&output);
    // The summary: what was written, then what the unwinder did.
    assert!(
        text.lines()
            .all(|l| l.starts_with("hearth: wrote") || l.starts_with("hearth: unwind tables:"))
            && !text.contains('\r'),
        "only the summary when not on a terminal: {text:?}"
    );
    assert!(text.starts_with("hearth: wrote"), "{text}");

    // `script` runs hearth on a pseudo-terminal and copies what it draws.
    let on_tty = dir.path().join("tty.folded");
    let command = format!(
        "{} record --pid {pid} -d 1500ms -o {}",
        hearth_bin().display(),
        on_tty.display()
    );
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .output()
        .expect("run script (util-linux)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let drawn = String::from_utf8_lossy(&output.stdout);
    assert!(
        drawn.contains("recording") && drawn.contains("samples") && drawn.contains("lost"),
        "no live status line on the terminal: {drawn:?}"
    );
}

#[test]
fn without_privileges_the_error_says_what_to_do() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let hearth = dir.path().join("hearth");
    fs::copy(hearth_bin(), &hearth).unwrap();
    let out = dir.path().join("flame.svg");
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&hearth)
        .args(["record", "-d", "1s", "-o", path_str(&out)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("CAP_BPF") && text.contains("sudo"), "{text}");
    assert!(!out.exists());
}

#[test]
fn bad_requests_fail_fast_with_what_would_work() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["record", "--pid", "99999999"],
            "no process with PID 99999999",
        ),
        (
            &["record", "-o", "/nonexistent-dir/flame.svg"],
            "choose another --output",
        ),
        (&["record", "-o", "flame.json"], "--format"),
        (&["record", "--format", "json"], "svg"),
    ];
    for (args, expected) in cases {
        let output = run_hearth(args, Duration::from_secs(10));
        let text = stderr(&output);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(
            text.contains(expected),
            "{args:?}: {text:?} lacks {expected:?}"
        );
    }
}

/// A full disk must not cost the recording: it is saved elsewhere and the
/// error says where.
#[test]
fn a_failed_write_saves_the_profile_elsewhere() {
    require_root();
    let mount = tempfile::tempdir().unwrap();
    let tiny = TinyTmpfs::mount(mount.path());
    let out = tiny.0.join("flame.svg");
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_two_leaves_c(dir.path());
    let output = run_hearth(
        &[
            "record",
            "-o",
            path_str(&out),
            "--",
            path_str(&fixture),
            "1",
        ],
        Duration::from_secs(30),
    );
    let text = stderr(&output);
    assert!(
        !output.status.success(),
        "writing to a 4 KiB filesystem should fail: {text}"
    );
    let saved = text
        .split("saved to ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no rescue path in {text:?}"));
    let saved = PathBuf::from(saved);
    let titles = svg_frame_titles(&saved);
    fs::remove_file(&saved).unwrap();
    assert!(!titles.is_empty(), "the rescued flamegraph is empty");
}

struct TinyTmpfs(PathBuf);

impl TinyTmpfs {
    fn mount(at: &Path) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Self(at.to_owned())
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Samples the ring cannot take are counted in the kernel and reported.
#[test]
fn samples_lost_to_a_full_ring_are_counted_and_reported() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_two_leaves_c(dir.path());
    let out = dir.path().join("lossy.folded");
    // Two busy processes fill both CPUs while the agent runs in the idle
    // scheduling class, so it reads only when they let it: a small ring
    // at a high rate must overflow, as it would for a starved agent.
    let script = two_at_once(&fixture, "2");
    let mut command = std::process::Command::new("chrt");
    command
        .args(["--idle", "0"])
        .arg(hearth_bin())
        .args([
            "record",
            "-F",
            "4999",
            "--ring-buffer-size",
            "8KiB",
            "-o",
            path_str(&out),
        ])
        .args(["--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let output = Running::from_child(command.spawn().expect("run chrt (util-linux)"))
        .output_within(Duration::from_secs(60));
    assert_success(&output);
    let text = stderr(&output);
    let lost: u64 = text
        .split(" samples were lost because the ring buffer was full")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lost-sample report in {text:?}"));
    assert!(lost > 0, "{text}");
    let kept: u64 = read_folded(&out).iter().map(|(_, c)| c).sum();
    assert!(kept > 0, "what did fit must still be written");
}
