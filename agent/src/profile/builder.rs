//! Turns unique raw stacks into a [`Profile`], symbolizing what it needs.

use rustc_hash::FxHashMap;

use super::{
    Function, Label, LabelValue, Line, Location, Mapping, Process, Profile, Sample, StringId,
};
use crate::{
    aggregate::{EventTag, StackTable, TagValue},
    enrich::process::{ProcessId, ProcessTable, UserFrame},
    event::Event,
    symbolize::{Frame, Symbolizer},
};

/// What a profile covers, beyond its samples.
#[derive(Clone, Copy, Debug)]
pub struct ProfileMeta {
    pub event: Event,
    pub period_ns: u64,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
}

/// Symbolizes the stacks of `stacks` and lays them out as a [`Profile`].
pub fn build_profile(
    stacks: &StackTable,
    processes: &ProcessTable,
    symbolizer: &mut Symbolizer,
    meta: ProfileMeta,
) -> Profile {
    let counted = || stacks.stacks().iter().filter(|s| s.count > 0);
    symbolizer.prepare_kernel(counted().flat_map(|s| s.kernel.iter().copied()));
    symbolizer.prepare_user(
        processes.objects(),
        counted().flat_map(|s| {
            s.user.iter().filter_map(|frame| match *frame {
                UserFrame::Mapped { address, mapping } => Some((
                    mapping.object,
                    address - mapping.start + mapping.file_offset,
                )),
                UserFrame::Unmapped { .. } => None,
            })
        }),
    );

    let mut builder = Builder {
        profile: Profile {
            event: meta.event,
            period_ns: meta.period_ns,
            start_unix_ns: meta.start_unix_ns,
            duration_ns: meta.duration_ns,
            strings: vec![String::new()],
            ..Profile::default()
        },
        strings: FxHashMap::default(),
        functions: FxHashMap::default(),
        mappings: FxHashMap::default(),
        locations: FxHashMap::default(),
        processes: FxHashMap::default(),
        kernel_mapping: None,
    };
    for stack in counted() {
        let mut locations = Vec::with_capacity(stack.kernel.len() + stack.user.len() + 1);
        let tag = stack.tag.as_deref();
        if let Some(leaf) = tag.and_then(|t| t.leaf.as_deref()) {
            locations.push(builder.named_location(leaf));
        }
        for &address in stack.kernel.iter() {
            locations.push(builder.kernel_location(address, symbolizer.kernel(address)));
        }
        for frame in stack.user.iter() {
            locations.push(builder.user_location(stack.process, frame, processes, symbolizer));
        }
        let process = builder.process(stack.process, processes);
        let thread_name = builder.string(stacks.thread_name(stack.thread));
        let labels = tag.map(|t| builder.labels(t)).unwrap_or_default();
        builder.profile.samples.push(Sample {
            locations,
            count: stack.count,
            process,
            thread_name,
            labels,
        });
    }
    builder.finish()
}

#[derive(Hash, PartialEq, Eq)]
enum LocationKey {
    Kernel(u64),
    User(ProcessId, u64),
    /// A frame that is a name, not code (a drop reason).
    Named(StringId),
}

struct Builder {
    profile: Profile,
    strings: FxHashMap<String, StringId>,
    functions: FxHashMap<(StringId, StringId), u32>,
    mappings: FxHashMap<(ProcessId, u64), u32>,
    locations: FxHashMap<LocationKey, u32>,
    processes: FxHashMap<ProcessId, u32>,
    kernel_mapping: Option<u32>,
}

impl Builder {
    fn string(&mut self, text: &str) -> StringId {
        if text.is_empty() {
            return 0;
        }
        if let Some(&id) = self.strings.get(text) {
            return id;
        }
        let id = self.profile.strings.len() as StringId;
        self.profile.strings.push(text.to_owned());
        self.strings.insert(text.to_owned(), id);
        id
    }

    fn process(&mut self, id: ProcessId, processes: &ProcessTable) -> u32 {
        if let Some(&index) = self.processes.get(&id) {
            return index;
        }
        let info = processes.get(id);
        let process = Process {
            pid: info.key.tgid,
            name: self.string(&info.name),
            executable_name: self.string(&info.executable_name()),
            executable_path: info
                .exe
                .as_ref()
                .map_or(0, |p| self.string(&p.to_string_lossy())),
            container: info.container.clone(),
        };
        let index = self.profile.processes.len() as u32;
        self.profile.processes.push(process);
        self.processes.insert(id, index);
        index
    }

