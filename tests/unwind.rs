//! Full stacks without frame pointers: fixtures built without them are
//! profiled by `perf record --call-graph dwarf` and by `hearth record
//! --unwind dwarf` over the same window. Hearth's split between the two
//! leaves must match perf's, and nearly every sample must carry the whole
//! chain from `main` to the leaf. The unwinder's per-process kernel map,
//! read with `bpftool`, must be empty once the profiled processes exit.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use hearth_tests::{agent::*, cgroups::Cgroups, *};

/// ~5,000 samples from each profiler: one sigma of the split is about
/// 0.6 points.
const HZ: u32 = 999;
const WINDOW_SECONDS: f64 = 5.0;
const LEAVES: [&str; 2] = ["leaf_a", "leaf_b"];
/// GCC flags of the C and C++ fixtures: optimized, no frame pointers, and
/// no merging of the two identical leaves into one symbol.
const NO_FRAME_POINTERS: [&str; 4] = ["-O2", "-fomit-frame-pointer", "-fno-ipa-icf", "-g"];

/// Profiles `fixture` with perf (DWARF) and hearth (tables) at once and
/// checks the split and the chains.
fn check(fixture: &Path, process: &str, chain: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let run_seconds = (WINDOW_SECONDS + 4.0).to_string();
    let mut target = Running::spawn(fixture, &[&run_seconds, "75"]);
    std::thread::sleep(Duration::from_millis(300));
    let pid = target.pid().to_string();
    let perf_data = dir.path().join("perf.data");
    let perf = spawn_perf_record_with(target.pid(), WINDOW_SECONDS, HZ, &perf_data, "dwarf");
    let folded = dir.path().join("out.folded");
    let recording = spawn_hearth(&[
        "record",
        "--pid",
        &pid,
        "-F",
        &HZ.to_string(),
        "--unwind",
        "dwarf",
        "--duration",
        &format!("{WINDOW_SECONDS}s"),
        "--output",
        folded.to_str().unwrap(),
    ]);
    let recorded = recording.output_within(Duration::from_secs(60));
    assert_success(&recorded);
    let summary = stderr(&recorded);
    eprintln!("{summary}");
    assert!(summary.contains("unwind tables:"), "{summary}");
    let perf = perf.output_within(Duration::from_secs(60));
    assert!(perf.status.success(), "perf record: {}", stderr(&perf));
    target.wait_for(Duration::from_secs(30));

    let stacks = read_folded(&folded);
    let hearth_counts = folded_leaf_counts(&stacks, process, &LEAVES);
    let perf_counts = perf_leaf_counts(&perf_data, &LEAVES);
    let (hearth_a, perf_a) = (percent_first(&hearth_counts), percent_first(&perf_counts));
    eprintln!(
        "{process}: leaf_a share hearth {hearth_a:.2}% {hearth_counts:?}, \
         perf --call-graph dwarf {perf_a:.2}% {perf_counts:?}"
    );
    assert!(
        (hearth_a - perf_a).abs() <= 3.0,
        "hearth gives leaf_a {hearth_a:.2}% of the leaf samples, perf {perf_a:.2}%"
    );
    let share = ordered_chain_share(&stacks, process, chain, &LEAVES);
    eprintln!(
        "{process}: {:.2}% of samples carry {chain:?} → leaf",
        share * 100.0
    );
    assert!(
        share >= 0.90,
        "only {:.1}% of {process}'s samples carry the full chain {chain:?} → leaf",
        share * 100.0
    );
}

#[test]
fn c_without_frame_pointers() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_c("two_leaves.c", dir.path(), &NO_FRAME_POINTERS);
    check(&fixture, "two_leaves", &["main", "work"]);
}

#[test]
fn cpp_with_exceptions() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_cpp("exceptions.cpp", dir.path(), &NO_FRAME_POINTERS);
    check(&fixture, "exceptions", &["main", "work"]);
}

#[test]
fn rust_release_without_frame_pointers() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_rust(
        "two_leaves.rs",
        dir.path(),
        &["-C", "opt-level=3", "-C", "force-frame-pointers=no", "-g"],
    );
    check(
        &fixture,
        "two_leaves_rs",
        &["two_leaves::main", "two_leaves::work"],
    );
}

#[test]
fn qsort_comparator_called_from_libc() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_c("qsort_leaf.c", dir.path(), &NO_FRAME_POINTERS);
    // libc's sort (no frame pointers) sits between work and the comparators.
    check(&fixture, "qsort_leaf", &["main", "work"]);
}

