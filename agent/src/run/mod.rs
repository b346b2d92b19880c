//! `hearth run`: the always-on agent. It samples every CPU at a low rate,
//! and every export interval builds one profile per process (per container
//! when known), queues it for each configured backend (OTLP, Pyroscope)
//! within bounded retention, and keeps it in a local history. SIGTERM or
//! SIGINT stops sampling, exports the last partial window within a
//! deadline, and exits 0.

mod delivery;
mod oncall;
mod window;

use std::{
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};

use crate::{
    config::Config,
    control,
    event::Event,
    export::{otlp::OtlpClient, pyroscope::PyroscopeClient, resource::ResourceNamer},
    network::{self, NetAggregator},
    pipeline::{Pipeline, WindowLimits, drain_cpu, drain_network},
    preflight,
    probes::{
        DRAIN_INTERVAL, NetSettings, ProbeSettings, Probes, UnwindCapacity, check_frequency,
        online_cpu_count,
    },
    process::{ProcessLimits, kubernetes},
    retention::{ExportQueue, History, QueueLimits, Spool},
    scope::{self, selector::PodScope},
    symbolize::Symbolizer,
    telemetry::{self, Telemetry, advance_to},
    unwind::{self, UnwindLimits, UnwindRegistry},
};
use delivery::{Backend, Backoff, Outbox, deliver};
use oncall::OnCall;
use window::{Format, WindowContext, WindowStart};

