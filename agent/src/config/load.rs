//! Merging the configuration's three sources and checking the result.
//!
//! The file, then each `HEARTH_…` variable, then each flag is written into
//! one YAML tree (later sources win), remembering where every key came
//! from; the tree is then deserialized as a whole, so an unknown key or a
//! bad value is refused with its path and its source.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use yaml_serde::{Mapping, Value};

use super::Config;

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "HEARTH_";
/// Separates nesting levels in a variable name: `HEARTH_OTLP__ENDPOINT` is `otlp.endpoint`.
pub const ENV_NESTING: &str = "__";

/// Where configuration comes from, in increasing precedence.
#[derive(Clone, Debug, Default)]
pub struct ConfigSources {
    pub file: Option<PathBuf>,
    /// Environment variables; those without the `HEARTH_` prefix are ignored.
    pub env: Vec<(String, String)>,
    /// Flags given on the command line.
    pub flags: Vec<ConfigFlag>,
}

/// One key set by a command-line flag.
#[derive(Clone, Debug)]
pub struct ConfigFlag {
    pub path: Vec<String>,
    pub value: Value,
    /// The flag's name, without dashes, for error messages.
    pub flag: &'static str,
}

impl ConfigFlag {
    /// A flag whose text is read as a YAML scalar, as the file's values are.
    pub fn new(key: &str, text: &str, flag: &'static str) -> Self {
        Self {
            path: key.split('.').map(str::to_owned).collect(),
            value: scalar(text),
            flag,
        }
    }
}

/// `19` is a number and `true` a boolean, as they would be in the file;
/// anything else is the text itself.
fn scalar(text: &str) -> Value {
    match yaml_serde::from_str::<Value>(text) {
        Ok(value) if !value.is_null() && !value.is_mapping() && !value.is_sequence() => value,
        _ => Value::String(text.to_owned()),
    }
}

impl ConfigSources {
    /// The process's own `HEARTH_…` variables.
    pub fn with_process_env(mut self) -> Self {
        self.env = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid YAML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("the config file {path} must hold a mapping of keys (like `frequency: 19`) at the top")]
    NotAMapping { path: PathBuf },
    #[error(
        "environment variable {name} does not name a config key: use HEARTH_<KEY>, with __ between nesting levels (e.g. HEARTH_OTLP__ENDPOINT)"
    )]
    BadVariable { name: String },
    #[error("config key `{key}` ({origin}): {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

/// Reads, merges and checks the configuration.
pub fn load(sources: &ConfigSources) -> Result<Config, ConfigError> {
    let mut tree = Value::Mapping(Mapping::new());
    let mut origins: BTreeMap<String, String> = BTreeMap::new();

    if let Some(path) = &sources.file {
        let file = read_file(path)?;
        for key in leaf_keys(&file, String::new()) {
            origins.insert(key, format!("in {}", path.display()));
        }
        tree = file;
    }
    for (name, raw) in &sources.env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest
            .split(ENV_NESTING)
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::BadVariable { name: name.clone() });
        }
        set(&mut tree, &path, scalar(raw));
        origins.insert(path.join("."), format!("from {name}"));
    }
    for flag in &sources.flags {
        set(&mut tree, &flag.path, flag.value.clone());
        origins.insert(flag.path.join("."), format!("from --{}", flag.flag));
    }

    let invalid = |key: String, message: String| {
        let origin = origin_of(&origins, &key);
        ConfigError::Invalid {
            key,
            origin,
            message,
        }
    };
    let config: Config = serde_path_to_error::deserialize(tree).map_err(|err| {
        let key = err.path().to_string();
        invalid(key, err.into_inner().to_string())
    })?;
    validate(&config).map_err(|(key, message)| invalid(key.to_owned(), message))?;
    Ok(config)
}

fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let value: Value = yaml_serde::from_str(&text).map_err(|err| ConfigError::Syntax {
        path: path.to_owned(),
        message: err.to_string(),
    })?;
    match value {
        Value::Mapping(_) => Ok(value),
        Value::Null => Ok(Value::Mapping(Mapping::new())), // an empty file
        _ => Err(ConfigError::NotAMapping {
            path: path.to_owned(),
        }),
    }
}

