//! One export request per window: a resource per group of samples, all
//! sharing one dictionary. Every dictionary table starts with its zero
//! value, holds no duplicates (entries are deduplicated by their encoded
//! bytes) and no orphans (entries are added only when referenced).

use prost::Message;
use rustc_hash::FxHashMap;

use super::proto as otlp;
use crate::{
    deliver::resource::{AttributeValue, ResourceGroup, keys},
    event::Event,
    profile::{LabelValue, Profile, StringId},
};

/// Builds the request for `profile`, with one resource per group. CPU
/// profiles count samples over a `cpu`/`nanoseconds` period; network
/// profiles carry their event's type and unit, with the period the same.
pub fn encode_request(
    profile: &Profile,
    groups: &[ResourceGroup],
    profile_ids: &mut dyn FnMut() -> [u8; 16],
) -> otlp::ExportProfilesServiceRequest {
    let mut dict = Dictionary::new(profile);
    let (kind, unit) = profile.event.sample_type();
    let sample_type = dict.value_type(kind, unit);
    let period_type = match profile.event {
        Event::Cpu => dict.value_type("cpu", "nanoseconds"),
        _ => sample_type,
    };
    let resource_profiles = groups
        .iter()
        .map(|group| {
            let samples = group
                .samples
                .iter()
                .map(|&index| {
                    let sample = &profile.samples[index];
                    let process = profile.process(sample);
                    let mut attributes = vec![dict.attribute(
                        keys::THREAD_NAME,
                        &AttributeValue::Str(profile.string(sample.thread_name).to_owned()),
                    )];
                    if group.many_processes {
                        let pid = AttributeValue::Int(i64::from(process.pid));
                        attributes.push(dict.attribute(keys::PROCESS_PID, &pid));
                    }
                    for label in &sample.labels {
                        let value = match label.value {
                            LabelValue::Str(text) => {
                                AttributeValue::Str(profile.string(text).to_owned())
                            }
                            LabelValue::Num(num) => AttributeValue::Int(num),
                        };
                        attributes.push(dict.attribute(profile.string(label.key), &value));
                    }
                    otlp::Sample {
                        stack_index: dict.stack(&sample.locations),
                        attribute_indices: attributes,
                        link_index: 0,
                        values: vec![sample.count as i64],
                        timestamps_unix_nano: Vec::new(),
                    }
                })
                .collect();
            otlp::ResourceProfiles {
                resource: Some(otlp::Resource {
                    attributes: group
                        .attributes
                        .iter()
                        .map(|(k, v)| key_value(k, v))
                        .collect(),
                    ..Default::default()
                }),
                scope_profiles: vec![otlp::ScopeProfiles {
                    scope: Some(otlp::InstrumentationScope {
                        name: "hearth".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    profiles: vec![otlp::Profile {
                        sample_type: Some(sample_type),
                        samples,
                        time_unix_nano: profile.start_unix_ns,
                        duration_nano: profile.duration_ns,
                        period_type: Some(period_type),
                        period: profile.period_ns.max(1) as i64,
                        profile_id: profile_ids().to_vec(),
                        attribute_indices: profile
                            .notes
                            .iter()
                            .map(|(key, value)| {
                                dict.attribute(key, &AttributeValue::Str(value.clone()))
                            })
                            .collect(),
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    otlp::ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dict.finish()),
    }
}

fn any_value(value: &AttributeValue) -> otlp::AnyValue {
    otlp::AnyValue {
        value: Some(match value {
            AttributeValue::Str(s) => otlp::any_value::Value::StringValue(s.clone()),
            AttributeValue::Int(i) => otlp::any_value::Value::IntValue(*i),
        }),
    }
}

fn key_value(key: &str, value: &AttributeValue) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_owned(),
        value: Some(any_value(value)),
        ..Default::default()
    }
}

/// A dictionary table: the zero value at index 0, then unique entries.
struct Table<T> {
    entries: Vec<T>,
    index: FxHashMap<Vec<u8>, i32>,
}

impl<T: Message + Default> Table<T> {
    fn new() -> Self {
        let mut index = FxHashMap::default();
        index.insert(Vec::new(), 0); // the zero value encodes to no bytes
        Self {
            entries: vec![T::default()],
            index,
        }
    }

    fn intern(&mut self, entry: T) -> i32 {
        let key = entry.encode_to_vec();
        *self.index.entry(key).or_insert_with(|| {
            self.entries.push(entry);
            self.entries.len() as i32 - 1
        })
    }
}

struct Dictionary<'p> {
    profile: &'p Profile,
    strings: Vec<String>,
    string_index: FxHashMap<String, i32>,
    mappings: Table<otlp::Mapping>,
    functions: Table<otlp::Function>,
    locations: Table<otlp::Location>,
    stacks: Table<otlp::Stack>,
    attributes: Table<otlp::KeyValueAndUnit>,
    /// Profile table index → dictionary index, filled on first use.
    mapping_of: Vec<Option<i32>>,
    function_of: Vec<Option<i32>>,
    location_of: Vec<Option<i32>>,
}

impl<'p> Dictionary<'p> {
    fn new(profile: &'p Profile) -> Self {
        let mut string_index = FxHashMap::default();
        string_index.insert(String::new(), 0);
        Self {
            profile,
            strings: vec![String::new()],
            string_index,
            mappings: Table::new(),
            functions: Table::new(),
            locations: Table::new(),
            stacks: Table::new(),
            attributes: Table::new(),
            mapping_of: vec![None; profile.mappings.len()],
            function_of: vec![None; profile.functions.len()],
            location_of: vec![None; profile.locations.len()],
        }
    }

    fn string(&mut self, text: &str) -> i32 {
        if let Some(&index) = self.string_index.get(text) {
            return index;
        }
        self.strings.push(text.to_owned());
        let index = self.strings.len() as i32 - 1;
        self.string_index.insert(text.to_owned(), index);
        index
    }

    fn profile_string(&mut self, id: StringId) -> i32 {
        let profile = self.profile;
        self.string(profile.string(id))
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> otlp::ValueType {
        otlp::ValueType {
            type_strindex: self.string(kind),
            unit_strindex: self.string(unit),
        }
    }

    fn attribute(&mut self, key: &str, value: &AttributeValue) -> i32 {
        let entry = otlp::KeyValueAndUnit {
            key_strindex: self.string(key),
            value: Some(any_value(value)),
            unit_strindex: 0,
        };
        self.attributes.intern(entry)
    }

    fn mapping(&mut self, index: u32) -> i32 {
        if let Some(done) = self.mapping_of[index as usize] {
            return done;
        }
        let mapping = &self.profile.mappings[index as usize];
        let build_id = (mapping.build_id != 0).then(|| {
            let id = AttributeValue::Str(self.profile.string(mapping.build_id).to_owned());
            self.attribute(keys::BUILD_ID_GNU, &id)
        });
        let entry = otlp::Mapping {
            memory_start: mapping.start,
            memory_limit: mapping.limit,
            file_offset: mapping.file_offset,
            filename_strindex: self.profile_string(mapping.file),
            attribute_indices: build_id.into_iter().collect(),
        };
        let done = self.mappings.intern(entry);
        self.mapping_of[index as usize] = Some(done);
        done
    }

    fn function(&mut self, index: u32) -> i32 {
        if let Some(done) = self.function_of[index as usize] {
            return done;
        }
        let function = &self.profile.functions[index as usize];
        let name = self.profile_string(function.name);
        let entry = otlp::Function {
            name_strindex: name,
            system_name_strindex: name,
            filename_strindex: self.profile_string(function.file),
            start_line: 0,
        };
        let done = self.functions.intern(entry);
        self.function_of[index as usize] = Some(done);
        done
    }

    fn location(&mut self, index: u32) -> i32 {
        if let Some(done) = self.location_of[index as usize] {
            return done;
        }
        let location = &self.profile.locations[index as usize];
        let entry = otlp::Location {
            mapping_index: location.mapping.map_or(0, |m| self.mapping(m)),
            address: location.address,
            lines: location
                .lines
                .iter()
                .map(|line| otlp::Line {
                    function_index: self.function(line.function),
                    line: i64::from(line.line),
                    column: 0,
                })
                .collect(),
            attribute_indices: Vec::new(),
        };
        let done = self.locations.intern(entry);
        self.location_of[index as usize] = Some(done);
        done
    }

    fn stack(&mut self, locations: &[u32]) -> i32 {
        let entry = otlp::Stack {
            location_indices: locations.iter().map(|&l| self.location(l)).collect(),
        };
        self.stacks.intern(entry)
    }

    fn finish(self) -> otlp::ProfilesDictionary {
        otlp::ProfilesDictionary {
            mapping_table: self.mappings.entries,
            location_table: self.locations.entries,
            function_table: self.functions.entries,
            link_table: vec![otlp::Link::default()],
            string_table: self.strings,
            attribute_table: self.attributes.entries,
            stack_table: self.stacks.entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::{
        config::ServiceNameConfig,
        deliver::{fixtures::small_profile, resource::ResourceNamer},
    };

    fn request(profile: &Profile) -> otlp::ExportProfilesServiceRequest {
        let groups =
            ResourceNamer::new(&ServiceNameConfig::default(), "node-1".into()).group(profile);
        let mut next = 0u8;
        encode_request(profile, &groups, &mut || {
            next += 1;
            [next; 16]
        })
    }

    fn unique<T: Message>(table: &[T]) -> bool {
        let encoded: HashSet<Vec<u8>> = table.iter().map(Message::encode_to_vec).collect();
        encoded.len() == table.len()
    }

    #[test]
    fn every_table_starts_with_its_zero_value_and_has_no_duplicates() {
        let request = request(&small_profile());
        let d = request.dictionary.unwrap();
        assert_eq!(d.string_table[0], "");
        assert_eq!(d.mapping_table[0], otlp::Mapping::default());
        assert_eq!(d.location_table[0], otlp::Location::default());
        assert_eq!(d.function_table[0], otlp::Function::default());
        assert_eq!(d.link_table[0], otlp::Link::default());
        assert_eq!(d.attribute_table[0], otlp::KeyValueAndUnit::default());
        assert_eq!(d.stack_table[0], otlp::Stack::default());
        assert!(unique(&d.mapping_table) && unique(&d.location_table) && unique(&d.function_table));
        assert!(unique(&d.attribute_table) && unique(&d.stack_table));
        let strings: HashSet<&String> = d.string_table.iter().collect();
        assert_eq!(strings.len(), d.string_table.len());
    }

    #[test]
    fn identical_mappings_of_two_processes_become_one_entry() {
        // Both fixture processes map /usr/bin/app at the same addresses.
        let mut profile = small_profile();
        profile.mappings.push(profile.mappings[0].clone());
        profile.locations.push(crate::profile::Location {
            mapping: Some(2),
            ..profile.locations[0].clone()
        });
        profile.samples[1].locations = vec![3];
        let d = request(&profile).dictionary.unwrap();
        assert_eq!(
            d.mapping_table.len(),
            2,
            "zero and app: {:?}",
            d.mapping_table
        );
        // Location 3 is location 0 under the other mapping: one entry too.
        assert_eq!(
            d.location_table.len(),
            3,
            "zero, leaf, main: {:?}",
            d.location_table
        );
        assert!(unique(&d.location_table));
    }

    #[test]
    fn network_profiles_carry_their_unit_and_peer_attributes() {
        let profile = crate::deliver::fixtures::small_network_profile();
        let request = request(&profile);
        let d = request.dictionary.as_ref().unwrap();
        let s = |i: i32| d.string_table[i as usize].as_str();
        let otlp_profile = &request.resource_profiles[0].scope_profiles[0].profiles[0];
        let t = otlp_profile.sample_type.unwrap();
        assert_eq!(
            (s(t.type_strindex), s(t.unit_strindex)),
            ("tx_bytes", "bytes")
        );
        assert_eq!(otlp_profile.period, 1);
        let sample = &otlp_profile.samples[0];
        assert_eq!(sample.values, [1500]);
        let attributes: Vec<(&str, String)> = sample
            .attribute_indices
            .iter()
            .map(|&i| {
                let a = &d.attribute_table[i as usize];
                (s(a.key_strindex), format!("{:?}", a.value))
            })
            .collect();
        assert!(
            attributes
                .iter()
                .any(|(k, v)| *k == "network.peer.address" && v.contains("10.0.0.2")),
            "{attributes:?}"
        );
        assert!(
            attributes
                .iter()
                .any(|(k, v)| *k == "network.peer.port" && v.contains("8080")),
            "{attributes:?}"
        );
    }

    #[test]
    fn samples_resources_and_types_follow_the_conventions() {
        let request = request(&small_profile());
        let d = request.dictionary.as_ref().unwrap();
        let s = |i: i32| d.string_table[i as usize].as_str();
        assert_eq!(request.resource_profiles.len(), 2);
        let resource = &request.resource_profiles[0];
        let attrs = &resource.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs[0].key, "service.name");
        let profile = &resource.scope_profiles[0].profiles[0];
        let sample_type = profile.sample_type.unwrap();
        assert_eq!(
            (s(sample_type.type_strindex), s(sample_type.unit_strindex)),
            ("samples", "count")
        );
        let period = profile.period_type.unwrap();
        assert_eq!(
            (s(period.type_strindex), s(period.unit_strindex)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(profile.period, 10_101_010);
        assert_eq!(profile.samples[0].values, [3]);
        assert_ne!(profile.profile_id, [0; 16]);
        // Leaf first: the inlined leaf's location holds leaf then work.
        let stack = &d.stack_table[profile.samples[0].stack_index as usize];
        let leaf = &d.location_table[stack.location_indices[0] as usize];
        let names: Vec<&str> = leaf
            .lines
            .iter()
            .map(|l| s(d.function_table[l.function_index as usize].name_strindex))
            .collect();
        assert_eq!(names, ["leaf", "work"]);
        // The build id travels as a mapping attribute.
        let mapping = &d.mapping_table[leaf.mapping_index as usize];
        let build_id = &d.attribute_table[mapping.attribute_indices[0] as usize];
        assert_eq!(s(build_id.key_strindex), "process.executable.build_id.gnu");
    }

    #[test]
    fn strings_only_referenced_ones() {
        // Process and thread names travel as attribute values, not string-table entries.
        let d = request(&small_profile()).dictionary.unwrap();
        assert!(
            !d.string_table.iter().any(|s| s == "worker"),
            "{:?}",
            d.string_table
        );
    }
}