#[test]
fn library_loaded_with_dlopen_after_start() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixture = build_dlopen_fixture(dir.path());
    check(&fixture, "dlopen_main", &["main", "work"]);
}

/// dlopen_main and the libhot.so it loads from its own directory.
fn build_dlopen_fixture(dir: &Path) -> PathBuf {
    let library = dir.join("libhot.so");
    let built = Command::new("gcc")
        .args(NO_FRAME_POINTERS)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(fixture_source("libhot.c"))
        .status()
        .unwrap();
    assert!(built.success(), "gcc libhot.so");
    let mut flags = NO_FRAME_POINTERS.to_vec();
    flags.push("-ldl");
    build_c("dlopen_main.c", dir, &flags)
}

/// Tgids in the unwinder's per-process kernel map, read by bpftool (the
/// kernel truncates map names to 15 characters).
fn unwinder_map_tgids() -> BTreeSet<u32> {
    let output = Command::new("bpftool")
        .args(["--json", "map", "dump", "name", "UNWIND_PROCESSE"])
        .output()
        .expect("run bpftool (install it: `cargo xtask setup`)");
    assert!(output.status.success(), "bpftool: {}", stderr(&output));
    let entries: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let key: Vec<u8> = entry["key"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect();
            u32::from_ne_bytes(key[..4].try_into().unwrap())
        })
        .collect()
}

#[test]
fn per_process_maps_are_empty_after_the_processes_exit() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let c = build_c("two_leaves.c", dir.path(), &NO_FRAME_POINTERS);
    let cpp = build_cpp("exceptions.cpp", dir.path(), &NO_FRAME_POINTERS);
    let dlopen = build_dlopen_fixture(dir.path());
    let mut cgroups = Cgroups::new();
    let cgroup = cgroups.make(&format!("hearth-unwind-leak-{}", std::process::id()));
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let socket = dir.path().join("control.sock");
    let agent = spawn_agent(
        &[
            "--unwind",
            "dwarf",
            "-F",
            "99",
            "--metrics-listen",
            &metrics,
            "--control-socket",
            socket.to_str().unwrap(),
        ],
        &[(
            "HEARTH_SCOPE__CGROUPS",
            cgroup.file_name().unwrap().to_str().unwrap(),
        )],
    );
    wait_ready(metrics_port, Duration::from_secs(20));
    assert!(
        unwinder_map_tgids().is_empty(),
        "entries before any process ran"
    );

    let fixtures: Vec<Running> = [&c, &cpp, &dlopen, &c]
        .iter()
        .map(|program| {
            let fixture = Running::spawn(program, &["4", "75"]);
            cgroups.put(&cgroup, fixture.pid());
            fixture
        })
        .collect();
    let pids: BTreeSet<u32> = fixtures.iter().map(Running::pid).collect();
    std::thread::sleep(Duration::from_secs(3));
    let loaded = unwinder_map_tgids();
    eprintln!("while running: fixtures {pids:?}, kernel map {loaded:?}");
    assert_eq!(loaded, pids, "every fixture, and only they, have entries");
    let (_, text) = http_get(metrics_port, "/metrics");
    assert_eq!(
        metric(&text, "hearth_unwind_processes"),
        Some(pids.len() as f64)
    );
    let objects = metric(&text, "hearth_unwind_objects").unwrap();
    eprintln!("objects with tables: {objects}");
    // two_leaves (twice, one table), exceptions, dlopen_main, libhot,
    // libc, ld.so, libstdc++, libm, libgcc_s: shared, not per process.
    assert!((8.0..=12.0).contains(&objects), "{objects} objects");

    for mut fixture in fixtures {
        fixture.wait_for(Duration::from_secs(30));
    }
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    let mut left = unwinder_map_tgids();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        left = unwinder_map_tgids();
    }
    assert!(
        left.is_empty(),
        "entries left after every process exited: {left:?}"
    );
    std::thread::sleep(Duration::from_millis(1100)); // gauges refresh each second
    let (_, text) = http_get(metrics_port, "/metrics");
    assert_eq!(metric(&text, "hearth_unwind_processes"), Some(0.0));
    assert_eq!(
        metric(&text, "hearth_unwind_rows"),
        Some(0.0),
        "tables freed"
    );
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "{}", stderr(&output));
}