/// Dotted paths of every leaf under `value`.
fn leaf_keys(value: &Value, prefix: String) -> Vec<String> {
    match value {
        Value::Mapping(map) => map
            .iter()
            .flat_map(|(k, v)| {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned);
                let path = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_keys(v, path)
            })
            .collect(),
        _ => vec![prefix],
    }
}

/// Writes `value` at `path`, creating (or replacing non-mapping) parents.
fn set(tree: &mut Value, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        *tree = value;
        return;
    };
    if !tree.is_mapping() {
        *tree = Value::Mapping(Mapping::new());
    }
    let map = tree.as_mapping_mut().expect("just made a mapping");
    let key = Value::String(first.clone());
    let child = map.entry(key).or_insert(Value::Null);
    set(child, rest, value);
}

/// The source of `key`, or of its nearest ancestor or descendant that has
/// one. A list's items (`rules[0].executable`) come from the list's source.
fn origin_of(origins: &BTreeMap<String, String>, key: &str) -> String {
    let key = match key.find('[') {
        Some(at) => &key[..at],
        None => key,
    };
    let mut probe = key;
    loop {
        if let Some(origin) = origins.get(probe) {
            return origin.clone();
        }
        match probe.rsplit_once('.') {
            Some((parent, _)) => probe = parent,
            None => break,
        }
    }
    origins
        .iter()
        .find(|(k, _)| k.starts_with(&format!("{key}.")))
        .map_or_else(|| "default".to_owned(), |(_, origin)| origin.clone())
}

