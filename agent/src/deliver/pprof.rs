//! pprof (google/pprof `profile.proto`, types generated from `proto/`):
//! for CPU, sample and period type `cpu`/`nanoseconds`, value = count ×
//! period; for network events the event's own type and unit (`tx_bytes`/
//! `bytes`...), period 1. pid, thread name and the event's labels (peer,
//! ports, reason) as labels, build ids on mappings.

use std::io;

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use crate::{
    event::Event,
    pprof_proto as pb,
    profile::{LabelValue, Profile},
};

/// Strings the encoder adds to the profile's own table.
struct Extra {
    kind: i64,
    unit: i64,
    pid: i64,
    thread_name: i64,
    process_name: i64,
}

pub fn encode_pprof(profile: &Profile) -> pb::Profile {
    let mut string_table = profile.strings.clone();
    let mut add = |s: &str| {
        string_table.push(s.to_owned());
        string_table.len() as i64 - 1
    };
    let (kind, unit) = match profile.event {
        Event::Cpu => ("cpu", "nanoseconds"),
        event => event.sample_type(),
    };
    let extra = Extra {
        kind: add(kind),
        unit: add(unit),
        pid: add("pid"),
        thread_name: add("thread_name"),
        process_name: add("process_name"),
    };
    let value_type = || pb::ValueType {
        r#type: extra.kind,
        unit: extra.unit,
    };
    let period = profile.period_ns.max(1) as i64;
    let comment = profile
        .notes
        .iter()
        .map(|(key, value)| add(&format!("{key}={value}")))
        .collect();
    pb::Profile {
        sample_type: vec![value_type()],
        period_type: Some(value_type()),
        period,
        time_nanos: profile.start_unix_ns as i64,
        duration_nanos: profile.duration_ns as i64,
        mapping: mappings(profile),
        location: locations(profile),
        function: functions(profile),
        sample: samples(profile, &extra, period),
        comment,
        string_table,
        ..Default::default()
    }
}

fn mappings(profile: &Profile) -> Vec<pb::Mapping> {
    profile
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| pb::Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.file_offset,
            filename: i64::from(m.file),
            build_id: i64::from(m.build_id),
            has_functions: true,
            has_filenames: !m.kernel,
            has_line_numbers: !m.kernel,
            has_inline_frames: !m.kernel,
        })
        .collect()
}

fn locations(profile: &Profile) -> Vec<pb::Location> {
    profile
        .locations
        .iter()
        .enumerate()
        .map(|(i, l)| pb::Location {
            id: i as u64 + 1,
            mapping_id: l.mapping.map_or(0, |m| u64::from(m) + 1),
            address: l.address,
            line: l
                .lines
                .iter()
                .map(|line| pb::Line {
                    function_id: u64::from(line.function) + 1,
                    line: i64::from(line.line),
                })
                .collect(),
            is_folded: false,
        })
        .collect()
}

fn functions(profile: &Profile) -> Vec<pb::Function> {
    profile
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| pb::Function {
            id: i as u64 + 1,
            name: i64::from(f.name),
            system_name: i64::from(f.name),
            filename: i64::from(f.file),
            start_line: 0,
        })
        .collect()
}

/// Each sample with its value and labels: pid, thread and process name,
/// then the event's own.
fn samples(profile: &Profile, extra: &Extra, period: i64) -> Vec<pb::Sample> {
    let label = |key, str, num| pb::Label {
        key,
        str,
        num,
        ..Default::default()
    };
    profile
        .samples
        .iter()
        .map(|s| {
            let process = profile.process(s);
            let own = s.labels.iter().map(|l| match l.value {
                LabelValue::Str(text) => label(i64::from(l.key), i64::from(text), 0),
                LabelValue::Num(num) => label(i64::from(l.key), 0, num),
            });
            let common = [
                label(extra.pid, 0, i64::from(process.pid)),
                label(extra.thread_name, i64::from(s.thread_name), 0),
                label(extra.process_name, i64::from(process.name), 0),
            ];
            pb::Sample {
                location_id: s.locations.iter().map(|&l| u64::from(l) + 1).collect(),
                value: vec![s.count as i64 * period],
                label: common.into_iter().chain(own).collect(),
            }
        })
        .collect()
}

/// Writes the profile gzipped, as pprof files are stored.
pub fn write_pprof(profile: &Profile, out: impl io::Write) -> io::Result<()> {
    write_pprof_with(profile, Compression::default(), out)
}