    fn function(&mut self, frame: &Frame) -> u32 {
        let name = self.string(&frame.function);
        let file = frame.file.as_deref().map_or(0, |f| self.string(f));
        *self.functions.entry((name, file)).or_insert_with(|| {
            self.profile.functions.push(Function { name, file });
            self.profile.functions.len() as u32 - 1
        })
    }

    fn lines(&mut self, frames: &[Frame]) -> Vec<Line> {
        // Symbolizer frames are outermost first; pprof lines innermost first.
        frames
            .iter()
            .rev()
            .map(|frame| Line {
                function: self.function(frame),
                line: frame.line,
            })
            .collect()
    }

    fn push_location(
        &mut self,
        key: LocationKey,
        location: impl FnOnce(&mut Self) -> Location,
    ) -> u32 {
        if let Some(&index) = self.locations.get(&key) {
            return index;
        }
        let location = location(self);
        let index = self.profile.locations.len() as u32;
        self.profile.locations.push(location);
        self.locations.insert(key, index);
        index
    }

    /// The kernel mapping spans exactly the kernel addresses seen.
    fn finish(mut self) -> Profile {
        if let Some(index) = self.kernel_mapping {
            let addresses = self
                .profile
                .locations
                .iter()
                .filter(|l| l.kernel)
                .map(|l| l.address);
            let (low, high) = addresses.fold((u64::MAX, 0), |(lo, hi), a| (lo.min(a), hi.max(a)));
            let mapping = &mut self.profile.mappings[index as usize];
            mapping.start = low;
            mapping.limit = high.saturating_add(1);
        }
        self.profile
    }

    fn named_location(&mut self, name: &str) -> u32 {
        let name = self.string(name);
        self.push_location(LocationKey::Named(name), |b| {
            let function = *b.functions.entry((name, 0)).or_insert_with(|| {
                b.profile.functions.push(Function { name, file: 0 });
                b.profile.functions.len() as u32 - 1
            });
            Location {
                mapping: None,
                address: 0,
                lines: vec![Line { function, line: 0 }],
                kernel: false,
            }
        })
    }

    fn labels(&mut self, tag: &EventTag) -> Vec<Label> {
        tag.labels
            .iter()
            .map(|(key, value)| Label {
                key: self.string(key),
                value: match value {
                    TagValue::Text(text) => LabelValue::Str(self.string(text)),
                    TagValue::Num(n) => LabelValue::Num(*n),
                },
            })
            .collect()
    }

    fn kernel_location(&mut self, address: u64, frames: &[Frame]) -> u32 {
        self.push_location(LocationKey::Kernel(address), |b| {
            let mapping = b.kernel_mapping();
            Location {
                mapping: Some(mapping),
                address,
                lines: b.lines(frames),
                kernel: true,
            }
        })
    }

    fn kernel_mapping(&mut self) -> u32 {
        if let Some(index) = self.kernel_mapping {
            return index;
        }
        let file = self.string("[kernel.kallsyms]");
        self.profile.mappings.push(Mapping {
            start: 0,
            limit: 0,
            file_offset: 0,
            file,
            build_id: 0,
            kernel: true,
        });
        let index = self.profile.mappings.len() as u32 - 1;
        self.kernel_mapping = Some(index);
        index
    }

    fn user_location(
        &mut self,
        process: ProcessId,
        frame: &UserFrame,
        processes: &ProcessTable,
        symbolizer: &Symbolizer,
    ) -> u32 {
        let address = frame.address();
        self.push_location(LocationKey::User(process, address), |b| match *frame {
            UserFrame::Mapped { address, mapping } => {
                let object = processes.objects().get(mapping.object);
                let key = (process, mapping.start);
                let mapping_index = match b.mappings.get(&key) {
                    Some(&index) => index,
                    None => {
                        let file = b.string(&object.path.to_string_lossy());
                        let build_id = object.build_id().map_or(0, |id| b.string(&hex(id)));
                        b.profile.mappings.push(Mapping {
                            start: mapping.start,
                            limit: mapping.end,
                            file_offset: mapping.file_offset,
                            file,
                            build_id,
                            kernel: false,
                        });
                        let index = b.profile.mappings.len() as u32 - 1;
                        b.mappings.insert(key, index);
                        index
                    }
                };
                let offset = address - mapping.start + mapping.file_offset;
                Location {
                    mapping: Some(mapping_index),
                    address,
                    lines: b.lines(symbolizer.user(mapping.object, offset)),
                    kernel: false,
                }
            }
            UserFrame::Unmapped { address } => Location {
                mapping: None,
                address,
                lines: b.lines(symbolizer.unknown()),
                kernel: false,
            },
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
