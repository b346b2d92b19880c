//! Merging gzipped pprof profiles into one (the local history's windows
//! and resources, for `hearth ctl history`): every table is carried over
//! with its ids and strings renumbered.

use std::io::{self, Read};

use flate2::read::GzDecoder;
use prost::Message;
use rustc_hash::FxHashMap;

use crate::pprof_proto as pb;

fn decode(gz: &[u8]) -> io::Result<pb::Profile> {
    let mut raw = Vec::new();
    GzDecoder::new(gz).read_to_end(&mut raw)?;
    pb::Profile::decode(raw.as_slice()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[derive(Default)]
struct Merged {
    profile: pb::Profile,
    strings: FxHashMap<String, i64>,
}

impl Merged {
    fn string(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.strings.get(text) {
            return id;
        }
        let id = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_owned());
        self.strings.insert(text.to_owned(), id);
        id
    }

    fn add(&mut self, p: pb::Profile) {
        let s = |i: i64| p.string_table.get(i as usize).cloned().unwrap_or_default();
        let value_type = |m: &mut Self, t: &pb::ValueType| pb::ValueType {
            r#type: m.string(&s(t.r#type)),
            unit: m.string(&s(t.unit)),
        };
        if self.profile.sample_type.is_empty() {
            self.profile.sample_type = p.sample_type.iter().map(|t| value_type(self, t)).collect();
            self.profile.period_type = p.period_type.as_ref().map(|t| value_type(self, t));
            self.profile.period = p.period;
            self.profile.time_nanos = p.time_nanos;
        }
        let end = (self.profile.time_nanos + self.profile.duration_nanos)
            .max(p.time_nanos + p.duration_nanos);
        self.profile.time_nanos = self.profile.time_nanos.min(p.time_nanos);
        self.profile.duration_nanos = end - self.profile.time_nanos;

        let mut mappings = FxHashMap::default();
        for m in &p.mapping {
            let id = self.profile.mapping.len() as u64 + 1;
            mappings.insert(m.id, id);
            let mapping = pb::Mapping {
                id,
                filename: self.string(&s(m.filename)),
                build_id: self.string(&s(m.build_id)),
                ..*m
            };
            self.profile.mapping.push(mapping);
        }
        let mut functions = FxHashMap::default();
        for f in &p.function {
            let id = self.profile.function.len() as u64 + 1;
            functions.insert(f.id, id);
            let function = pb::Function {
                id,
                name: self.string(&s(f.name)),
                system_name: self.string(&s(f.system_name)),
                filename: self.string(&s(f.filename)),
                start_line: f.start_line,
            };
            self.profile.function.push(function);
        }
        let mut locations = FxHashMap::default();
        for l in &p.location {
            let id = self.profile.location.len() as u64 + 1;
            locations.insert(l.id, id);
            self.profile.location.push(pb::Location {
                id,
                mapping_id: mappings.get(&l.mapping_id).copied().unwrap_or(0),
                line: l
                    .line
                    .iter()
                    .map(|line| pb::Line {
                        function_id: functions.get(&line.function_id).copied().unwrap_or(0),
                        ..*line
                    })
                    .collect(),
                ..l.clone()
            });
        }
        for sample in &p.sample {
            let label = sample
                .label
                .iter()
                .map(|l| pb::Label {
                    key: self.string(&s(l.key)),
                    str: if l.str == 0 {
                        0
                    } else {
                        self.string(&s(l.str))
                    },
                    num_unit: if l.num_unit == 0 {
                        0
                    } else {
                        self.string(&s(l.num_unit))
                    },
                    num: l.num,
                })
                .collect();
            self.profile.sample.push(pb::Sample {
                location_id: sample
                    .location_id
                    .iter()
                    .map(|id| locations.get(id).copied().unwrap_or(0))
                    .collect(),
                value: sample.value.clone(),
                label,
            });
        }
    }
}

/// One profile holding every sample of `profiles` (gzipped pprof each).
pub fn merge_pprof(profiles: &[&[u8]]) -> io::Result<pb::Profile> {
    let mut merged = Merged::default();
    merged.string("");
    for gz in profiles {
        merged.add(decode(gz)?);
    }
    Ok(merged.profile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::{fixtures::small_profile, write_pprof};

    #[test]
    fn merged_profiles_keep_every_sample_with_its_names() {
        let mut a = Vec::new();
        write_pprof(&small_profile(), &mut a).unwrap();
        let mut later = small_profile();
        later.start_unix_ns += 10_000_000_000;
        let mut b = Vec::new();
        write_pprof(&later, &mut b).unwrap();

        let merged = merge_pprof(&[&a, &b]).unwrap();
        let one = decode(&a).unwrap();
        assert_eq!(merged.sample.len(), 2 * one.sample.len());
        assert_eq!(merged.location.len(), 2 * one.location.len());
        assert_eq!(merged.duration_nanos, 12_000_000_000, "both windows");
        let name = |p: &pb::Profile, s: &pb::Sample| {
            let location = &p.location[s.location_id[0] as usize - 1];
            let function = &p.function[location.line[0].function_id as usize - 1];
            p.string_table[function.name as usize].clone()
        };
        assert_eq!(name(&merged, &merged.sample[2]), name(&one, &one.sample[0]));
        let strings: std::collections::HashSet<_> = merged.string_table.iter().collect();
        assert_eq!(
            strings.len(),
            merged.string_table.len(),
            "no duplicate strings"
        );
    }
}
