//! A symbolized profile: samples over shared tables of locations,
//! functions, mappings and strings, in the shape pprof and OTLP both use.
//! Built from the unique stacks of a [`StackTable`]; every exporter reads it.

mod builder;
mod subset;

pub use builder::{ProfileMeta, build_profile};

use crate::{enrich::process::ContainerRef, event::Event};

/// Index into [`Profile::strings`]; 0 is always the empty string.
pub type StringId = u32;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Function {
    pub name: StringId,
    pub file: StringId,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub limit: u64,
    pub file_offset: u64,
    pub file: StringId,
    /// Hex GNU build id, or 0.
    pub build_id: StringId,
    pub kernel: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line {
    /// Index into [`Profile::functions`].
    pub function: u32,
    pub line: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// Index into [`Profile::mappings`].
    pub mapping: Option<u32>,
    pub address: u64,
    /// Innermost (inlined) function first, the function holding the code last.
    pub lines: Vec<Line>,
    pub kernel: bool,
}

/// A process that has samples in the profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Main thread's name.
    pub name: StringId,
    pub executable_name: StringId,
    /// 0 when unknown (the process was gone before it could be read).
    pub executable_path: StringId,
    pub container: Option<ContainerRef>,
}

/// A sample label's value: text or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelValue {
    Str(StringId),
    Num(i64),
}

/// A per-sample label (peer address, port, drop reason...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    pub key: StringId,
    pub value: LabelValue,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Indexes into [`Profile::locations`], leaf first.
    pub locations: Vec<u32>,
    /// The value in the profile's unit: samples for CPU, bytes for
    /// `tx-bytes`, nanoseconds for `connect-latency`, events otherwise.
    pub count: u64,
    /// Index into [`Profile::processes`].
    pub process: u32,
    pub thread_name: StringId,
    pub labels: Vec<Label>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// What the values measure.
    pub event: Event,
    /// Nanoseconds of CPU time one sample stands for (1e9 / Hz); 1 for
    /// network events, whose values are already in their unit.
    pub period_ns: u64,
    /// Wall-clock start of the window, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub strings: Vec<String>,
    pub functions: Vec<Function>,
    pub mappings: Vec<Mapping>,
    pub locations: Vec<Location>,
    pub processes: Vec<Process>,
    pub samples: Vec<Sample>,
    /// How the values were gathered, where that is more than the event
    /// says (off-CPU: the minimum block and the sampling, and the scaling
    /// it implies), as key and value: pprof comments (`key=value`), OTLP
    /// profile attributes.
    pub notes: Vec<(String, String)>,
}

impl Profile {
    pub fn string(&self, id: StringId) -> &str {
        &self.strings[id as usize]
    }

    pub fn process(&self, sample: &Sample) -> &Process {
        &self.processes[sample.process as usize]
    }

    pub fn total_samples(&self) -> u64 {
        self.samples.iter().map(|s| s.count).sum()
    }

    /// Function names of a sample, root first, inlined callees after their
    /// caller, each with whether it runs in the kernel.
    pub fn frames_root_first(&self, sample: &Sample) -> impl Iterator<Item = (&str, bool)> + '_ {
        let locations: Vec<&Location> = sample
            .locations
            .iter()
            .rev()
            .map(|&l| &self.locations[l as usize])
            .collect();
        locations.into_iter().flat_map(move |location| {
            location.lines.iter().rev().map(move |line| {
                let function = &self.functions[line.function as usize];
                (self.string(function.name), location.kernel)
            })
        })
    }
}
