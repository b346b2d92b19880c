//! A profile of some of another's samples, with only the table entries
//! those samples use.

use rustc_hash::FxHashMap;

use super::{Label, LabelValue, Line, Location, Profile, Sample, StringId};

impl Profile {
    /// The samples at `indexes`, with compacted tables.
    pub fn subset(&self, indexes: &[usize]) -> Profile {
        let mut out = Subset {
            source: self,
            profile: Profile {
                event: self.event,
                period_ns: self.period_ns,
                start_unix_ns: self.start_unix_ns,
                duration_ns: self.duration_ns,
                strings: vec![String::new()],
                ..Profile::default()
            },
            strings: FxHashMap::default(),
            functions: FxHashMap::default(),
            mappings: FxHashMap::default(),
            locations: FxHashMap::default(),
            processes: FxHashMap::default(),
        };
        for &index in indexes {
            let sample = &self.samples[index];
            let locations = sample.locations.iter().map(|&l| out.location(l)).collect();
            let process = out.process(sample.process);
            let thread_name = out.string(sample.thread_name);
            let labels = sample
                .labels
                .iter()
                .map(|label| Label {
                    key: out.string(label.key),
                    value: match label.value {
                        LabelValue::Str(id) => LabelValue::Str(out.string(id)),
                        LabelValue::Num(n) => LabelValue::Num(n),
                    },
                })
                .collect();
            out.profile.samples.push(Sample {
                locations,
                count: sample.count,
                process,
                thread_name,
                labels,
            });
        }
        out.profile
    }
}

struct Subset<'a> {
    source: &'a Profile,
    profile: Profile,
    strings: FxHashMap<StringId, StringId>,
    functions: FxHashMap<u32, u32>,
    mappings: FxHashMap<u32, u32>,
    locations: FxHashMap<u32, u32>,
    processes: FxHashMap<u32, u32>,
}

/// The entry `old` has in the new table, copying it over on first use.
fn remap<T>(
    map: &mut FxHashMap<u32, u32>,
    old: u32,
    table: impl FnOnce(&mut Profile) -> &mut Vec<T>,
    profile: &mut Profile,
    make: impl FnOnce() -> T,
) -> u32 {
    if let Some(&new) = map.get(&old) {
        return new;
    }
    let entry = make();
    let table = table(profile);
    table.push(entry);
    let new = table.len() as u32 - 1;
    map.insert(old, new);
    new
}

impl Subset<'_> {
    fn string(&mut self, old: StringId) -> StringId {
        if old == 0 {
            return 0;
        }
        let source = self.source;
        remap(
            &mut self.strings,
            old,
            |p| &mut p.strings,
            &mut self.profile,
            || source.string(old).to_owned(),
        )
    }

    fn location(&mut self, old: u32) -> u32 {
        if let Some(&new) = self.locations.get(&old) {
            return new;
        }
        let location = &self.source.locations[old as usize];
        let mapping = location.mapping.map(|m| self.mapping(m));
        let lines = location
            .lines
            .iter()
            .map(|line| Line {
                function: self.function(line.function),
                line: line.line,
            })
            .collect();
        let entry = Location {
            mapping,
            lines,
            ..location.clone()
        };
        remap(
            &mut self.locations,
            old,
            |p| &mut p.locations,
            &mut self.profile,
            || entry,
        )
    }

    fn mapping(&mut self, old: u32) -> u32 {
        if let Some(&new) = self.mappings.get(&old) {
            return new;
        }
        let mut entry = self.source.mappings[old as usize].clone();
        entry.file = self.string(entry.file);
        entry.build_id = self.string(entry.build_id);
        remap(
            &mut self.mappings,
            old,
            |p| &mut p.mappings,
            &mut self.profile,
            || entry,
        )
    }

    fn function(&mut self, old: u32) -> u32 {
        if let Some(&new) = self.functions.get(&old) {
            return new;
        }
        let mut entry = self.source.functions[old as usize].clone();
        entry.name = self.string(entry.name);
        entry.file = self.string(entry.file);
        remap(
            &mut self.functions,
            old,
            |p| &mut p.functions,
            &mut self.profile,
            || entry,
        )
    }

    fn process(&mut self, old: u32) -> u32 {
        if let Some(&new) = self.processes.get(&old) {
            return new;
        }
        let mut entry = self.source.processes[old as usize].clone();
        entry.name = self.string(entry.name);
        entry.executable_name = self.string(entry.executable_name);
        entry.executable_path = self.string(entry.executable_path);
        remap(
            &mut self.processes,
            old,
            |p| &mut p.processes,
            &mut self.profile,
            || entry,
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::deliver::{fixtures::small_profile, folded_lines};

    #[test]
    fn a_subset_keeps_its_samples_and_only_what_they_use() {
        let profile = small_profile();
        let kernel_only = profile.subset(&[1]);
        assert_eq!(folded_lines(&kernel_only), ["app;main;do_syscall_64_[k] 1"]);
        assert_eq!(kernel_only.samples.len(), 1);
        assert_eq!(kernel_only.locations.len(), 2);
        assert_eq!(kernel_only.functions.len(), 2, "main and do_syscall_64");
        assert!(
            !kernel_only
                .strings
                .iter()
                .any(|s| s == "leaf" || s == "worker")
        );
        assert_eq!(kernel_only.processes.len(), 1);
        assert_eq!(kernel_only.processes[0].pid, 11);

        let everything = profile.subset(&[0, 1]);
        assert_eq!(folded_lines(&everything), folded_lines(&profile));
    }
}
