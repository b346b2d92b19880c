//! The configuration's shape and defaults. Field comments are the
//! reference; `deploy/hearth.yaml` shows each one in place.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

use crate::{
    aggregate::network,
    collect::probes::{OffCpuSettings, RingBufferSize},
    event::Event,
    units::{ByteSize, Probability},
};

#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Samples per second on each CPU.
    pub frequency: u64,
    /// How often one profile per process (or container) is built and exported.
    #[serde(with = "duration")]
    pub export_interval: Duration,
    /// On SIGTERM/SIGINT, how long to keep trying to export what is queued,
    /// including the last, partial window.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Collect kernel stacks as well as user stacks.
    pub kernel_stacks: bool,
    /// Profiles built every interval: cpu, tx-bytes, rx-bytes, retransmits,
    /// resets, connect-latency, drops, off-cpu. A list, or names separated
    /// by commas.
    #[serde(deserialize_with = "list")]
    pub events: Vec<Event>,
    pub network: NetworkConfig,
    pub off_cpu: OffCpuConfig,
    pub unwind: UnwindConfig,
    pub limits: Limits,
    pub symbolize: SymbolizeConfig,
    /// OTLP profiles export; off when absent.
    pub otlp: Option<OtlpConfig>,
    /// Grafana Pyroscope push export; off when absent.
    pub pyroscope: Option<PyroscopeConfig>,
    pub queue: QueueConfig,
    pub spool: SpoolConfig,
    pub history: HistoryConfig,
    pub metrics: MetricsConfig,
    pub service_name: ServiceNameConfig,
    /// `always`: sample from start to stop. `on-demand`: the probes are
    /// loaded but nothing is attached until enabled over the control socket
    /// (`hearth ctl enable --for 15m`) or a capture asks: no cost when off.
    pub mode: Mode,
    pub control: ControlConfig,
    pub scope: ScopeConfig,
    /// The Kubernetes node this agent runs on, put on every resource as
    /// `k8s.node.name`; in a DaemonSet, from the downward API
    /// (`HEARTH_NODE_NAME` set from `spec.nodeName`).
    pub node_name: Option<String>,
    pub kubernetes: KubernetesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            frequency: 19,
            export_interval: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            kernel_stacks: true,
            events: vec![Event::Cpu],
            network: NetworkConfig::default(),
            off_cpu: OffCpuConfig::default(),
            unwind: UnwindConfig::default(),
            limits: Limits::default(),
            symbolize: SymbolizeConfig::default(),
            otlp: None,
            pyroscope: None,
            queue: QueueConfig::default(),
            spool: SpoolConfig::default(),
            history: HistoryConfig::default(),
            metrics: MetricsConfig::default(),
            service_name: ServiceNameConfig::default(),
            mode: Mode::Always,
            control: ControlConfig::default(),
            scope: ScopeConfig::default(),
            node_name: None,
            kubernetes: KubernetesConfig::default(),
        }
    }
}

/// `[a, b]` or `"a,b"` (as an environment variable gives a list): each
/// item parsed with `FromStr`, blanks skipped, repeats dropped.
fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr + PartialEq,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Items(Vec<String>),
        Text(String),
    }
    let items = match List::deserialize(deserializer)? {
        List::Items(items) => items,
        List::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    let mut parsed = Vec::new();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        let value: T = item.parse().map_err(serde::de::Error::custom)?;
        if !parsed.contains(&value) {
            parsed.push(value);
        }
    }
    Ok(parsed)
}

/// Network events (when any is in `events`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The network event ring shared by all CPUs: a power of two of at
    /// least a page. Events that find it full are dropped and counted.
    pub ring_buffer: ByteSize,
    /// Sockets whose owning process the kernel remembers, so retransmits,
    /// resets and drops (which fire outside the process) are attributed to it.
    pub socket_owners: u32,
    /// Connects waiting for their handshake to end; more are not timed.
    pub max_pending_connects: usize,
    /// Collect the user stack of each send, receive and connect.
    pub user_stacks: bool,
    /// Threads' last send/receive call sites remembered (in the kernel and
    /// the agent), so a loop of calls from one place walks its stack once.
    pub call_sites: u32,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            ring_buffer: ByteSize(u64::from(network::DEFAULT_RING_BYTES)),
            socket_owners: network::DEFAULT_SOCKET_OWNERS,
            max_pending_connects: network::DEFAULT_PENDING_CONNECTS,
            user_stacks: true,
            call_sites: network::DEFAULT_CALL_SITES,
        }
    }
}