/// libhot.c plus `padding` functions without frame pointers that each call
/// the next (a frame of their own: several rows each), in `dir`, loaded by
/// a dlopen_main of its own there (its own inode: its own table).
fn build_padded_dlopen_fixture(dir: &Path, padding: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut source = std::fs::read_to_string(fixture_source("libhot.c")).unwrap();
    source.push_str("volatile int pad_sink;\n");
    // Callees first, so each call has its declaration.
    for n in (0..padding).rev() {
        let next = if n + 1 < padding {
            format!("pad_{}(x + 1);", n + 1)
        } else {
            String::new()
        };
        source.push_str(&format!(
            "__attribute__((noinline)) int pad_{n}(int x) {{ volatile char b[{}]; b[0] = x; pad_sink += b[0]; {next} return pad_sink; }}\n",
            16 + n % 64
        ));
    }
    let c = dir.join("libhot.c");
    std::fs::write(&c, source).unwrap();
    let built = Command::new("gcc")
        .args(NO_FRAME_POINTERS)
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join("libhot.so"))
        .arg(&c)
        .status()
        .unwrap();
    assert!(built.success(), "gcc libhot.so");
    let mut flags = NO_FRAME_POINTERS.to_vec();
    flags.push("-ldl");
    build_c("dlopen_main.c", dir, &flags)
}

/// The row store's shape for a test run: `(shard_rows, max_rows)`.
type Store = Option<(u64, u64)>;

/// `hearth run --unwind dwarf` scoped to the cgroup `scope`, with the row
/// store `store` (the defaults if none), exporting to a receiver every
/// second; its metrics port.
fn start_unwinding_agent(
    receiver: &OtlpReceiver,
    socket: &Path,
    scope: &str,
    store: Store,
) -> (Running, u16) {
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let store = store.map(|(shard, max)| (shard.to_string(), max.to_string()));
    let mut env = vec![("HEARTH_SCOPE__CGROUPS", scope)];
    if let Some((shard, max)) = &store {
        env.push(("HEARTH_UNWIND__SHARD_ROWS", shard.as_str()));
        env.push(("HEARTH_UNWIND__MAX_ROWS", max.as_str()));
    }
    let agent = spawn_agent(
        &[
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--export-interval",
            "1s",
            "--metrics-listen",
            &metrics,
            "--control-socket",
            socket.to_str().unwrap(),
            "--unwind",
            "dwarf",
            "-F",
            "199",
        ],
        &env,
    );
    wait_ready(metrics_port, Duration::from_secs(20));
    (agent, metrics_port)
}

fn unwind_metric(port: u16, series: &str) -> f64 {
    let (_, text) = http_get(port, "/metrics");
    metric(&text, series).unwrap_or(0.0)
}