/// Checks that go beyond types: ranges, URL schemes, patterns.
fn validate(config: &Config) -> Result<(), (&'static str, String)> {
    if !(1..=100_000).contains(&config.frequency) {
        return Err((
            "frequency",
            format!("{} is not between 1 and 100000 Hz", config.frequency),
        ));
    }
    if config.export_interval.as_secs() < 1 {
        return Err(("export_interval", "must be at least 1s".into()));
    }
    if config.limits.process_idle_windows == 0 {
        return Err(("limits.process_idle_windows", "must be at least 1".into()));
    }
    let unwind = &config.unwind;
    for (key, value) in [
        ("unwind.max_rows", unwind.max_rows),
        ("unwind.shard_rows", unwind.shard_rows),
        ("unwind.max_rows_per_object", unwind.max_rows_per_object),
        ("unwind.max_processes", unwind.max_processes),
    ] {
        if value == 0 {
            return Err((key, "must be at least 1".into()));
        }
    }
    let stride = 1u32 << hearth_common::unwind::UNWIND_SHARD_STRIDE_LOG2;
    if unwind.shard_rows > stride {
        return Err((
            "unwind.shard_rows",
            format!(
                "{} is more than a shard can hold; give at most {stride}",
                unwind.shard_rows
            ),
        ));
    }
    if config.scope.is_scoped() && config.scope.max_cgroups == 0 {
        return Err(("scope.max_cgroups", "must be at least 1".into()));
    }
    if let Some(selector) = &config.scope.pod_selector {
        crate::collect::scope::selector::parse(selector)
            .map_err(|err| ("scope.pod_selector", err.to_string()))?;
    }
    if config.control.listen.is_some() && config.control.token_file.is_none() {
        return Err((
            "control.token_file",
            "control.listen needs a bearer token: give a file holding one \
             (e.g. a mounted Secret; `openssl rand -hex 32` makes one)"
                .into(),
        ));
    }
    if config.events.is_empty() {
        return Err(("events", "name at least one event, e.g. [cpu]".into()));
    }
    if let Err(problem) = crate::collect::probes::check_ring_buffer_size(config.network.ring_buffer)
    {
        return Err(("network.ring_buffer", problem.to_string()));
    }
    if config.network.call_sites == 0 {
        return Err(("network.call_sites", "must be at least 1".into()));
    }
    if config.network.socket_owners == 0 {
        return Err(("network.socket_owners", "must be at least 1".into()));
    }
    if config.symbolize.cache_entries < 1024 {
        return Err(("symbolize.cache_entries", "must be at least 1024".into()));
    }
    let web = |url: &url::Url| matches!(url.scheme(), "http" | "https");
    if let Some(otlp) = &config.otlp
        && !web(&otlp.endpoint)
    {
        return Err((
            "otlp.endpoint",
            format!("{} must be an http:// or https:// URL", otlp.endpoint),
        ));
    }
    if let Some(pyroscope) = &config.pyroscope
        && !web(&pyroscope.url)
    {
        return Err((
            "pyroscope.url",
            format!("{} must be an http:// or https:// URL", pyroscope.url),
        ));
    }
    let queue = &config.queue;
    if queue.max_bytes.0 < 1024 {
        return Err(("queue.max_bytes", "must be at least 1KiB".into()));
    }
    if queue.initial_backoff.is_zero() || queue.max_backoff < queue.initial_backoff {
        return Err((
            "queue.max_backoff",
            "backoffs must be positive, max_backoff at least initial_backoff".into(),
        ));
    }
    for rule in &config.service_name.rules {
        let patterns = [&rule.executable, &rule.executable_path, &rule.container_id];
        if patterns.iter().all(|p| p.is_none()) {
            return Err((
                "service_name.rules",
                format!(
                    "the rule for {:?} matches nothing: give executable, executable_path or container_id",
                    rule.service
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{config::OtlpProtocol, units::ByteSize};

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_any_source() {
        let config = load(&ConfigSources::default()).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.frequency, 19);
        assert_eq!(config.queue.max_bytes, ByteSize(64 << 20));
        assert!(config.otlp.is_none() && config.pyroscope.is_none());
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let yaml =
            file("frequency: 49\nexport_interval: 30s\notlp:\n  endpoint: http://file:4317\n");
        let sources = ConfigSources {
            file: Some(yaml.path().to_owned()),
            env: env(&[
                ("HEARTH_FREQUENCY", "29"),
                ("HEARTH_OTLP__PROTOCOL", "http"),
                ("PATH", "/bin"),
            ]),
            flags: vec![ConfigFlag::new("frequency", "99", "frequency")],
        };
        let config = load(&sources).unwrap();
        assert_eq!(config.frequency, 99);
        assert_eq!(config.export_interval, Duration::from_secs(30));
        let otlp = config.otlp.unwrap();
        assert_eq!(otlp.endpoint.as_str(), "http://file:4317/");
        assert_eq!(otlp.protocol, OtlpProtocol::Http);
    }

    #[test]
    fn environment_alone_can_enable_an_exporter_with_headers() {
        let sources = ConfigSources {
            env: env(&[
                ("HEARTH_OTLP__ENDPOINT", "https://collector:4317"),
                (
                    "HEARTH_OTLP__HEADERS",
                    "x-scope-orgid=team-a, authorization=Bearer abc",
                ),
                ("HEARTH_QUEUE__MAX_BYTES", "8MiB"),
            ]),
            ..Default::default()
        };
        let config = load(&sources).unwrap();
        let otlp = config.otlp.unwrap();
        assert_eq!(otlp.headers["x-scope-orgid"], "team-a");
        assert_eq!(otlp.headers["authorization"], "Bearer abc");
        assert_eq!(config.queue.max_bytes, ByteSize(8 << 20));
    }

    fn error_of(sources: ConfigSources) -> String {
        load(&sources).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path_source_and_the_valid_ones() {
        let yaml = file("otlp:\n  endpont: http://x:4317\n");
        let text = error_of(ConfigSources {
            file: Some(yaml.path().to_owned()),
            ..Default::default()
        });
        assert!(text.contains("`otlp"), "{text}");
        assert!(
            text.contains("endpont") && text.contains("endpoint"),
            "{text}"
        );
        assert!(text.contains(&yaml.path().display().to_string()), "{text}");

        let text = error_of(ConfigSources {
            env: env(&[("HEARTH_FREQENCY", "5")]),
            ..Default::default()
        });
        assert!(
            text.contains("freqency") && text.contains("HEARTH_FREQENCY"),
            "{text}"
        );
        assert!(
            text.contains("frequency"),
            "should list the valid keys: {text}"
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_path_and_what_would_work() {
        let cases = [
            ("HEARTH_EXPORT_INTERVAL", "often", "export_interval"),
            ("HEARTH_FREQUENCY", "0", "between 1 and 100000"),
            (
                "HEARTH_OTLP__ENDPOINT",
                "collector:4317",
                "http:// or https://",
            ),
            ("HEARTH_OTLP__PROTOCOL", "carrier-pigeon", "grpc"),
            ("HEARTH_QUEUE__MAX_BYTES", "lots", "64MiB"),
            ("HEARTH_LIMITS__RING_BUFFER_SIZE", "3MiB", "power of two"),
            ("HEARTH_METRICS__LISTEN", "everywhere", "metrics.listen"),
            ("HEARTH_QUEUE__MAX_BYTES", "-5", "-5 is not a size"),
            ("HEARTH_QUEUE__MAX_BYTES", "1.5", "whole number of bytes"),
            (
                "HEARTH_EXPORT_INTERVAL",
                "8",
                "8 has no unit; write e.g. 8s",
            ),
            ("HEARTH_EXPORT_INTERVAL", "-3", "-3 is not a duration"),
        ];
        for (name, value, expected) in cases {
            let text = error_of(ConfigSources {
                env: env(&[(name, value)]),
                ..Default::default()
            });
            assert!(text.contains(expected), "{name}={value}: {text}");
            assert!(
                text.contains(name),
                "{name}={value} should name its source: {text}"
            );
        }
    }

    #[test]
    fn malformed_files_and_variables_say_what_is_wrong() {
        let yaml = file("frequency: [1, 2\n");
        let text = error_of(ConfigSources {
            file: Some(yaml.path().to_owned()),
            ..Default::default()
        });
        assert!(text.contains("not valid YAML"), "{text}");
        let text = error_of(ConfigSources {
            file: Some("/nonexistent/hearth.yaml".into()),
            ..Default::default()
        });
        assert!(text.contains("cannot read the config file"), "{text}");
        let text = error_of(ConfigSources {
            env: env(&[("HEARTH_OTLP____ENDPOINT", "x")]),
            ..Default::default()
        });
        assert!(text.contains("HEARTH_OTLP__ENDPOINT"), "{text}");
        // The file's own words: the key, the value, the units that work.
        let yaml = file("export_interval: 8\nqueue:\n  max_bytes: -5\n");
        let text = error_of(ConfigSources {
            file: Some(yaml.path().to_owned()),
            ..Default::default()
        });
        assert!(
            text.contains("export_interval") && text.contains("8s"),
            "{text}"
        );
        assert!(!text.contains("invalid type"), "{text}");
    }

    #[test]
    fn service_rules_must_match_something_and_compile() {
        let yaml = file("service_name:\n  rules:\n    - service: everything\n");
        let text = error_of(ConfigSources {
            file: Some(yaml.path().to_owned()),
            ..Default::default()
        });
        assert!(text.contains("matches nothing"), "{text}");
        let yaml =
            file("service_name:\n  rules:\n    - executable: '(unclosed'\n      service: x\n");
        let text = error_of(ConfigSources {
            file: Some(yaml.path().to_owned()),
            ..Default::default()
        });
        assert!(text.contains("service_name.rules"), "{text}");
        // The pattern came from the file, and the message says so.
        let from = format!("(in {})", yaml.path().display());
        assert!(text.contains(&from), "{text}");
    }

    #[test]
    fn the_documented_example_file_is_valid_and_states_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hearth.yaml");
        let config = load(&ConfigSources {
            file: Some(example.clone()),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
        // The example enables the exporters and a few extras; everything else
        // it spells out must be the default, so the file documents the truth.
        let mut expected = Config::default();
        expected.otlp.clone_from(&config.otlp);
        expected.pyroscope.clone_from(&config.pyroscope);
        expected.spool.dir.clone_from(&config.spool.dir);
        expected.metrics.listen = config.metrics.listen;
        expected.service_name.clone_from(&config.service_name);
        assert_eq!(config, expected);
    }
}