/// Off-CPU time (when `off-cpu` is in `events`): how long threads block,
/// by the stack they block at.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffCpuConfig {
    /// Shortest block recorded; shorter ones are only counted
    /// (`hearth_off_cpu_blocks_total{reason="short"}`).
    #[serde(with = "duration")]
    pub min_block: Duration,
    /// Chance that a block is recorded, above 0 and at most 1; the time
    /// recorded is scaled by 1/probability, and the profile says so.
    pub probability: Probability,
    /// Size of the kernel's table of blocked threads, rounded up to a
    /// power of two (48 bytes a slot). A thread's slot is its thread ID
    /// modulo the size; when two threads sharing a slot are blocked at
    /// once, the earlier one's block is counted, not timed
    /// (`hearth_off_cpu_blocks_total{reason="map_full"}`).
    pub max_blocked_threads: u32,
}

impl Default for OffCpuConfig {
    fn default() -> Self {
        Self {
            min_block: Duration::from_nanos(network::DEFAULT_OFF_CPU_MIN_NS),
            probability: Probability(network::DEFAULT_OFF_CPU_PROBABILITY),
            max_blocked_threads: network::DEFAULT_MAX_BLOCKED_THREADS,
        }
    }
}

impl OffCpuConfig {
    /// The kernel side of these settings.
    pub fn settings(&self) -> OffCpuSettings {
        OffCpuSettings {
            min_block_ns: self.min_block.as_nanos().min(u128::from(u64::MAX)) as u64,
            probability: self.probability.0,
            max_blocked_threads: self.max_blocked_threads,
        }
    }
}

/// How user stacks are walked.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UnwindMethod {
    /// Frame pointers only (the kernel's walk): cheapest, but binaries
    /// built without them (most distribution packages, Rust release
    /// builds) show one or two frames.
    Fp,
    /// Unwind tables compiled from `.eh_frame` for every process; frame
    /// pointers only where no table covers an address.
    Dwarf,
    /// Tables once the agent has loaded them for a process, frame
    /// pointers before that.
    #[default]
    Auto,
}

impl UnwindMethod {
    pub fn kernel_mode(self) -> hearth_common::unwind::UnwindMode {
        use hearth_common::unwind::UnwindMode;
        match self {
            Self::Fp => UnwindMode::FramePointers,
            Self::Dwarf => UnwindMode::Dwarf,
            Self::Auto => UnwindMode::Auto,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fp => "fp",
            Self::Dwarf => "dwarf",
            Self::Auto => "auto",
        }
    }
}

/// User-stack unwinding from `.eh_frame` tables.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnwindConfig {
    /// `fp`, `dwarf` or `auto`.
    pub mode: UnwindMethod,
    /// Most rows of compiled tables the kernel holds for all objects
    /// together, 8 bytes each (libc takes about 28,000), rounded up to
    /// whole shards. The store grows a shard at a time as tables need
    /// room and gives shards back once no table is left in them; objects
    /// that do not fit even then are walked with frame pointers, counted.
    pub max_rows: u32,
    /// Rows of one shard of the store (at most 1,048,576), allocated when
    /// the shard is made.
    pub shard_rows: u32,
    /// Rows one object's table may have (a table must fit in one shard, so
    /// `shard_rows` if that is less).
    pub max_rows_per_object: u32,
    /// Processes the kernel unwinder holds mappings for (2 KiB each,
    /// allocated when the probes load).
    pub max_processes: u32,
}

impl Default for UnwindConfig {
    fn default() -> Self {
        Self {
            mode: UnwindMethod::Auto,
            max_rows: crate::enrich::unwind::DEFAULT_MAX_ROWS,
            shard_rows: crate::enrich::unwind::DEFAULT_SHARD_ROWS,
            max_rows_per_object: crate::enrich::unwind::DEFAULT_MAX_ROWS_PER_OBJECT,
            max_processes: crate::enrich::unwind::DEFAULT_MAX_PROCESSES,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sample ring buffer shared by all CPUs: `auto`, or a power of two of
    /// at least a page.
    #[serde(with = "ring_size")]
    pub ring_buffer_size: RingBufferSize,
    /// Most executable files held open for symbolization.
    pub max_open_objects: usize,
    /// A process not sampled for this many export intervals is forgotten
    /// (its metadata and open files released).
    pub process_idle_windows: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ring_buffer_size: RingBufferSize::Auto,
            max_open_objects: 1024,
            process_idle_windows: 6,
        }
    }
}

