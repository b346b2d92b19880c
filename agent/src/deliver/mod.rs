//! Delivery, the last stage of the data's way: encoders (collapsed
//! stacks, gzipped pprof, flamegraph SVG, OTLP, Pyroscope's push) with the
//! [`resource`] attributes profiles are grouped by, clients for the
//! backends ([`send`], [`otlp`], [`pyroscope`]), and what bounds what
//! waits: per-backend [`outbox`] tasks and their [`retention`] (queues,
//! spool, local history).

mod folded;
pub mod otlp;
pub mod outbox;
mod pprof;
mod pprof_merge;
pub mod pyroscope;
pub mod resource;
pub mod retention;
pub mod send;
mod svg;

use std::{io, path::Path};

pub use folded::{folded_lines, write_folded};
pub use pprof::{encode_pprof, write_pprof, write_pprof_with};
pub use pprof_merge::merge_pprof;
pub use svg::{SvgOptions, write_svg};

use crate::profile::Profile;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Interactive flamegraph (inferno).
    Svg,
    /// Gzipped pprof protobuf, as read by `go tool pprof` and Pyroscope.
    Pprof,
    /// Collapsed stacks, one `frame;frame;... count` line per stack.
    Folded,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "cannot tell the output format from {path:?}: name the file .svg, .pb.gz, .pprof, .folded \
     or .txt, or pass --format svg|pprof|folded"
)]
pub struct UnknownFormat {
    pub path: String,
}

impl OutputFormat {
    /// The format a file name asks for by its extension.
    pub fn from_path(path: &Path) -> Result<Self, UnknownFormat> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let format = if name.ends_with(".svg") {
            Self::Svg
        } else if name.ends_with(".pb.gz") || name.ends_with(".pprof") {
            Self::Pprof
        } else if name.ends_with(".folded") || name.ends_with(".txt") {
            Self::Folded
        } else {
            return Err(UnknownFormat {
                path: path.display().to_string(),
            });
        };
        Ok(format)
    }

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Svg => "svg",
            Self::Pprof => "pprof",
            Self::Folded => "folded",
        }
    }

    /// The usual file extension, without a leading dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Svg => "svg",
            Self::Pprof => "pb.gz",
            Self::Folded => "folded",
        }
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Svg => "svg",
            Self::Pprof => "pprof",
            Self::Folded => "folded",
        })
    }
}

/// Writes `profile` in `format`.
pub fn write_profile(
    profile: &Profile,
    format: OutputFormat,
    svg: &SvgOptions,
    out: impl io::Write,
) -> io::Result<()> {
    match format {
        OutputFormat::Svg => write_svg(profile, svg, out),
        OutputFormat::Pprof => write_pprof(profile, out),
        OutputFormat::Folded => write_folded(profile, out),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::profile::{Function, Line, Location, Mapping, Process, Profile, Sample};

    /// Two processes: `app` (pid 10) with user stack main → work → leaf
    /// (leaf inlined into work), sampled 3 times; and `app` (pid 11) entering
    /// the kernel from main, sampled once.
    pub fn small_profile() -> Profile {
        let strings = [
            "",
            "app",
            "main",
            "work",
            "leaf",
            "app.c",
            "/usr/bin/app",
            "abcd",
            "do_syscall_64",
            "[kernel.kallsyms]",
            "worker",
        ];
        let f = |name: u32, file: u32| Function { name, file };
        let line = |function: u32, line: u32| Line { function, line };
        Profile {
            event: crate::event::Event::Cpu,
            period_ns: 10_101_010,
            start_unix_ns: 1_700_000_000_000_000_000,
            duration_ns: 2_000_000_000,
            strings: strings.iter().map(|s| s.to_string()).collect(),
            functions: vec![f(2, 5), f(3, 5), f(4, 5), f(8, 0)],
            mappings: vec![
                Mapping {
                    start: 0x1000,
                    limit: 0x5000,
                    file_offset: 0,
                    file: 6,
                    build_id: 7,
                    kernel: false,
                },
                Mapping {
                    start: 0xffff_0000,
                    limit: 0xffff_1000,
                    file_offset: 0,
                    file: 9,
                    build_id: 0,
                    kernel: true,
                },
            ],
            locations: vec![
                Location {
                    mapping: Some(0),
                    address: 0x1100,
                    lines: vec![line(0, 7)],
                    kernel: false,
                },
                Location {
                    mapping: Some(0),
                    address: 0x1200,
                    lines: vec![line(2, 30), line(1, 20)],
                    kernel: false,
                },
                Location {
                    mapping: Some(1),
                    address: 0xffff_0100,
                    lines: vec![line(3, 0)],
                    kernel: true,
                },
            ],
            processes: vec![
                Process {
                    pid: 10,
                    name: 1,
                    executable_name: 1,
                    executable_path: 6,
                    container: None,
                },
                Process {
                    pid: 11,
                    name: 1,
                    executable_name: 1,
                    executable_path: 6,
                    container: None,
                },
            ],
            samples: vec![
                Sample {
                    locations: vec![1, 0],
                    count: 3,
                    process: 0,
                    thread_name: 10,
                    labels: vec![],
                },
                Sample {
                    locations: vec![2, 0],
                    count: 1,
                    process: 1,
                    thread_name: 1,
                    labels: vec![],
                },
            ],
            notes: vec![],
        }
    }

    /// `small_profile` as a `tx-bytes` profile whose first sample carries
    /// peer labels.
    pub fn small_network_profile() -> Profile {
        use crate::profile::{Label, LabelValue};
        let mut profile = small_profile();
        profile.event = crate::event::Event::TxBytes;
        profile.period_ns = 1;
        profile.strings.push("network.peer.address".into());
        profile.strings.push("10.0.0.2".into());
        profile.strings.push("network.peer.port".into());
        let id = |text: &str| profile.strings.iter().position(|s| s == text).unwrap() as u32;
        let labels = vec![
            Label {
                key: id("network.peer.address"),
                value: LabelValue::Str(id("10.0.0.2")),
            },
            Label {
                key: id("network.peer.port"),
                value: LabelValue::Num(8080),
            },
        ];
        profile.samples[0].labels = labels;
        profile.samples[0].count = 1500;
        profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_extension() {
        for (name, format) in [
            ("flame.svg", OutputFormat::Svg),
            ("FLAME.SVG", OutputFormat::Svg),
            ("cpu.pb.gz", OutputFormat::Pprof),
            ("cpu.pprof", OutputFormat::Pprof),
            ("stacks.folded", OutputFormat::Folded),
            ("stacks.txt", OutputFormat::Folded),
        ] {
            assert_eq!(
                OutputFormat::from_path(Path::new(name)),
                Ok(format),
                "{name}"
            );
        }
    }

    #[test]
    fn an_unknown_extension_says_what_would_work() {
        let err = OutputFormat::from_path(Path::new("out.json")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("out.json") && text.contains("--format"),
            "{text}"
        );
        assert!(OutputFormat::from_path(Path::new("noextension")).is_err());
    }
}