/// Writes the profile gzipped at `level` (the agent uses the fastest: it
/// compresses every window's profiles).
pub fn write_pprof_with(
    profile: &Profile,
    level: Compression,
    out: impl io::Write,
) -> io::Result<()> {
    let bytes = encode_pprof(profile).encode_to_vec();
    let mut gz = GzEncoder::new(out, level);
    io::Write::write_all(&mut gz, &bytes)?;
    gz.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;
    use crate::deliver::fixtures::small_profile;

    fn decoded() -> pb::Profile {
        decode(&small_profile())
    }

    fn decode(profile: &Profile) -> pb::Profile {
        let mut gz = Vec::new();
        write_pprof(profile, &mut gz).unwrap();
        let mut raw = Vec::new();
        GzDecoder::new(gz.as_slice()).read_to_end(&mut raw).unwrap();
        pb::Profile::decode(raw.as_slice()).unwrap()
    }

    fn str(p: &pb::Profile, index: i64) -> &str {
        &p.string_table[index as usize]
    }

    #[test]
    fn network_profiles_carry_their_unit_and_labels() {
        let p = decode(&crate::deliver::fixtures::small_network_profile());
        let t = &p.sample_type[0];
        assert_eq!((str(&p, t.r#type), str(&p, t.unit)), ("tx_bytes", "bytes"));
        assert_eq!(p.period, 1);
        let sample = &p.sample[0];
        assert_eq!(sample.value, [1500], "bytes, not multiplied by a period");
        let label = |key: &str| {
            sample
                .label
                .iter()
                .find(|l| str(&p, l.key) == key)
                .unwrap_or_else(|| panic!("no {key} label"))
        };
        assert_eq!(str(&p, label("network.peer.address").str), "10.0.0.2");
        assert_eq!(label("network.peer.port").num, 8080);
    }

    #[test]
    fn types_period_and_values_follow_the_cpu_convention() {
        let p = decoded();
        let [sample_type] = p.sample_type.as_slice() else {
            panic!("one sample type expected");
        };
        assert_eq!(
            (str(&p, sample_type.r#type), str(&p, sample_type.unit)),
            ("cpu", "nanoseconds")
        );
        let period_type = p.period_type.as_ref().unwrap();
        assert_eq!(
            (str(&p, period_type.r#type), str(&p, period_type.unit)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(p.period, 10_101_010);
        let values: Vec<i64> = p.sample.iter().map(|s| s.value[0]).collect();
        assert_eq!(values, [3 * 10_101_010, 10_101_010]);
        assert_eq!(p.string_table[0], "");
    }

    #[test]
    fn ids_are_one_based_and_every_reference_resolves() {
        let p = decoded();
        for (i, l) in p.location.iter().enumerate() {
            assert_eq!(l.id, i as u64 + 1);
            assert!(l.mapping_id >= 1 && l.mapping_id as usize <= p.mapping.len());
            for line in &l.line {
                assert!(line.function_id >= 1 && line.function_id as usize <= p.function.len());
            }
        }
        for s in &p.sample {
            assert!(
                s.location_id
                    .iter()
                    .all(|&id| id >= 1 && id as usize <= p.location.len())
            );
        }
        let inlined = &p.location[1];
        let names: Vec<&str> = inlined
            .line
            .iter()
            .map(|l| str(&p, p.function[l.function_id as usize - 1].name))
            .collect();
        assert_eq!(names, ["leaf", "work"], "innermost inlined function first");
    }

    #[test]
    fn mappings_carry_build_ids_and_samples_carry_pid_and_thread() {
        let p = decoded();
        assert_eq!(str(&p, p.mapping[0].build_id), "abcd");
        assert_eq!(str(&p, p.mapping[0].filename), "/usr/bin/app");
        let labels: Vec<(&str, String)> = p.sample[0]
            .label
            .iter()
            .map(|l| {
                let value = if l.str != 0 {
                    str(&p, l.str).to_owned()
                } else {
                    l.num.to_string()
                };
                (str(&p, l.key), value)
            })
            .collect();
        assert!(labels.contains(&("pid", "10".into())), "{labels:?}");
        assert!(
            labels.contains(&("thread_name", "worker".into())),
            "{labels:?}"
        );
    }
}
