//! Which resource each sample belongs to: one per container when the
//! process runs in one, else one per process; and the OpenTelemetry
//! semantic-convention attributes that describe it, `service.name` first.

use regex::Regex;
use rustc_hash::FxHashMap;

use crate::{
    config::{Pattern, ServiceNameConfig},
    enrich::process::{
        ContainerRef,
        kubernetes::{PodIndex, PodInfo},
    },
    profile::{Process, Profile},
};

/// An attribute value, as both OTLP and Pyroscope labels need them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttributeValue {
    Str(String),
    Int(i64),
}

impl std::fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(s) => f.write_str(s),
            Self::Int(i) => write!(f, "{i}"),
        }
    }
}

/// Attribute keys, from the OpenTelemetry semantic conventions.
pub mod keys {
    pub const SERVICE_NAME: &str = "service.name";
    pub const HOST_NAME: &str = "host.name";
    pub const PROCESS_PID: &str = "process.pid";
    pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
    pub const PROCESS_EXECUTABLE_PATH: &str = "process.executable.path";
    pub const CONTAINER_ID: &str = "container.id";
    pub const K8S_POD_UID: &str = "k8s.pod.uid";
    pub const K8S_NODE_NAME: &str = "k8s.node.name";
    pub const K8S_POD_NAME: &str = "k8s.pod.name";
    pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
    pub const K8S_CONTAINER_NAME: &str = "k8s.container.name";
    pub const THREAD_NAME: &str = "thread.name";
    pub const BUILD_ID_GNU: &str = "process.executable.build_id.gnu";
}

/// The samples of one resource and what describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceGroup {
    pub service_name: String,
    /// Resource attributes, `service.name` first.
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// Indexes into [`Profile::samples`].
    pub samples: Vec<usize>,
    /// More than one process: per-process facts go on the samples.
    pub many_processes: bool,
}

struct Rule {
    executable: Option<Regex>,
    executable_path: Option<Regex>,
    container_id: Option<Regex>,
    service: String,
}

/// Chooses `service.name` and groups samples into resources.
pub struct ResourceNamer {
    rules: Vec<Rule>,
    host_name: String,
    node_name: Option<String>,
    pods: Option<PodIndex>,
}

impl ResourceNamer {
    /// Patterns were compiled when the configuration was read.
    pub fn new(config: &ServiceNameConfig, host_name: String) -> Self {
        let compile = |p: &Option<Pattern>| p.as_ref().map(|p| p.0.clone());
        let rules = config
            .rules
            .iter()
            .map(|r| Rule {
                executable: compile(&r.executable),
                executable_path: compile(&r.executable_path),
                container_id: compile(&r.container_id),
                service: r.service.clone(),
            })
            .collect();
        Self {
            rules,
            host_name,
            node_name: None,
            pods: None,
        }
    }

    /// Names pods and containers from the Kubernetes API's view of them.
    pub fn with_pods(mut self, pods: Option<PodIndex>) -> Self {
        self.pods = pods;
        self
    }

    /// The pod of a container, and the container's name in it, when known.
    fn pod_of(&self, container: &ContainerRef) -> Option<(PodInfo, Option<String>)> {
        let pod = self.pods.as_ref()?.get(container.pod_uid.as_deref()?)?;
        let name = pod.containers.get(&container.id).cloned();
        Some((pod, name))
    }

    /// Names the Kubernetes node every resource is on (`k8s.node.name`).
    pub fn with_node_name(mut self, node_name: Option<String>) -> Self {
        self.node_name = node_name.filter(|n| !n.is_empty());
        self
    }

    /// This machine's host name, as the kernel has it.
    pub fn system_host_name() -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    fn service_name(&self, profile: &Profile, process: &Process) -> String {
        let executable = profile.string(process.executable_name);
        let path = profile.string(process.executable_path);
        let container = process.container.as_ref().map(|c| c.id.as_str());
        let matches = |pattern: &Option<Regex>, text: Option<&str>| match pattern {
            None => true,
            Some(re) => text.is_some_and(|t| re.is_match(t)),
        };
        self.rules
            .iter()
            .find(|r| {
                matches(&r.executable, Some(executable))
                    && matches(&r.executable_path, (!path.is_empty()).then_some(path))
                    && matches(&r.container_id, container)
            })
            .map(|r| r.service.clone())
            .or_else(|| {
                // The container's name in its pod, as Kubernetes knows it.
                let (_, name) = self.pod_of(process.container.as_ref()?)?;
                name
            })
            .unwrap_or_else(|| executable.to_owned())
    }