/// Waits until the kernel holds more unwind rows than `above`; returns them.
fn rows_beyond(port: u16, above: f64) -> f64 {
    let deadline = std::time::Instant::now() + patience(Duration::from_secs(15));
    loop {
        let rows = unwind_metric(port, "hearth_unwind_rows");
        if rows > above {
            std::thread::sleep(Duration::from_millis(500));
            return unwind_metric(port, "hearth_unwind_rows");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new unwind rows beyond {above}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The rows in use once a process started at `spawned` has all its
/// tables: more than `above`, past the fixture's dlopen (1 s after it
/// starts; samples taken while it starts up load the other objects
/// first), and unchanged for a second.
fn settled_rows(port: u16, above: f64, spawned: Instant) -> f64 {
    let deadline = Instant::now() + patience(Duration::from_secs(30));
    let mut last = rows_beyond(port, above);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let rows = unwind_metric(port, "hearth_unwind_rows");
        if rows == last && spawned.elapsed() >= patience(Duration::from_millis(2500)) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "unwind rows never settled: {rows}"
        );
        last = rows;
    }
}

/// The row array fragmented on purpose: three libraries of one size
/// loaded one after the other, the first one's process gone, and a larger
/// library that fits only if the third moves into the first one's gap.
/// The agent compacts the real kernel array, and the process whose table
/// moved keeps whole chains from main to the leaf.
#[test]
fn a_fragmented_row_array_is_compacted_and_moved_tables_still_unwind() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let small = |name: &str| build_padded_dlopen_fixture(&dir.path().join(name), 1500);
    let fixtures = [
        small("a"),
        small("b"),
        small("c"),
        build_padded_dlopen_fixture(&dir.path().join("d"), 2250),
    ];
    let out = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start("grpc", 0, &out.path().join("requests.jsonl"));
    // Only the fixtures are sampled (scoped in the kernel), so only their
    // objects take rows.
    let mut cgroups = Cgroups::new();
    let scope = format!("hearth-test-compaction-{}.slice", std::process::id());
    let cgroup = cgroups.make(&scope);
    let spawn = |fixture: &Path| {
        let running = Running::spawn(fixture, &["60", "75"]);
        cgroups.put(&cgroup, running.pid());
        running
    };

    // Measure: rows of the shared objects and of each library with its
    // executable, loading them in the order the real run will.
    let (agent, port) = start_unwinding_agent(&receiver, &out.path().join("m.sock"), &scope, None);
    let mut rows = Vec::new();
    let mut running = Vec::new();
    let mut before = unwind_metric(port, "hearth_unwind_rows");
    for fixture in &fixtures {
        running.push(spawn(fixture));
        let now = rows_beyond(port, before);
        rows.push(now);
        before = now;
    }
    drop(running);
    drop(terminate(agent, Duration::from_secs(20)));
    let three = rows[2];
    let small_rows = rows[2] - rows[1];
    let large_rows = rows[3] - rows[2];
    eprintln!(
        "rows after each load: {rows:?}; a small library {small_rows}, the large one {large_rows}"
    );
    assert!(
        large_rows > small_rows * 1.3,
        "the large library is not larger"
    );

    // The run: one shard that holds the three, plus less than the large one.
    let capacity = (three + small_rows * 0.75) as u64;
    let (agent, port) = start_unwinding_agent(
        &receiver,
        &out.path().join("r.sock"),
        &scope,
        Some((capacity, capacity)),
    );
    let mut first = spawn(&fixtures[0]);
    let mut before = rows_beyond(port, 0.0);
    let _second = spawn(&fixtures[1]);
    before = rows_beyond(port, before);
    let third = spawn(&fixtures[2]);
    rows_beyond(port, before);
    drop(first.kill_and_output());
    std::thread::sleep(patience(Duration::from_secs(3))); // reaped, its tables freed
    let _fourth = spawn(&fixtures[3]);
    let deadline = std::time::Instant::now() + patience(Duration::from_secs(15));
    while unwind_metric(port, "hearth_unwind_compactions_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the array was never compacted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let compacted_at = receiver.requests().len();
    std::thread::sleep(patience(Duration::from_secs(4)));
    let moved = unwind_metric(port, "hearth_unwind_tables_moved_total");
    let refused = unwind_metric(
        port,
        "hearth_unwind_tables_not_loaded_total{reason=\"rows_full\"}",
    );
    drop(terminate(agent, Duration::from_secs(20)));

    let after = &receiver.requests()[compacted_at..];
    let (whole, all) = chains(after, third.pid());
    eprintln!(
        "capacity {capacity} rows; tables moved {moved}; refused for want of rows {refused}; \
         samples of the process whose table moved, after the move: {all}, with main → work: {whole}"
    );
    assert!(moved >= 1.0);
    assert_eq!(
        refused, 0.0,
        "a table was refused although compaction made room"
    );
    assert!(all >= 50, "too few samples after the move: {all}");
    assert!(
        whole as f64 >= all as f64 * 0.9,
        "{whole} of {all} samples kept main → work"
    );
}

/// Samples of `pid` in `requests` whose stack holds `main` and `work`,
/// and all its samples.
fn chains(requests: &[serde_json::Value], pid: u32) -> (u64, u64) {
    let (mut whole, mut all) = (0, 0);
    for resource in requests
        .iter()
        .flat_map(|r| r["resources"].as_array().cloned().unwrap_or_default())
    {
        if resource["attributes"]["process.pid"] != pid {
            continue;
        }
        for sample in resource["profiles"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .flat_map(|p| p["samples"].as_array().cloned().unwrap_or_default())
        {
            let value = sample["value"].as_u64().unwrap_or(0);
            let frames: Vec<&str> = sample["frames"]
                .as_array()
                .map(|f| f.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            all += value;
            if frames.iter().any(|f| names(f, "main")) && frames.iter().any(|f| names(f, "work")) {
                whole += value;
            }
        }
    }
    (whole, all)
}

/// Waits until `series` reads `want`; fails naming `what` otherwise.
fn wait_metric(port: u16, series: &str, want: f64, what: &str) {
    let deadline = Instant::now() + patience(Duration::from_secs(15));
    loop {
        let value = unwind_metric(port, series);
        if value == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {series} is {value}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The row store follows what the node runs: no shard while nothing
/// needs a table, a second shard when a process's library does not fit
/// the first (and its stacks unwind whole from there), the shards given
/// back as the processes exit; at its cap a table is refused, counted and
/// logged with what to raise, and the process is still profiled.
#[test]
fn the_row_store_grows_with_the_objects_and_gives_shards_back() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let fixtures = ["a", "b"].map(|name| build_padded_dlopen_fixture(&dir.path().join(name), 1500));
    let out = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start("grpc", 0, &out.path().join("requests.jsonl"));
    let mut cgroups = Cgroups::new();
    let scope = format!("hearth-test-shards-{}.slice", std::process::id());
    let cgroup = cgroups.make(&scope);
    let spawn = |fixture: &Path| {
        let running = Running::spawn(fixture, &["60", "75"]);
        cgroups.put(&cgroup, running.pid());
        running
    };

    // Measure: the rows of the first process (the shared objects, its
    // program and library), and of the second's own program and library.
    let (agent, port) = start_unwinding_agent(&receiver, &out.path().join("m.sock"), &scope, None);
    let first = spawn(&fixtures[0]);
    let one = settled_rows(port, 0.0, Instant::now());
    let second = spawn(&fixtures[1]);
    let two = settled_rows(port, one, Instant::now());
    drop((first, second));
    drop(terminate(agent, Duration::from_secs(20)));
    let own = two - one;
    // A shard holds the first process and a quarter of the second's own
    // rows: the second's library goes to a shard of its own.
    let shard = (one + own * 0.25) as u64;
    eprintln!(
        "rows of the first process {one}, of the second's own objects {own}; shards of {shard} rows"
    );

    let (agent, port) = start_unwinding_agent(
        &receiver,
        &out.path().join("g.sock"),
        &scope,
        Some((shard, 2 * shard)),
    );
    assert_eq!(
        unwind_metric(port, "hearth_unwind_row_shards"),
        0.0,
        "a shard before any table"
    );
    let mut first = spawn(&fixtures[0]);
    rows_beyond(port, 0.0);
    wait_metric(port, "hearth_unwind_row_shards", 1.0, "one process");
    let mut second = spawn(&fixtures[1]);
    wait_metric(port, "hearth_unwind_row_shards", 2.0, "the second process");
    let grown_at = receiver.requests().len();
    std::thread::sleep(patience(Duration::from_secs(4)));
    let after = receiver.requests()[grown_at..].to_vec();
    let (whole, all) = chains(&after, second.pid());
    drop(second.kill_and_output());
    wait_metric(
        port,
        "hearth_unwind_row_shards",
        1.0,
        "the second process gone",
    );
    drop(first.kill_and_output());
    wait_metric(port, "hearth_unwind_row_shards", 0.0, "both processes gone");
    let added = unwind_metric(port, "hearth_unwind_shards_added_total");
    let removed = unwind_metric(port, "hearth_unwind_shards_removed_total");
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "{}", stderr(&output));
    eprintln!(
        "shards added {added}, given back {removed}; samples of the process in the second shard: \
         {all}, with main → work: {whole}"
    );
    assert_eq!((added, removed), (2.0, 2.0));
    assert!(all >= 50, "too few samples from the second shard: {all}");
    assert!(
        whole as f64 >= all as f64 * 0.9,
        "{whole} of {all} samples kept main → work"
    );

    // At the cap (one shard), the second library is refused, counted and
    // logged; the second process is still profiled.
    let (agent, port) = start_unwinding_agent(
        &receiver,
        &out.path().join("c.sock"),
        &scope,
        Some((shard, shard)),
    );
    let _first = spawn(&fixtures[0]);
    rows_beyond(port, 0.0);
    let capped_at = receiver.requests().len();
    let second = spawn(&fixtures[1]);
    wait_metric(
        port,
        "hearth_unwind_tables_not_loaded_total{reason=\"rows_full\"}",
        1.0,
        "a table past the cap",
    );
    std::thread::sleep(patience(Duration::from_secs(3)));
    let shards = unwind_metric(port, "hearth_unwind_row_shards");
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    let (_, all) = chains(&receiver.requests()[capped_at..], second.pid());
    eprintln!("at the cap: {shards} shard, the refused process still had {all} samples");
    assert_eq!(shards, 1.0);
    assert!(
        all >= 50,
        "the process past the cap was not profiled: {all} samples"
    );
    assert_eq!(
        log.matches("raise unwind.max_rows").count(),
        1,
        "the cap is logged once, saying what to raise:\n{log}"
    );
}