/// How addresses are named.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SymbolizeConfig {
    /// Read DWARF debug information (file:line, inlined functions as frames,
    /// separate debug files under /usr/lib/debug) as well as ELF symbols.
    /// Costs memory in proportion to the profiled binaries' debug info.
    pub debug_info: bool,
    /// Symbolized addresses cached (about 160 bytes each).
    pub cache_entries: usize,
    /// Most bytes one compressed section of an object file may inflate to.
    /// Files that any user can write are inflated into nothing first; one
    /// over this is symbolized from ELF symbols alone (or not at all).
    pub max_section_bytes: ByteSize,
}

impl Default for SymbolizeConfig {
    fn default() -> Self {
        Self {
            debug_info: false,
            cache_entries: crate::symbolize::DEFAULT_CACHE_ENTRIES,
            max_section_bytes: ByteSize(crate::symbolize::DEFAULT_MAX_SECTION_BYTES),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`ProfilesService/Export`), usually port 4317.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST /v1development/profiles`), usually port 4318.
    Http,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// `http://` or `https://` URL of the receiver (for HTTP, the base URL;
    /// `/v1development/profiles` is appended).
    pub endpoint: Url,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Extra request headers, e.g. a tenant id or an authorization token.
    /// From the environment: `HEARTH_OTLP__HEADERS="k1=v1,k2=v2"`.
    #[serde(default, deserialize_with = "headers")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub compression: Compression,
    /// Per-request deadline.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub timeout: Duration,
    /// PEM file of a CA to trust for `https://` endpoints, besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PyroscopeConfig {
    /// Base URL of Pyroscope (e.g. `http://pyroscope:4040`); profiles are
    /// pushed to `/push.v1.PusherService/Push`.
    pub url: Url,
    /// Extra request headers, e.g. `X-Scope-OrgID` for a tenant.
    #[serde(default, deserialize_with = "headers")]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_request_timeout", with = "duration")]
    pub timeout: Duration,
    /// PEM file of a CA to trust for `https://` URLs, besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

/// What each exporter holds while its backend is away. Bounds apply per
/// exporter; when one is hit the oldest profiles are dropped and counted.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub max_bytes: ByteSize,
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// First wait after a failed export; doubles (with jitter) up to `max_backoff`.
    #[serde(with = "duration")]
    pub initial_backoff: Duration,
    #[serde(with = "duration")]
    pub max_backoff: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize(64 << 20),
            max_age: Duration::from_secs(3600),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// A directory where queued profiles also go, so they survive a restart of
/// the agent and are sent when the backend returns. Off when `dir` is absent.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: Option<PathBuf>,
    /// Per exporter; the oldest spooled profiles are deleted (and counted) beyond it.
    pub max_bytes: ByteSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: ByteSize(256 << 20),
        }
    }
}

/// Recent profiles kept in memory for on-call queries.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    pub max_bytes: ByteSize,
    #[serde(with = "duration")]
    pub max_age: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize(8 << 20),
            max_age: Duration::from_secs(30 * 60),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Sample from start to stop.
    #[default]
    Always,
    /// Sample only while enabled over the control socket, or for a capture.
    OnDemand,
}

/// Pod, namespace and container names from the Kubernetes API.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// The API server, reached without credentials (e.g. through
    /// `kubectl proxy`). When absent, a pod's service account is used if the
    /// agent runs in a cluster (`KUBERNETES_SERVICE_HOST` set), else no names
    /// are looked up. Only this node's pods are watched (`node_name`, else
    /// the host name).
    pub api_server: Option<Url>,
}

/// Which processes may be profiled, enforced in the kernel.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeConfig {
    /// cgroup v2 subtrees to profile (paths inside the cgroup v2 mount, e.g.
    /// `kubepods.slice` or `system.slice/nginx.service`); empty: everything.
    /// Processes elsewhere are never sampled. Walked again every few
    /// seconds, so cgroups made later (new pods) join. A list, or paths
    /// separated by commas (HEARTH_SCOPE__CGROUPS=kubepods.slice).
    #[serde(deserialize_with = "list")]
    pub cgroups: Vec<PathBuf>,
    /// Kubernetes namespaces whose pods are profiled (needs the Kubernetes
    /// API: `kubernetes.api_server`, or running in a cluster). A list, or
    /// names separated by commas.
    #[serde(deserialize_with = "list")]
    pub namespaces: Vec<String>,
    /// A Kubernetes label selector for the pods to profile, e.g.
    /// `app=checkout,tier in (web,api),!canary` (needs the Kubernetes API).
    /// With `namespaces`, a pod must match both. Pods in scope are found by
    /// their UID in the cgroup hierarchy (kubelet naming) and join the
    /// kernel's allow list with the subtrees of `cgroups`.
    pub pod_selector: Option<String>,
    /// Most cgroups the kernel's allow list holds.
    pub max_cgroups: u32,
}

