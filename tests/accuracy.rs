//! Accuracy against the reference profiler: fixtures with a known CPU split
//! between two leaf functions are profiled by `perf record` and by hearth at
//! the same time, and the two must agree. The same runs check that stacks
//! are complete and that independent readers accept hearth's files.

use std::{path::Path, time::Duration};

use hearth_tests::*;

/// Both profilers sample at this rate; ~5,000 samples each over the window
/// put one sigma of the split at about 0.6 points.
const HZ: u32 = 999;
const WINDOW_SECONDS: f64 = 5.0;
const LEAVES: [&str; 2] = ["leaf_a", "leaf_b"];

struct Outputs {
    perf_counts: Vec<u64>,
    folded: Vec<FoldedStack>,
    pprof: std::path::PathBuf,
    svg: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs `fixture` and profiles it with perf and three hearth recordings
/// (folded, pprof, SVG) over the same window.
fn profile_side_by_side(fixture: &Path, dir: tempfile::TempDir) -> Outputs {
    let run_seconds = (WINDOW_SECONDS + 4.0).to_string();
    let mut target = Running::spawn(fixture, &[&run_seconds, "75"]);
    std::thread::sleep(Duration::from_millis(300)); // past start-up, into work()
    let pid = target.pid().to_string();
    let perf_data = dir.path().join("perf.data");
    let perf = spawn_perf_record(target.pid(), WINDOW_SECONDS, HZ, &perf_data);
    let window = format!("{WINDOW_SECONDS}s");
    let hz = HZ.to_string();
    let outputs = ["out.folded", "out.pb.gz", "out.svg"].map(|name| dir.path().join(name));
    let recordings: Vec<Running> = outputs
        .iter()
        .map(|out| {
            spawn_hearth(&[
                "record",
                "--pid",
                &pid,
                "-F",
                &hz,
                "--duration",
                &window,
                "--output",
                out.to_str().unwrap(),
            ])
        })
        .collect();
    for recording in recordings {
        assert_success(&recording.output_within(Duration::from_secs(60)));
    }
    let perf = perf.output_within(Duration::from_secs(60));
    assert!(perf.status.success(), "perf record: {}", stderr(&perf));
    target.wait_for(Duration::from_secs(30));
    let [folded, pprof, svg] = outputs;
    Outputs {
        perf_counts: perf_leaf_counts(&perf_data, &LEAVES),
        folded: read_folded(&folded),
        pprof,
        svg,
        _dir: dir,
    }
}

fn check(fixture: &Path, process: &str, chain: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = profile_side_by_side(fixture, dir);

    let hearth_counts = folded_leaf_counts(&out.folded, process, &LEAVES);
    let (hearth_a, perf_a) = (
        percent_first(&hearth_counts),
        percent_first(&out.perf_counts),
    );
    eprintln!(
        "{process}: leaf_a share hearth {hearth_a:.2}% ({hearth_counts:?}), perf {perf_a:.2}% ({:?})",
        out.perf_counts
    );
    assert!(
        (hearth_a - perf_a).abs() <= 3.0,
        "hearth says leaf_a has {hearth_a:.2}% of the leaf samples, perf says {perf_a:.2}%"
    );
    // The fixture's own split is 75/25 by construction.
    assert!(
        (hearth_a - 75.0).abs() <= 5.0,
        "split {hearth_a:.2}% is far from 75%"
    );

    let share = full_chain_share(&out.folded, process, chain, &LEAVES);
    eprintln!(
        "{process}: {:.2}% of samples carry main → … → leaf",
        share * 100.0
    );
    assert!(
        share >= 0.90,
        "only {:.1}% of samples carry the full chain",
        share * 100.0
    );

    let top = pprof_top_functions(&out.pprof);
    assert!(
        top.first().is_some_and(|f| names(f, "leaf_a")),
        "go tool pprof -top puts {top:?} first, not leaf_a"
    );
    let header = go_pprof(&["-top", "-nodecount=1", out.pprof.to_str().unwrap()]);
    assert!(header.contains("Type: cpu"), "{header}");

    let titles = svg_frame_titles(&out.svg);
    for function in chain.iter().chain(&LEAVES) {
        assert!(
            titles.iter().any(|t| t.contains(function)),
            "the flamegraph has no frame named {function}"
        );
    }
}

#[test]
fn c_with_frame_pointers_matches_perf() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_two_leaves_c(dir.path());
    check(&fixture, "two_leaves", &["main", "work"]);
}

#[test]
fn rust_with_forced_frame_pointers_matches_perf() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_rust(
        "two_leaves.rs",
        dir.path(),
        &["-C", "opt-level=2", "-C", "force-frame-pointers=yes", "-g"],
    );
    check(
        &fixture,
        "two_leaves_rs",
        &["two_leaves::main", "two_leaves::work"],
    );
}

#[test]
fn pprof_carries_lines_build_ids_and_labels() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_two_leaves_c(dir.path());
    let mut target = Running::spawn(&fixture, &["4"]);
    let pid = target.pid().to_string();
    let out = dir.path().join("cpu.pprof");
    let recording = run_hearth(
        &[
            "record",
            "--pid",
            &pid,
            "-F",
            "499",
            "-d",
            "2s",
            "-o",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_success(&recording);
    target.wait_for(Duration::from_secs(30));
    let profile = out.to_str().unwrap();

    let lines = go_pprof(&["-top", "-lines", profile]);
    assert!(
        lines
            .lines()
            .any(|l| l.contains("leaf_a") && l.contains("two_leaves.c:")),
        "no file:line for leaf_a in:\n{lines}"
    );
    let raw = go_pprof(&["-raw", profile]);
    let build_id = readelf_build_id(&fixture);
    assert!(
        raw.lines()
            .any(|l| l.contains(fixture.to_str().unwrap()) && l.contains(&build_id)),
        "no mapping of {} with build id {build_id} in:\n{raw}",
        fixture.display()
    );
    let by_process = pprof_values_by_process(&out);
    assert!(
        by_process.contains_key(&("two_leaves".to_owned(), target.pid())),
        "no samples labelled with the fixture's pid: {by_process:?}"
    );
}

/// The GNU build id as binutils reads it, independent of hearth.
fn readelf_build_id(binary: &Path) -> String {
    let output = std::process::Command::new("readelf")
        .arg("-n")
        .arg(binary)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("{} has no build id", binary.display()))
        .to_owned()
}