struct Exporter {
    format: Format,
    outbox: Outbox,
    task: JoinHandle<()>,
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

/// Copies the kernel's and the pipeline's counts into the metrics.
fn record_counters(probes: &Probes, pipeline: &Pipeline, telemetry: &Telemetry) {
    if let Ok(counters) = probes.counters() {
        telemetry.record_kernel(&counters);
    }
    if let Ok(counters) = probes.net_counters() {
        telemetry.record_net(&counters, &pipeline.network_stats());
    }
    advance_to(&telemetry.samples, pipeline.total_samples());
    advance_to(&telemetry.network_events, pipeline.total_network_events());
    advance_to(&telemetry.malformed_records, pipeline.malformed());
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    preflight::check_privileges()?;
    if let Err(problem) = check_frequency(config.frequency) {
        bail!("config key `frequency`: {problem}");
    }
    preflight::raise_resource_limits();
    let telemetry = Telemetry::new();
    // The control API's token is checked before anything is loaded.
    let control_token = match (config.control.listen, &config.control.token_file) {
        (Some(_), Some(file)) => Some(control::read_token(file)?),
        (Some(_), None) => bail!("control.listen needs control.token_file"),
        (None, _) => None,
    };

    // The metrics endpoint first: a bad address fails before anything else.
    let metrics_server = match config.metrics.listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on metrics.listen {address}; is another process using it?"
                    )
                })?;
            tracing::info!(%address, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(telemetry::serve(listener, telemetry.clone())))
        }
        None => None,
    };

    let (closing_tx, closing) = watch::channel(false);
    let mut exporters = Vec::new();
    if let Some(otlp) = &config.otlp {
        let client = OtlpClient::new(otlp).context("setting up the OTLP exporter")?;
        exporters.push(start_exporter(
            "otlp",
            Format::Otlp,
            Backend::Otlp(client),
            &config,
            &telemetry,
            &closing,
        )?);
        tracing::info!(endpoint = %otlp.endpoint, protocol = ?otlp.protocol, "exporting OTLP profiles");
    }
    if let Some(pyroscope) = &config.pyroscope {
        let client =
            PyroscopeClient::new(pyroscope).context("setting up the Pyroscope exporter")?;
        exporters.push(start_exporter(
            "pyroscope",
            Format::Pyroscope,
            Backend::Pyroscope(client),
            &config,
            &telemetry,
            &closing,
        )?);
        tracing::info!(url = %pyroscope.url, "pushing profiles to Pyroscope");
    }
    if exporters.is_empty() {
        tracing::warn!(
            "no exporter configured (otlp.endpoint, pyroscope.url): profiles are only kept in the local history"
        );
    }
    let outboxes: Vec<(Format, Outbox)> = exporters
        .iter()
        .map(|e| (e.format, e.outbox.clone()))
        .collect();

    let network_events: Vec<Event> = config
        .events
        .iter()
        .copied()
        .filter(|e| e.is_network())
        .collect();
    let network = (!network_events.is_empty()).then(|| NetSettings {
        emit: network::kernel_kinds(&network_events),
        ring_buffer_bytes: config.network.ring_buffer.0 as u32,
        socket_owners: config.network.socket_owners,
        user_stacks: config.network.user_stacks,
        call_sites: config.network.call_sites,
    });
    let scoped = config.scope.is_scoped();
    let pod_scope = PodScope::from_config(&config.scope)
        .map_err(|err| anyhow::anyhow!("scope.pod_selector: {err}"))?;
    let cgroup2 = if scoped {
        Some(scope::cgroup2_mount().context(
            "scoping (scope.cgroups, scope.namespaces, scope.pod_selector) needs the cgroup v2 \
             hierarchy, and none is mounted (/proc/self/mountinfo has no cgroup2)",
        )?)
    } else {
        None
    };
    let mut sampler = Probes::load(&ProbeSettings {
        cpu: config.events.contains(&Event::Cpu),
        network,
        cgroup_capacity: scoped.then_some(config.scope.max_cgroups),
        ignore_own_process: true,
        frequency_hz: config.frequency,
        kernel_stacks: config.kernel_stacks,
        filter_processes: false,
        ring_buffer_bytes: config
            .limits
            .ring_buffer_size
            .bytes(online_cpu_count(), config.frequency),
        filter_capacity: 1,
        unwind_mode: config.unwind.mode.kernel_mode(),
        unwind_capacity: UnwindCapacity::new(
            config.unwind.shard_rows,
            config.unwind.max_rows,
            config.unwind.max_processes,
        ),
    })
    .context("loading the probes")?;
    for (event, reason) in network::refused_events(&network_events, sampler.refused_kinds()) {
        tracing::warn!("event `{event}` is not profiled: {reason}; the other events are");
    }
    let mut unwinder = sampler.take_unwind_maps()?.map(|maps| {
        UnwindRegistry::new(
            maps,
            UnwindLimits {
                max_rows_per_object: config.unwind.max_rows_per_object as usize,
                refresh_interval: unwind::MAX_REFRESH,
            },
        )
    });
    let mut ring = sampler.take_ring()?;
    let mut net_ring = sampler.take_net_ring()?;
    let process_limits = ProcessLimits {
        max_open_objects: config.limits.max_open_objects,
        ..ProcessLimits::default()
    };
    let mut pipeline = Pipeline::new(
        process_limits,
        Symbolizer::new(config.symbolize.cache_entries, config.symbolize.debug_info)
            .with_max_section_bytes(config.symbolize.max_section_bytes.0),
    );
    if !network_events.is_empty() {
        pipeline = pipeline.with_network(NetAggregator::new(
            &network_events,
            config.network.max_pending_connects,
            config.network.call_sites as usize,
            sampler.kernel().reasons.clone(),
        ));
    }
    let host_name = ResourceNamer::system_host_name();
    let pods = start_pod_watch(&config, &host_name).await?;
    let pod_scope = match (pod_scope, &pods) {
        (Some(scope), Some((index, _))) => Some((scope, index.clone())),
        (Some(_), None) => anyhow::bail!(
            "scope.namespaces and scope.pod_selector need the Kubernetes API: set \
             kubernetes.api_server, or run the agent in a cluster"
        ),
        (None, _) => None,
    };
    let namer = ResourceNamer::new(&config.service_name, host_name)
        .with_node_name(config.node_name.clone())
        .with_pods(pods.as_ref().map(|(index, _)| index.clone()));
    let mut history = History::new(config.history.max_bytes.0, config.history.max_age);
    let limits = WindowLimits {
        idle_windows: config.limits.process_idle_windows,
    };
    let period_ns = 1_000_000_000 / config.frequency;

    let mut oncall = OnCall::new(
        &config,
        process_limits,
        pods.as_ref().map(|(index, _)| index.clone()),
    );
    // Requests from the control socket; the sender is kept even without a
    // socket, so the loop's receiver simply never yields.
    let (control_tx, mut control_rx) = mpsc::channel(16);
    let control_server = match &config.control.socket {
        Some(socket) => {
            let server = control::server::serve(socket, control_tx.clone())
                .context("starting the control socket (control.socket)")?;
            tracing::info!(socket = %socket.display(), "control API listening");
            Some(server)
        }
        None => None,
    };
    let control_tcp = match (config.control.listen, control_token) {
        (Some(address), Some(token)) => {
            let (bound, server) = control::server::serve_tcp(address, token, control_tx.clone())
                .await
                .context("starting the control API on TCP (control.listen)")?;
            tracing::info!(address = %bound, "control API listening on TCP (bearer token)");
            Some(server)
        }
        _ => None,
    };
    if let Some(mount) = &cgroup2 {
        rescan_scope(&mut sampler, mount, &config, pod_scope.as_ref())?;
    }
    let mut attached = false;
    sync_probes(
        &mut sampler,
        &mut attached,
        oncall.wants_probes(Instant::now()),
    )?;
    if !attached {
        tracing::info!("on-demand mode: probes loaded, nothing sampled until enabled");
    }
    telemetry.set_ready(true);
    let events: Vec<&str> = config.events.iter().map(|e| e.name()).collect();
    tracing::info!(
        frequency = config.frequency,
        interval = ?config.export_interval,
        events = events.join(","),
        "profiling"
    );

    let mut window_start = WindowStart::now();
    let mut export_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.export_interval,
        config.export_interval,
    );
    export_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh_tick = tokio::time::interval(telemetry::REFRESH_INTERVAL);
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    let mut oncall_tick = tokio::time::interval(ONCALL_TICK);
    let mut scope_tick = tokio::time::interval(SCOPE_RESCAN);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    macro_rules! finish_window {
        () => {
            window::finish(
                WindowContext {
                    pipeline: &mut pipeline,
                    namer: &namer,
                    outboxes: &outboxes,
                    history: &mut history,
                    telemetry: &telemetry,
                    events: &config.events,
                    period_ns,
                    limits,
                },
                window_start,
            )
        };
    }
    macro_rules! drain_cpu {
        () => {
            drain_cpu(&mut ring, &mut pipeline, unwinder.as_mut(), |record| {
                oncall.tee(record)
            })
        };
    }
    macro_rules! agent_view {
        () => {
            oncall::Agent {
                attached_cpus: sampler.attached_cpus(),
                samples: pipeline.total_samples(),
                history: &history,
            }
        };
    }
    loop {
        tokio::select! {
            ready = ring.wait() => {
                ready.context("waiting on the sample ring buffer")?;
                drain_cpu!();
            }
            Some(request) = control_rx.recv() => {
                let deferred = oncall.handle(request, &agent_view!());
                sync_probes(&mut sampler, &mut attached, oncall.wants_probes(Instant::now()))?;
                if let Some(deferred) = deferred {
                    oncall.answer(deferred, &agent_view!());
                }
            }
            _ = oncall_tick.tick() => {
                if oncall.captures_running() {
                    drain_cpu!();
                }
                oncall.tick(Instant::now());
                sync_probes(&mut sampler, &mut attached, oncall.wants_probes(Instant::now()))?;
            }
            ready = net_ring.wait() => {
                ready.context("waiting on the network event ring buffer")?;
                net_ring.drain(|record| pipeline.ingest_net(record));
            }
            _ = drain_tick.tick() => {
                drain_cpu!();
                drain_network(&mut net_ring, &mut pipeline, &mut sampler)?;
            }
            _ = export_tick.tick() => {
                drain_cpu!();
                window_start = finish_window!();
            }
            _ = scope_tick.tick(), if cgroup2.is_some() => {
                if let Some(mount) = &cgroup2 {
                    rescan_scope(&mut sampler, mount, &config, pod_scope.as_ref())?;
                }
            }
            _ = refresh_tick.tick() => {
                if let Some(unwinder) = unwinder.as_mut() {
                    unwinder.reap();
                    telemetry.record_unwind(&unwinder.stats());
                }
                record_counters(&sampler, &pipeline, &telemetry);
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }

    tracing::info!("stopping: exporting the last window");
    telemetry.set_ready(false);
    sync_probes(&mut sampler, &mut attached, false)?;
    drain_cpu!();
    oncall.finish_all();
    net_ring.drain(|record| pipeline.ingest_net(record));
    record_counters(&sampler, &pipeline, &telemetry);
    finish_window!();
    drop(sampler);

    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        for exporter in &mut exporters {
            let _ = (&mut exporter.task).await;
        }
    })
    .await;
    if drained.is_err() {
        for exporter in &exporters {
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
    if let Some(server) = metrics_server {
        server.abort();
    }
    if let Some(server) = control_server {
        server.abort();
        if let Some(socket) = &config.control.socket {
            crate::control::server::remove_socket(socket);
        }
    }
    if let Some(server) = control_tcp {
        server.abort();
    }
    drop(control_tx);
    if let Some((_, task)) = pods {
        task.abort();
    }
    Ok(())
}

/// Starts watching this node's pods when a Kubernetes API is configured or
/// the agent runs in a cluster; the task stops with the agent.
async fn start_pod_watch(
    config: &Config,
    host_name: &str,
) -> anyhow::Result<Option<(kubernetes::PodIndex, tokio::task::JoinHandle<()>)>> {
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

/// How often the scope's cgroup subtrees are walked again.
const SCOPE_RESCAN: std::time::Duration = std::time::Duration::from_secs(5);

/// Puts the cgroups of `scope.cgroups`, and of the pods `scope.namespaces`
/// and `scope.pod_selector` choose, in the kernel's allow list.
fn rescan_scope(
    probes: &mut Probes,
    mount: &std::path::Path,
    config: &Config,
    pod_scope: Option<&(PodScope, kubernetes::PodIndex)>,
) -> anyhow::Result<()> {
    let pods = match pod_scope {
        Some((scope, index)) => {
            if index.is_empty() {
                tracing::debug!("no pods known yet: pods in scope join once the API answers");
            }
            index.uids_where(|pod| scope.admits(pod))
        }
        None => Default::default(),
    };
    let allowed = scope::allowed_cgroups(
        mount,
        &config.scope.cgroups,
        &pods,
        config.scope.max_cgroups as usize,
    );
    tracing::debug!(
        pods = pods.len(),
        cgroups = allowed.ids.len(),
        "cgroups in scope"
    );
    if allowed.truncated {
        tracing::warn!(
            max = config.scope.max_cgroups,
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

/// How often enable windows and captures are checked for their end.
const ONCALL_TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// Attaches or detaches the probes so that they match `wanted`.
fn sync_probes(probes: &mut Probes, attached: &mut bool, wanted: bool) -> anyhow::Result<()> {
    if wanted && !*attached {
        probes.start().context("starting the probes")?;
        *attached = true;
        tracing::debug!("probes attached");
    } else if !wanted && *attached {
        probes.stop().context("stopping the probes")?;
        *attached = false;
        tracing::debug!("probes detached");
    }
    Ok(())
}
