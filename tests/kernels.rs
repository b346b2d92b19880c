//! What every supported kernel must do, run on the host and, by `cargo
//! xtask vm-test`, inside each kernel of the list: CPU stacks walked by
//! frame pointer and by unwind table, every network event recorded or
//! refused by name, and a clear error when the kernel's BTF is missing or
//! unreadable. Each check reads what `hearth record` wrote, with nothing
//! but the fixture's own construction (75% of its work in `leaf_a`) to
//! compare against, so it holds under software emulation too.

use std::{path::Path, process::Command, time::Duration};

use hearth_tests::*;

const LEAVES: [&str; 2] = ["leaf_a", "leaf_b"];
/// Long enough for a thousand samples under emulation, where loading a
/// process's unwind tables (the first ~0.3 s, walked without them) is a
/// smaller share of the run.
const SECONDS: &str = "8";
const LIMIT: Duration = Duration::from_secs(180);

/// Records `fixture SECONDS 75` with `--unwind unwind` and checks its split
/// and that samples carry `main → work → leaf`.
fn check_cpu(fixture: &Path, unwind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let folded = dir.path().join("cpu.folded");
    let output = run_hearth(
        &[
            "record",
            "-F",
            "299",
            "--unwind",
            unwind,
            "--output",
            folded.to_str().unwrap(),
            "--",
            fixture.to_str().unwrap(),
            SECONDS,
            "75",
        ],
        LIMIT,
    );
    assert_success(&output);
    eprintln!("{}", stderr(&output));
    let stacks = read_folded(&folded);
    let counts = folded_leaf_counts(&stacks, "two_leaves", &LEAVES);
    let share_a = percent_first(&counts);
    let chains = ordered_chain_share(&stacks, "two_leaves", &["main", "work"], &LEAVES);
    eprintln!(
        "--unwind {unwind}: leaf_a {share_a:.1}% of {counts:?}; {:.1}% of samples carry main → \
         work → leaf",
        chains * 100.0
    );
    let total: u64 = counts.iter().sum();
    assert!(total >= 100, "too few leaf samples: {counts:?}");
    assert!(
        (share_a - 75.0).abs() <= 6.0,
        "leaf_a has {share_a:.1}% of the samples, the fixture spends 75% there"
    );
    assert!(
        chains >= 0.90,
        "only {:.1}% of samples carry the whole chain",
        chains * 100.0
    );
}

#[test]
fn cpu_stacks_by_frame_pointer() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    check_cpu(&build_two_leaves_c(dir.path()), "fp");
}

#[test]
fn cpu_stacks_without_frame_pointers_by_unwind_table() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_c(
        "two_leaves.c",
        dir.path(),
        &["-O2", "-fomit-frame-pointer", "-fno-ipa-icf", "-g"],
    );
    check_cpu(&fixture, "dwarf");
}

/// Every network event is either written (its file exists and the summary
/// names it) or refused by name with the reason, and the rest still run.
#[test]
fn every_network_event_is_recorded_or_refused_by_name() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_c(
        "net_bytes.c",
        dir.path(),
        &["-O2", "-fno-omit-frame-pointer"],
    );
    let events = hearth_devtools::NETWORK_EVENTS;
    let out = dir.path().join("net.folded");
    let mut args = vec!["record", "--output", out.to_str().unwrap()];
    for event in &events {
        args.extend(["--event", event]);
    }
    args.extend(["--", fixture.to_str().unwrap(), "pair", "8000"]);
    let output = run_hearth(&args, LIMIT);
    assert_success(&output);
    let summary = stderr(&output);
    eprintln!("{summary}");
    for event in events {
        let refused = summary.contains(&format!("event `{event}` is not recorded: "));
        let file = dir.path().join(format!("net.{event}.folded"));
        let written = summary.contains(&format!("({event}, folded)")) && file.exists();
        assert!(
            refused != written,
            "{event} must be either recorded or refused by name: {summary}"
        );
    }
    // The fixture's sends and receives are exact, wherever they are served.
    for (event, bytes) in [("tx-bytes", 8000u64), ("rx-bytes", 8000)] {
        let file = dir.path().join(format!("net.{event}.folded"));
        if file.exists() {
            let total: u64 = read_folded(&file)
                .iter()
                .filter(|(frames, _)| frames[0] == "net_bytes")
                .map(|(_, count)| count)
                .sum();
            assert_eq!(total, bytes, "{event} of the fixture");
        }
    }
}

/// Runs `hearth record` in a mount namespace whose /sys/kernel/btf holds
/// `vmlinux` (or nothing, when None) and returns its failure message.
fn record_with_btf(vmlinux: Option<&[u8]>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let btf = dir.path().join("vmlinux");
    let setup = match vmlinux {
        Some(bytes) => {
            std::fs::write(&btf, bytes).unwrap();
            format!(
                "mount -t tmpfs none /sys/kernel/btf && cp {} /sys/kernel/btf/vmlinux",
                btf.display()
            )
        }
        None => "mount -t tmpfs none /sys/kernel/btf".to_owned(),
    };
    let script = format!(
        "{setup} && exec {} record --duration 1s --output {}",
        hearth_bin().display(),
        dir.path().join("out.folded").display()
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare (util-linux)");
    assert!(!output.status.success(), "hearth ran without BTF");
    assert!(
        !dir.path().join("out.folded").exists(),
        "nothing to write without probes"
    );
    stderr(&output)
}

#[test]
fn a_kernel_without_btf_gets_a_message_that_says_what_to_install() {
    require_root();
    let message = record_with_btf(None);
    eprintln!("{message}");
    assert!(message.contains("publishes no BTF"), "{message}");
    assert!(message.contains("CONFIG_DEBUG_INFO_BTF=y"), "{message}");
    assert!(
        message.contains("apt install linux-image-amd64"),
        "{message}"
    );
}

#[test]
fn unreadable_btf_is_named_and_explained() {
    require_root();
    let message = record_with_btf(Some(b"\x9f\xeb\x01\x00 not BTF at all, a truncated header"));
    eprintln!("{message}");
    assert!(
        message.contains("could not read kernel BTF from /sys/kernel/btf/vmlinux"),
        "{message}"
    );
    assert!(message.contains("host's sysfs"), "{message}");
}
