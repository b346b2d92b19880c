//! Support for Hearth's end-to-end tests: builds the fixture programs, runs
//! `hearth` and the reference tools beside it (`perf`, `go tool pprof`),
//! and reads what they write. Everything here panics with a message that
//! says what was wrong, as tests should.

pub mod agent;
pub mod cgroups;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// `limit` stretched by `XTASK_TIME_SCALE` (default 1), which
/// `cargo xtask vm-test` sets where kernels run under software emulation:
/// every wait for a process or an answer is a liveness bound, never a
/// speed target, and emulation is several times slower.
pub fn patience(limit: Duration) -> Duration {
    let scale = std::env::var("XTASK_TIME_SCALE")
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .filter(|scale| *scale >= 1.0)
        .unwrap_or(1.0);
    limit.mul_f64(scale)
}

/// The tests load BPF programs; refuse clearly instead of failing obscurely.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("these tests load BPF programs: run them as root (`cargo xtask test` as root)");
    }
}

/// The `hearth` binary of the same build profile as this test.
pub fn hearth_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HEARTH_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/hearth
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .join("hearth");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --release`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

pub fn fixture_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn run_ok(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Compiles a C fixture with gcc into `dir`.
pub fn build_c(source: &str, dir: &Path, flags: &[&str]) -> PathBuf {
    let out = dir.join(Path::new(source).file_stem().unwrap());
    run_ok(
        Command::new("gcc")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(fixture_source(source)),
    );
    out
}

/// The two-leaf C fixture, built for frame-pointer walks.
pub fn build_two_leaves_c(dir: &Path) -> PathBuf {
    build_c(
        "two_leaves.c",
        dir,
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    )
}

/// A shell script that runs two copies of `program` at once and waits for both.
pub fn two_at_once(program: &Path, args: &str) -> String {
    format!("{0} {args} & {0} {args}; wait", program.display())
}

/// Compiles a C++ fixture with g++ into `dir`.
pub fn build_cpp(source: &str, dir: &Path, flags: &[&str]) -> PathBuf {
    let out = dir.join(Path::new(source).file_stem().unwrap());
    run_ok(
        Command::new("g++")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(fixture_source(source)),
    );
    out
}

/// Compiles a single-file Rust fixture with rustc into `dir`.
pub fn build_rust(source: &str, dir: &Path, flags: &[&str]) -> PathBuf {
    let stem = Path::new(source).file_stem().unwrap().to_string_lossy();
    let out = dir.join(format!("{stem}_rs"));
    run_ok(
        Command::new("rustc")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(fixture_source(source)),
    );
    out
}

/// A child process killed when dropped, so a failing test leaves nothing behind.
pub struct Running(Option<Child>);

impl Running {
    pub fn spawn(program: &Path, args: &[&str]) -> Self {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Self(Some(child))
    }

    pub fn from_child(child: Child) -> Self {
        Self(Some(child))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child already collected")
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("child already collected").id()
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub fn wait_for(&mut self, limit: Duration) -> ExitStatus {
        let limit = patience(limit);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} still running after {limit:?}",
                self.pid()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process now and collects what it printed (for the
    /// message of a test that gave up waiting on it).
    pub fn kill_and_output(&mut self) -> Output {
        let mut child = self.0.take().expect("child already collected");
        let _ = child.kill();
        child.wait_with_output().expect("collect output")
    }

    /// Waits up to `limit`, then collects what the process printed.
    pub fn output_within(mut self, limit: Duration) -> Output {
        self.wait_for(limit);
        let child = self.0.take().expect("child already collected");
        child.wait_with_output().expect("collect output")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `hearth` with `args`, output captured.
pub fn spawn_hearth(args: &[&str]) -> Running {
    let child = Command::new(hearth_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth");
    Running::from_child(child)
}

/// Runs `hearth` to completion (at most `limit`).
pub fn run_hearth(args: &[&str], limit: Duration) -> Output {
    spawn_hearth(args).output_within(limit)
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success, showing hearth's stderr otherwise.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "hearth failed ({}): {}",
        output.status,
        stderr(output)
    );
}

/// One collapsed stack: frames root first, and its count.
pub type FoldedStack = (Vec<String>, u64);

pub fn read_folded(path: &Path) -> Vec<FoldedStack> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let (stack, count) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad folded line {line:?}"));
            let count = count
                .parse()
                .unwrap_or_else(|_| panic!("bad count in {line:?}"));
            (stack.split(';').map(str::to_owned).collect(), count)
        })
        .collect()
}

/// `frame` names function `name`, allowing a Rust module path before it
/// and a C++ parameter list after it.
pub fn names(frame: &str, name: &str) -> bool {
    let frame = match frame.find('(') {
        Some(at) if at > 0 => &frame[..at],
        _ => frame,
    };
    frame == name || frame.ends_with(&format!("::{name}"))
}

/// Samples of `process` per leaf function: the innermost frame naming one
/// of `leaves` (frames inlined into a leaf still count for it).
pub fn folded_leaf_counts(stacks: &[FoldedStack], process: &str, leaves: &[&str]) -> Vec<u64> {
    let mut counts = vec![0; leaves.len()];
    for (frames, count) in stacks.iter().filter(|(f, _)| f[0] == process) {
        let hit = frames
            .iter()
            .rev()
            .find_map(|frame| leaves.iter().position(|l| names(frame, l)));
        if let Some(index) = hit {
            counts[index] += count;
        }
    }
    counts
}

/// Share of `process`'s samples whose stack holds `chain` (root first,
/// contiguous) followed by one of `leaves`.
pub fn full_chain_share(
    stacks: &[FoldedStack],
    process: &str,
    chain: &[&str],
    leaves: &[&str],
) -> f64 {
    let (mut full, mut all) = (0, 0);
    for (frames, count) in stacks.iter().filter(|(f, _)| f[0] == process) {
        all += count;
        let has_chain = frames.windows(chain.len() + 1).any(|w| {
            w[..chain.len()].iter().zip(chain).all(|(f, c)| names(f, c))
                && leaves.iter().any(|l| names(&w[chain.len()], l))
        });
        if has_chain {
            full += count;
        }
    }
    assert!(all > 0, "no samples of {process} at all");
    full as f64 / all as f64
}

/// Share of `process`'s samples whose stack holds the functions of
/// `chain` in order, root first (other frames may come between, such as
/// libc's inside `qsort`), and then one of `leaves`. C++ parameter lists
/// are ignored.
pub fn ordered_chain_share(
    stacks: &[FoldedStack],
    process: &str,
    chain: &[&str],
    leaves: &[&str],
) -> f64 {
    let (mut full, mut all) = (0, 0);
    for (frames, count) in stacks.iter().filter(|(f, _)| f[0] == process) {
        all += count;
        let mut rest = frames.iter();
        let chain_found = chain.iter().all(|name| rest.any(|f| names(f, name)));
        let leaf_found = rest.any(|f| leaves.iter().any(|l| names(f, l)));
        if chain_found && leaf_found {
            full += count;
        }
    }
    assert!(all > 0, "no samples of {process} at all");
    full as f64 / all as f64
}

/// `perf record` of one process, the reference profiler, walking stacks
/// with frame pointers.
pub fn spawn_perf_record(pid: u32, seconds: f64, hz: u32, out: &Path) -> Running {
    spawn_perf_record_with(pid, seconds, hz, out, "fp")
}

/// `perf record --call-graph CALL_GRAPH` (`fp`, or `dwarf`: copies of the
/// user stack unwound afterwards with libdw) of one process.
pub fn spawn_perf_record_with(
    pid: u32,
    seconds: f64,
    hz: u32,
    out: &Path,
    call_graph: &str,
) -> Running {
    let child = Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            &hz.to_string(),
            "--call-graph",
            call_graph,
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(out)
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start perf (install linux-perf: `cargo xtask setup`)");
    Running::from_child(child)
}

/// Per leaf, perf's samples whose innermost user frame in the leaf.
pub fn perf_leaf_counts(data: &Path, leaves: &[&str]) -> Vec<u64> {
    let output = Command::new("perf")
        .args(["script", "-F", "ip,sym,dso", "-i"])
        .arg(data)
        .output()
        .expect("run perf script");
    assert!(
        output.status.success(),
        "perf script: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut counts = vec![0; leaves.len()];
    for sample in text.split("\n\n") {
        let hit = sample.lines().find_map(|line| {
            // "    124a leaf_a+0x28 (/tmp/two_leaves)"; kernel frames are skipped.
            if line.contains("[kernel.kallsyms]") {
                return None;
            }
            let symbol = line.split_whitespace().nth(1)?;
            // "leaf_a+0x28", or C++'s "leaf_a(unsigned long)+0x28" split at its space.
            let symbol = symbol.split(['+', '(']).next()?;
            leaves.iter().position(|l| names(symbol, l))
        });
        if let Some(index) = hit {
            counts[index] += 1;
        }
    }
    counts
}

/// Share of the first count in percent.
pub fn percent_first(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    assert!(total > 0, "no samples in any leaf");
    100.0 * counts[0] as f64 / total as f64
}

/// Output of `go tool pprof ARGS`, an independent pprof reader.
pub fn go_pprof(args: &[&str]) -> String {
    let output = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .env(
            "HOME",
            std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()),
        )
        .output()
        .expect("run go tool pprof (install golang-go: `cargo xtask setup`)");
    assert!(
        output.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Function names of `go tool pprof -top`, hottest (flat) first.
pub fn pprof_top_functions(profile: &Path) -> Vec<String> {
    // Inlined callees fold into the function that holds their code.
    let text = go_pprof(&["-top", "-noinlines", profile.to_str().unwrap()]);
    text.lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(5).map(str::to_owned))
        .collect()
}

/// (process name, pid) → sampled value, from `go tool pprof -raw`.
pub fn pprof_values_by_process(profile: &Path) -> BTreeMap<(String, u32), i64> {
    let text = go_pprof(&["-raw", profile.to_str().unwrap()]);
    let mut by_process = BTreeMap::new();
    let mut value = 0;
    let mut name = String::new();
    for line in text.lines().skip_while(|l| !l.starts_with("Samples:")) {
        if line.starts_with("Locations") {
            break;
        }
        let line = line.trim();
        if let Some((v, _)) = line
            .split_once(':')
            .filter(|(v, _)| v.chars().all(|c| c.is_ascii_digit()))
        {
            value = v.parse().unwrap();
        }
        if let Some(rest) = line.split("process_name:[").nth(1) {
            name = rest.split(']').next().unwrap().to_owned();
        }
        if let Some(rest) = line.strip_prefix("pid:[") {
            let pid = rest.trim_end_matches(']').parse().unwrap();
            *by_process.entry((name.clone(), pid)).or_default() += value;
        }
    }
    by_process
}

/// Text of every `<title>` (inferno puts one on each frame), after checking
/// the SVG is well-formed XML.
pub fn svg_frame_titles(svg: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(svg).expect("read svg");
    let options = roxmltree::ParsingOptions {
        allow_dtd: true, // inferno declares the SVG DTD
        ..Default::default()
    };
    let document = roxmltree::Document::parse_with_options(&text, options)
        .unwrap_or_else(|e| panic!("SVG is not well-formed XML: {e}"));
    assert_eq!(document.root_element().tag_name().name(), "svg");
    document
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text().map(str::to_owned))
        .collect()
}

/// One sample as `go tool pprof -raw` prints it.
#[derive(Debug, Default)]
pub struct PprofSample {
    pub value: i64,
    /// Function names, leaf first (inlined functions included).
    pub functions: Vec<String>,
    /// Labels, numeric ones as their decimal text.
    pub labels: BTreeMap<String, String>,
}

impl PprofSample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// The samples of a pprof file, read by `go tool pprof -raw` (an
/// independent reader), with their functions and labels.
pub fn pprof_samples(profile: &Path) -> Vec<PprofSample> {
    let text = go_pprof(&["-raw", profile.to_str().unwrap()]);
    let mut samples: Vec<(PprofSample, Vec<u64>)> = Vec::new();
    let mut locations: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut section = "";
    let mut last_location = 0;
    for line in text.lines() {
        if !line.starts_with(' ') {
            // Headers; the sample types' line inside "Samples:" is not one.
            match line {
                "Samples:" => section = "Samples",
                "Locations" => section = "Locations",
                _ if line.starts_with("Mappings") => section = "Mappings",
                _ => {}
            }
            continue;
        }
        let trimmed = line.trim();
        match section {
            "Samples" => {
                if let Some((value, ids)) = trimmed
                    .split_once(':')
                    .filter(|(v, _)| v.chars().all(|c| c.is_ascii_digit()))
                {
                    let ids = ids.split_whitespace().map(|i| i.parse().unwrap()).collect();
                    let sample = PprofSample {
                        value: value.parse().unwrap(),
                        ..PprofSample::default()
                    };
                    samples.push((sample, ids));
                } else if let Some((sample, _)) = samples.last_mut() {
                    // key:[value] pairs; values may hold spaces only inside brackets.
                    for pair in trimmed.split("] ") {
                        if let Some((key, value)) = pair.split_once(":[") {
                            let value = value.trim_end_matches(']');
                            sample.labels.insert(key.to_owned(), value.to_owned());
                        }
                    }
                }
            }
            "Locations" => {
                // "  7: 0xADDR M=1 name file:line s=0", then one line per
                // further (inlining) function: "        name file:line s=0".
                let (id, rest) = match trimmed.split_once(": ") {
                    Some((id, rest)) if id.chars().all(|c| c.is_ascii_digit()) => {
                        (id.parse().unwrap(), rest)
                    }
                    _ => (last_location, trimmed),
                };
                last_location = id;
                let mut words = rest.split_whitespace().peekable();
                while words
                    .peek()
                    .is_some_and(|w| w.starts_with("0x") || w.starts_with("M="))
                {
                    words.next();
                }
                // Names may hold spaces ("[drop: NETFILTER_DROP]"); the file
                // and the `s=` column end them.
                let words: Vec<&str> = words.collect();
                let end = words.len().saturating_sub(2);
                let name = words[..end.max(1).min(words.len())].join(" ");
                locations.entry(id).or_default().push(name);
            }
            _ => {}
        }
    }
    samples
        .into_iter()
        .map(|(mut sample, ids)| {
            sample.functions = ids
                .iter()
                .flat_map(|id| locations.get(id).cloned().unwrap_or_default())
                .collect();
            sample
        })
        .collect()
}

/// Whether the running kernel's BTF names `name` (a type, function or
/// enum value), as bpftool (an independent reader) dumps it.
pub fn kernel_has_btf_name(name: &str) -> bool {
    let output = Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "raw",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run bpftool (`cargo xtask setup` installs it): {e}"));
    assert!(
        output.status.success(),
        "bpftool btf dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let quoted = format!("'{name}'");
    String::from_utf8_lossy(&output.stdout).contains(&quoted)
}
