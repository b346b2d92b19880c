//! What `hearth run` sets up around the collector, in the order a bad
//! setting should fail: the metrics endpoint, the exporters and their
//! queues, the scope, the pod watch and the control API.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::{Context as _, bail};
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};

use super::window::Format;
use crate::{
    collect::probes::Probes,
    collect::scope::{self, selector::PodScope},
    config::Config,
    control::{self, Request},
    deliver::outbox::{Backend, Backoff, Outbox, deliver},
    deliver::retention::{ExportQueue, QueueLimits, Spool},
    deliver::{otlp::OtlpClient, pyroscope::PyroscopeClient},
    enrich::process::kubernetes,
    telemetry::{self, Telemetry},
};

/// One backend's queue and the task delivering it.
pub struct Exporter {
    pub format: Format,
    pub outbox: Outbox,
    pub task: JoinHandle<()>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` when `metrics.listen` is set.
pub async fn serve_metrics(
    config: &Config,
    telemetry: &Arc<Telemetry>,
) -> anyhow::Result<Option<JoinHandle<std::io::Result<()>>>> {
    let Some(address) = config.metrics.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| {
            format!("cannot listen on metrics.listen {address}; is another process using it?")
        })?;
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    Ok(Some(tokio::spawn(telemetry::serve(
        listener,
        telemetry.clone(),
    ))))
}

/// Every configured exporter, each with its queue (and spool) recovered.
pub fn start_exporters(
    config: &Config,
    telemetry: &Arc<Telemetry>,
    closing: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<Exporter>> {
    let mut exporters = Vec::new();
    if let Some(otlp) = &config.otlp {
        let client = OtlpClient::new(otlp).context("setting up the OTLP exporter")?;
        let backend = Backend::Otlp(client);
        exporters.push(start_exporter(
            "otlp",
            Format::Otlp,
            backend,
            config,
            telemetry,
            closing,
        )?);
        tracing::info!(endpoint = %otlp.endpoint, protocol = ?otlp.protocol, "exporting OTLP profiles");
    }
    if let Some(pyroscope) = &config.pyroscope {
        let client =
            PyroscopeClient::new(pyroscope).context("setting up the Pyroscope exporter")?;
        let backend = Backend::Pyroscope(client);
        let format = Format::Pyroscope;
        exporters.push(start_exporter(
            "pyroscope",
            format,
            backend,
            config,
            telemetry,
            closing,
        )?);
        tracing::info!(url = %pyroscope.url, "pushing profiles to Pyroscope");
    }
    if exporters.is_empty() {
        tracing::warn!(
            "no exporter configured (otlp.endpoint, pyroscope.url): profiles are only kept in the local history"
        );
    }
    Ok(exporters)
}

fn start_exporter(
    name: &'static str,
    format: Format,
    backend: Backend,
    config: &Config,
    telemetry: &Arc<Telemetry>,
    closing: &watch::Receiver<bool>,
) -> anyhow::Result<Exporter> {
    let spool = match &config.spool.dir {
        Some(dir) => Some(Spool::open(&dir.join(name), config.spool.max_bytes.0)?),
        None => None,
    };
    let limits = QueueLimits {
        max_bytes: config.queue.max_bytes.0,
        max_age: config.queue.max_age,
    };
    let (queue, dropped) = ExportQueue::new(limits, spool, SystemTime::now());
    telemetry.record_dropped(name, dropped);
    let outbox = Outbox {
        name,
        queue: Arc::new(Mutex::new(queue)),
        wake: Arc::new(Notify::new()),
    };
    let backoff = Backoff {
        initial: config.queue.initial_backoff,
        max: config.queue.max_backoff,
    };
    let task = tokio::spawn(deliver(
        outbox.clone(),
        backend,
        backoff,
        telemetry.clone(),
        closing.clone(),
    ));
    Ok(Exporter {
        format,
        outbox,
        task,
    })
}

/// Waits for the exporters to deliver what they hold, at most
/// `shutdown_timeout`; what is left is named in the log.
pub async fn drain_exporters(config: &Config, exporters: &mut [Exporter]) {
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        for exporter in exporters.iter_mut() {
            let _ = (&mut exporter.task).await;
        }
    })
    .await;
    if drained.is_ok() {
        return;
    }
    for exporter in exporters.iter() {
        exporter.task.abort();
        let left = exporter.outbox.queue.lock().expect("queue lock").len();
        let kept = if config.spool.dir.is_some() {
            "kept in the spool for the next start"
        } else {
            "lost"
        };
        tracing::warn!(
            exporter = exporter.outbox.name,
            left,
            "shutdown deadline reached; undelivered profiles {kept}"
        );
    }
}

/// How often the scope's cgroup subtrees are walked again.
pub const SCOPE_RESCAN: std::time::Duration = std::time::Duration::from_secs(5);

/// What `scope.*` restricts sampling to.
pub struct Scope {
    /// The cgroup v2 mount, when sampling is scoped at all.
    pub cgroup2: Option<PathBuf>,
    selector: Option<PodScope>,
    pods: Option<kubernetes::PodIndex>,
}

impl Scope {
    /// Parses the pod selector and finds the cgroup v2 hierarchy, before
    /// anything is loaded.
    pub fn prepare(config: &Config) -> anyhow::Result<Self> {
        let selector = PodScope::from_config(&config.scope)
            .map_err(|err| anyhow::anyhow!("scope.pod_selector: {err}"))?;
        let cgroup2 = if config.scope.is_scoped() {
            Some(scope::cgroup2_mount().context(
                "scoping (scope.cgroups, scope.namespaces, scope.pod_selector) needs the cgroup v2 \
                 hierarchy, and none is mounted (/proc/self/mountinfo has no cgroup2)",
            )?)
        } else {
            None
        };
        Ok(Self {
            cgroup2,
            selector,
            pods: None,
        })
    }

    /// Pods are chosen from `pods`; a selector without them is an error.
    pub fn with_pods(mut self, pods: Option<&kubernetes::PodIndex>) -> anyhow::Result<Self> {
        match (&self.selector, pods) {
            (Some(_), Some(index)) => self.pods = Some(index.clone()),
            (Some(_), None) => bail!(
                "scope.namespaces and scope.pod_selector need the Kubernetes API: set \
                 kubernetes.api_server, or run the agent in a cluster"
            ),
            (None, _) => {}
        }
        Ok(self)
    }

    /// Puts the cgroups of `scope.cgroups`, and of the pods `scope.namespaces`
    /// and `scope.pod_selector` choose, in the kernel's allow list.
    pub fn rescan(&self, probes: &mut Probes, config: &Config) -> anyhow::Result<()> {
        let Some(mount) = &self.cgroup2 else {
            return Ok(());
        };
        let pods = match (&self.selector, &self.pods) {
            (Some(selector), Some(index)) => {
                if index.is_empty() {
                    tracing::debug!("no pods known yet: pods in scope join once the API answers");
                }
                index.uids_where(|pod| selector.admits(pod))
            }
            _ => Default::default(),
        };
        let max = config.scope.max_cgroups;
        let allowed = scope::allowed_cgroups(mount, &config.scope.cgroups, &pods, max as usize);
        tracing::debug!(
            pods = pods.len(),
            cgroups = allowed.ids.len(),
            "cgroups in scope"
        );
        if allowed.truncated {
            tracing::warn!(
                max,
                "more cgroups in scope than scope.max_cgroups; the rest are not profiled"
            );
        }
        for missing in &allowed.missing {
            tracing::debug!(cgroup = %missing.display(), "scoped cgroup does not exist (yet)");
        }
        probes
            .set_allowed_cgroups(&allowed.ids)
            .context("updating the kernel's cgroup allow list")
    }
}

/// Starts watching this node's pods when a Kubernetes API is configured or
/// the agent runs in a cluster; the task stops with the agent.
pub async fn start_pod_watch(
    config: &Config,
    host_name: &str,
) -> anyhow::Result<Option<(kubernetes::PodIndex, JoinHandle<()>)>> {
    let client = kubernetes::client(config.kubernetes.api_server.as_ref())
        .await
        .context("setting up the Kubernetes API client (kubernetes.api_server)")?;
    let Some(client) = client else {
        return Ok(None);
    };
    let node = config
        .node_name
        .clone()
        .unwrap_or_else(|| host_name.to_owned());
    let index = kubernetes::PodIndex::default();
    let task = tokio::spawn(kubernetes::watch(client, node, index.clone()));
    Ok(Some((index, task)))
}

/// The control API's token, read before anything is loaded.
pub fn control_token(config: &Config) -> anyhow::Result<Option<String>> {
    match (config.control.listen, &config.control.token_file) {
        (Some(_), Some(file)) => Ok(Some(control::read_token(file)?)),
        (Some(_), None) => bail!("control.listen needs control.token_file"),
        (None, _) => Ok(None),
    }
}

/// The control API's listeners (a root-only socket, a TCP port with a
/// bearer token); requests go to the main loop.
pub struct ControlServers {
    socket: Option<JoinHandle<()>>,
    tcp: Option<JoinHandle<()>>,
    // Kept so the main loop's receiver never ends, even without a listener.
    _requests: mpsc::Sender<Request>,
}

impl ControlServers {
    pub async fn start(
        config: &Config,
        token: Option<String>,
        requests: mpsc::Sender<Request>,
    ) -> anyhow::Result<Self> {
        let socket = match &config.control.socket {
            Some(socket) => {
                let server = control::server::serve(socket, requests.clone())
                    .context("starting the control socket (control.socket)")?;
                tracing::info!(socket = %socket.display(), "control API listening");
                Some(server)
            }
            None => None,
        };
        let tcp = match (config.control.listen, token) {
            (Some(address), Some(token)) => {
                let (bound, server) = control::server::serve_tcp(address, token, requests.clone())
                    .await
                    .context("starting the control API on TCP (control.listen)")?;
                tracing::info!(address = %bound, "control API listening on TCP (bearer token)");
                Some(server)
            }
            _ => None,
        };
        Ok(Self {
            socket,
            tcp,
            _requests: requests,
        })
    }

    /// Stops listening; the socket file is removed (it is a socket the
    /// agent made).
    pub fn stop(self, config: &Config) {
        if let Some(server) = self.socket {
            server.abort();
            if let Some(socket) = &config.control.socket {
                control::server::remove_socket(socket);
            }
        }
        if let Some(server) = self.tcp {
            server.abort();
        }
    }
}