impl ScopeConfig {
    /// Whether profiling is limited at all.
    pub fn is_scoped(&self) -> bool {
        !self.cgroups.is_empty() || self.selects_pods()
    }

    /// Whether pods are chosen by namespace or labels.
    pub fn selects_pods(&self) -> bool {
        !self.namespaces.is_empty() || self.pod_selector.is_some()
    }
}

impl Default for ScopeConfig {
    fn default() -> Self {
        Self {
            cgroups: Vec::new(),
            namespaces: Vec::new(),
            pod_selector: None,
            max_cgroups: 16384,
        }
    }
}

/// The on-call control API (`hearth ctl`).
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unix socket of the control API, created mode 0600 (root only) in a
    /// directory of mode 0700; off when empty.
    pub socket: Option<PathBuf>,
    /// Also serve the control API over TCP at this address (e.g.
    /// `0.0.0.0:7443`, for in-cluster use); off when absent. Every request
    /// must carry `Authorization: Bearer <token>` with the token of
    /// `token_file`. Plain HTTP: keep it on a trusted network (a pod or node
    /// network behind a NetworkPolicy), or bind it to 127.0.0.1.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token for `listen` (e.g. a mounted Kubernetes
    /// Secret); required with `listen`, at least 16 characters, read at start.
    pub token_file: Option<PathBuf>,
    /// Longest `enable --for` accepted.
    #[serde(with = "duration")]
    pub max_enable: Duration,
    /// Longest `capture --duration` accepted.
    #[serde(with = "duration")]
    pub max_capture: Duration,
    /// Captures running at once; more are refused (429) until one ends.
    pub max_captures: usize,
}

/// Where the control socket goes unless configured.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/hearth/control.sock";

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            listen: None,
            token_file: None,
            max_enable: Duration::from_secs(24 * 3600),
            max_capture: Duration::from_secs(600),
            max_captures: 4,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address for `/metrics` (Prometheus text), `/healthz` and `/readyz`;
    /// off when absent.
    pub listen: Option<SocketAddr>,
}

/// How `service.name` is chosen for a process: the first rule whose
/// patterns all match, else the container name when known, else the
/// executable name.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceNameConfig {
    pub rules: Vec<ServiceNameRule>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNameRule {
    /// Regular expression on the executable's file name.
    #[serde(default)]
    pub executable: Option<Pattern>,
    /// Regular expression on the executable's full path.
    #[serde(default)]
    pub executable_path: Option<Pattern>,
    /// Regular expression on the container id.
    #[serde(default)]
    pub container_id: Option<Pattern>,
    /// The service name to give.
    pub service: String,
}

/// A regular expression, compiled once when the configuration is read
/// (written back as its text).
#[derive(Clone, Debug)]
pub struct Pattern(pub regex::Regex);

impl Pattern {
    pub fn new(text: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(text).map(Self)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(&text).map_err(|err| {
            serde::de::Error::custom(format!("{text:?} is not a regular expression: {err}"))
        })
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

/// `auto` or a size, as the ring buffer takes it.
mod ring_size {
    use serde::{Deserializer, Serializer, de::Error};

    use crate::collect::probes::RingBufferSize;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<RingBufferSize, D::Error> {
        crate::config::scalar::size_text(deserializer)?
            .parse()
            .map_err(D::Error::custom)
    }

    pub fn serialize<S: Serializer>(
        size: &RingBufferSize,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(size)
    }
}

/// Durations as people write them, with an error that shows how.
mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = crate::config::scalar::duration_text(deserializer)?;
        humantime::parse_duration(&text).map_err(|err| {
            D::Error::custom(format!(
                "{text:?} is not a duration ({err}); write e.g. 500ms, 10s, 5m or 1h"
            ))
        })
    }

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*duration))
    }
}

/// Headers as a map, or as `k=v,k=v` text (how an environment variable gives them).
fn headers<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Headers {
        Map(BTreeMap<String, String>),
        Text(String),
    }
    match Headers::deserialize(deserializer)? {
        Headers::Map(map) => Ok(map),
        Headers::Text(text) => text
            .split(',')
            .filter(|pair| !pair.trim().is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').ok_or_else(|| {
                    serde::de::Error::custom(format!("header {pair:?} is not key=value"))
                })?;
                Ok((key.trim().to_owned(), value.trim().to_owned()))
            })
            .collect(),
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::config::scalar::size_text(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
