//! On-call control of a running agent: an HTTP API on a root-only Unix
//! socket (`server`), and `hearth ctl`, its client (`client`). The agent's
//! main loop carries out what arrives as [`Request`]s.

pub mod client;
pub mod server;

use std::{path::Path, time::Duration};

use anyhow::Context as _;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{
    deliver::OutputFormat, enrich::process::kubernetes::PodIndex, event::Event, profile::Profile,
};

/// Version prefix of every control endpoint.
pub const API_PREFIX: &str = "/v1";

/// What the agent reports about itself (`GET /v1/status`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct Status {
    /// Sampling now (always mode, or on-demand and enabled).
    pub enabled: bool,
    /// `always` or `on-demand`.
    pub mode: String,
    /// Seconds until an on-demand enable ends; null when it does not end.
    pub expires_in_seconds: Option<f64>,
    /// CPUs the sampler is attached to right now (0 when nothing is).
    pub attached_cpus: usize,
    pub frequency_hz: u64,
    pub events: Vec<String>,
    /// Samples read since the agent started.
    pub samples: u64,
    pub captures_running: usize,
    /// Profiles in the local history, and their bytes.
    pub history_profiles: usize,
    pub history_bytes: u64,
}

/// Which processes a capture or a history query keeps.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub pid: Option<u32>,
    /// A container id, or a unique prefix of one (12 digits, as `docker ps` shows).
    pub container: Option<String>,
    /// A Kubernetes pod UID.
    pub pod_uid: Option<String>,
    /// A Kubernetes pod as `namespace/name`; the agent turns it into its
    /// UID from the API's view of this node's pods.
    pub pod: Option<String>,
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(pid) = self.pid {
            parts.push(format!("pid {pid}"));
        }
        if let Some(id) = &self.container {
            parts.push(format!("container {id}"));
        }
        if let Some(uid) = &self.pod_uid {
            parts.push(format!("pod UID {uid}"));
        }
        if let Some(pod) = &self.pod {
            parts.push(format!("pod {pod}"));
        }
        if parts.is_empty() {
            f.write_str("every process")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.pid.is_none()
            && self.container.is_none()
            && self.pod_uid.is_none()
            && self.pod.is_none()
    }

    /// Turns `pod` (namespace/name) into its UID through `pods`.
    pub fn resolve_pod(mut self, pods: Option<&PodIndex>) -> Result<Self, Refusal> {
        let Some(pod) = self.pod.take() else {
            return Ok(self);
        };
        let (namespace, name) = pod
            .split_once('/')
            .ok_or_else(|| Refusal::BadRequest(format!("`pod={pod}` is not NAMESPACE/NAME")))?;
        let pods = pods.ok_or_else(|| {
            Refusal::Conflict(
                "pod names need the Kubernetes API (kubernetes.api_server, or the agent running \
                 in a cluster); give the pod's UID instead"
                    .into(),
            )
        })?;
        let uid = pods
            .find(namespace, name)
            .ok_or_else(|| Refusal::NotFound(format!("no pod {pod} on this node")))?;
        self.pod_uid = Some(uid);
        Ok(self)
    }

    /// The indexes of the samples of `profile` this filter keeps.
    pub fn samples(&self, profile: &Profile) -> Vec<usize> {
        (0..profile.samples.len())
            .filter(|&i| {
                let process = profile.process(&profile.samples[i]);
                let container = process.container.as_ref();
                self.pid.is_none_or(|pid| process.pid == pid)
                    && self.container.as_deref().is_none_or(|id| {
                        container.is_some_and(|c| !id.is_empty() && c.id.starts_with(id))
                    })
                    && self.pod_uid.as_deref().is_none_or(|uid| {
                        container.is_some_and(|c| c.pod_uid.as_deref() == Some(uid))
                    })
            })
            .collect()
    }

    /// Whether a history entry's labels match.
    pub fn labels_match(&self, labels: &[(String, String)]) -> bool {
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        self.pid
            .is_none_or(|pid| label("process_pid") == Some(pid.to_string().as_str()))
            && self.container.as_deref().is_none_or(|id| {
                label("container_id").is_some_and(|c| !id.is_empty() && c.starts_with(id))
            })
            && self
                .pod_uid
                .as_deref()
                .is_none_or(|uid| label("k8s_pod_uid") == Some(uid))
    }
}

/// A finished capture or history query: a profile file.
#[derive(Debug)]
pub struct ProfileFile {
    pub format: OutputFormat,
    pub bytes: Vec<u8>,
}

/// Why the agent would not do what was asked; becomes a 4xx with the message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotFound(String),
}

/// What the control API asks of the agent's main loop.
#[derive(Debug)]
pub enum Request {
    Status(oneshot::Sender<Status>),
    Enable {
        duration: Duration,
        reply: oneshot::Sender<Result<Status, Refusal>>,
    },
    Disable(oneshot::Sender<Result<Status, Refusal>>),
    Capture {
        event: Event,
        duration: Duration,
        filter: Filter,
        format: OutputFormat,
        reply: oneshot::Sender<Result<ProfileFile, Refusal>>,
    },
    History {
        event: Event,
        last: Duration,
        filter: Filter,
        reply: oneshot::Sender<Result<ProfileFile, Refusal>>,
    },
}

/// Reads the bearer token from `path`: the file's text, trimmed.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the control API token {}", path.display()))?
        .trim()
        .to_owned();
    if token.len() < MIN_TOKEN_LEN {
        anyhow::bail!(
            "the control API token in {} is {} characters; use at least {MIN_TOKEN_LEN} \
             (e.g. `openssl rand -hex 32 > {}`)",
            path.display(),
            token.len(),
            path.display()
        );
    }
    Ok(token)
}

/// Shortest bearer token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{deliver::fixtures::small_profile, enrich::process::ContainerRef};

    #[test]
    fn filters_keep_the_chosen_process_container_or_pod() {
        let mut profile = small_profile();
        profile.processes[1].container = Some(ContainerRef {
            id: "abcdef0123456789".into(),
            pod_uid: Some("pod-1".into()),
        });
        let keep = |filter: Filter| filter.samples(&profile);
        assert_eq!(keep(Filter::default()), [0, 1]);
        let pid = Filter {
            pid: Some(10),
            ..Filter::default()
        };
        assert_eq!(keep(pid), [0]);
        let container = Filter {
            container: Some("abcdef012345".into()),
            ..Filter::default()
        };
        assert_eq!(keep(container), [1]);
        let pod = Filter {
            pod_uid: Some("pod-1".into()),
            ..Filter::default()
        };
        assert_eq!(keep(pod), [1]);
        let nobody = Filter {
            pid: Some(99),
            ..Filter::default()
        };
        assert!(keep(nobody).is_empty());

        let labels = vec![
            ("process_pid".to_owned(), "10".to_owned()),
            ("container_id".to_owned(), "abcdef0123456789".to_owned()),
        ];
        assert!(
            Filter {
                pid: Some(10),
                container: Some("abcdef".into()),
                ..Filter::default()
            }
            .labels_match(&labels)
        );
        assert!(
            !Filter {
                pid: Some(11),
                ..Filter::default()
            }
            .labels_match(&labels)
        );
    }

    #[test]
    fn short_or_missing_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let err = read_token(&short).unwrap_err().to_string();
        assert!(err.contains("3 characters"), "{err}");
        let good = dir.path().join("good");
        std::fs::write(&good, "  0123456789abcdef0123\n").unwrap();
        assert_eq!(read_token(&good).unwrap(), "0123456789abcdef0123");
        assert!(read_token(&dir.path().join("none")).is_err());
    }
}