    /// Groups the profile's samples: per container when known, else per process.
    pub fn group(&self, profile: &Profile) -> Vec<ResourceGroup> {
        #[derive(Hash, PartialEq, Eq)]
        enum Key<'a> {
            Container(&'a str),
            Process(u32),
        }
        let mut order: Vec<Key<'_>> = Vec::new();
        let mut members: FxHashMap<Key<'_>, (Vec<usize>, FxHashMap<u32, u64>)> =
            FxHashMap::default();
        for (index, sample) in profile.samples.iter().enumerate() {
            let process = profile.process(sample);
            let key = match &process.container {
                Some(container) => Key::Container(&container.id),
                None => Key::Process(sample.process),
            };
            let entry = members.entry(key).or_insert_with_key(|k| {
                order.push(match k {
                    Key::Container(id) => Key::Container(id),
                    Key::Process(p) => Key::Process(*p),
                });
                Default::default()
            });
            entry.0.push(index);
            *entry.1.entry(sample.process).or_default() += sample.count;
        }
        order
            .into_iter()
            .map(|key| {
                let (samples, weights) = members.remove(&key).expect("grouped above");
                // The busiest process speaks for a container.
                let (&main, _) = weights
                    .iter()
                    .max_by_key(|(p, w)| (**w, std::cmp::Reverse(**p)))
                    .expect("non-empty");
                let process = &profile.processes[main as usize];
                let service_name = self.service_name(profile, process);
                let many_processes = weights.len() > 1;
                let mut attributes = vec![
                    (
                        keys::SERVICE_NAME,
                        AttributeValue::Str(service_name.clone()),
                    ),
                    (keys::HOST_NAME, AttributeValue::Str(self.host_name.clone())),
                ];
                if let Some(node) = &self.node_name {
                    attributes.push((keys::K8S_NODE_NAME, AttributeValue::Str(node.clone())));
                }
                if !many_processes {
                    attributes.push((
                        keys::PROCESS_PID,
                        AttributeValue::Int(i64::from(process.pid)),
                    ));
                    let name = profile.string(process.executable_name);
                    attributes.push((
                        keys::PROCESS_EXECUTABLE_NAME,
                        AttributeValue::Str(name.to_owned()),
                    ));
                    if process.executable_path != 0 {
                        let path = profile.string(process.executable_path).to_owned();
                        attributes.push((keys::PROCESS_EXECUTABLE_PATH, AttributeValue::Str(path)));
                    }
                }
                if let Some(container) = &process.container {
                    attributes.push((
                        keys::CONTAINER_ID,
                        AttributeValue::Str(container.id.clone()),
                    ));
                    if let Some((pod, name)) = self.pod_of(container) {
                        let text = |s: String| AttributeValue::Str(s);
                        attributes.push((keys::K8S_POD_NAME, text(pod.name)));
                        attributes.push((keys::K8S_NAMESPACE_NAME, text(pod.namespace)));
                        if let Some(name) = name {
                            attributes.push((keys::K8S_CONTAINER_NAME, text(name)));
                        }
                    }
                    if let Some(pod) = &container.pod_uid {
                        attributes.push((keys::K8S_POD_UID, AttributeValue::Str(pod.clone())));
                    }
                }
                ResourceGroup {
                    service_name,
                    attributes,
                    samples,
                    many_processes,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{Pattern, ServiceNameRule},
        deliver::fixtures::small_profile,
    };

    fn namer(rules: Vec<ServiceNameRule>) -> ResourceNamer {
        ResourceNamer::new(&ServiceNameConfig { rules }, "node-1".into())
    }

    #[test]
    fn one_resource_per_process_named_after_its_executable() {
        let groups = namer(vec![]).group(&small_profile());
        assert_eq!(groups.len(), 2);
        let first = &groups[0];
        assert_eq!(first.service_name, "app");
        assert_eq!(first.samples, [0]);
        assert!(!first.many_processes);
        let attrs: Vec<(&str, String)> = first
            .attributes
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        assert_eq!(
            attrs,
            [
                ("service.name", "app".to_owned()),
                ("host.name", "node-1".to_owned()),
                ("process.pid", "10".to_owned()),
                ("process.executable.name", "app".to_owned()),
                ("process.executable.path", "/usr/bin/app".to_owned()),
            ]
        );
    }

    #[test]
    fn a_node_name_goes_on_every_resource() {
        let groups = namer(vec![])
            .with_node_name(Some("node-1".into()))
            .group(&small_profile());
        for group in &groups {
            assert!(
                group
                    .attributes
                    .contains(&(keys::K8S_NODE_NAME, AttributeValue::Str("node-1".into())))
            );
        }
        let none = namer(vec![]).with_node_name(Some(String::new()));
        let groups = none.group(&small_profile());
        assert!(
            groups[0]
                .attributes
                .iter()
                .all(|(k, _)| *k != keys::K8S_NODE_NAME)
        );
    }

    #[test]
    fn processes_of_one_container_share_a_resource() {
        let mut profile = small_profile();
        let container = ContainerRef {
            id: "ab".repeat(32),
            pod_uid: Some("0f8b8a1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b".into()),
        };
        for process in &mut profile.processes {
            process.container = Some(container.clone());
        }
        let groups = namer(vec![]).group(&profile);
        assert_eq!(groups.len(), 1);
        let group = &groups[0];
        assert!(group.many_processes);
        assert_eq!(group.samples, [0, 1]);
        let keys: Vec<&str> = group.attributes.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            ["service.name", "host.name", "container.id", "k8s.pod.uid"]
        );
    }

    #[test]
    fn the_first_matching_rule_names_the_service() {
        let rule = |executable: &str, service: &str| ServiceNameRule {
            executable: Some(Pattern::new(executable).unwrap()),
            executable_path: None,
            container_id: None,
            service: service.into(),
        };
        let groups = namer(vec![
            rule("^nomatch$", "wrong"),
            rule("^ap+$", "billing"),
            rule(".*", "late"),
        ])
        .group(&small_profile());
        assert!(groups.iter().all(|g| g.service_name == "billing"));
    }
}
