//! `hearth run`: the always-on agent. It samples every CPU at a low rate,
//! and every export interval builds one profile per process (per container
//! when known), queues it for each configured backend (OTLP, Pyroscope)
//! within bounded retention, and keeps it in a local history. SIGTERM or
//! SIGINT stops sampling, exports the last partial window within a
//! deadline, and exits 0.

mod oncall;
mod setup;
mod window;

use std::{sync::Arc, time::Instant};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    collect::preflight,
    collect::probes::DRAIN_INTERVAL,
    collect::{Collector, CollectorSettings},
    config::Config,
    control::Request,
    deliver::outbox::Outbox,
    deliver::resource::ResourceNamer,
    deliver::retention::History,
    pipeline::WindowLimits,
    telemetry::{self, Telemetry},
};
use oncall::OnCall;
use setup::{ControlServers, SCOPE_RESCAN, Scope};
use window::{Format, WindowContext, WindowStart};

/// How often enable windows and captures are checked for their end.
const ONCALL_TICK: std::time::Duration = std::time::Duration::from_millis(200);

pub async fn run(config: Config) -> anyhow::Result<()> {
    preflight::check_privileges()?;
    let settings = CollectorSettings::try_from(&config)?;
    preflight::raise_resource_limits();
    let telemetry = Telemetry::new();
    let control_token = setup::control_token(&config)?;
    // The metrics endpoint first: a bad address fails before anything else.
    let metrics_server = setup::serve_metrics(&config, &telemetry).await?;
    let (closing_tx, closing) = watch::channel(false);
    let mut exporters = setup::start_exporters(&config, &telemetry, &closing)?;
    let scope = Scope::prepare(&config)?;
    let process_limits = settings.processes;
    let collector = Collector::load(settings).context("loading the probes")?;
    for (event, reason) in collector.refused_events() {
        tracing::warn!("event `{event}` is not profiled: {reason}; the other events are");
    }
    let host_name = ResourceNamer::system_host_name();
    let pods = setup::start_pod_watch(&config, &host_name).await?;
    let pod_index = pods.as_ref().map(|(index, _)| index.clone());
    let scope = scope.with_pods(pod_index.as_ref())?;
    let namer = ResourceNamer::new(&config.service_name, host_name)
        .with_node_name(config.node_name.clone())
        .with_pods(pod_index.clone());
    let oncall = OnCall::new(&config, process_limits, pod_index);
    let (control_tx, control_rx) = mpsc::channel(16);
    let control = ControlServers::start(&config, control_token, control_tx).await?;

    let mut agent = Agent {
        config: &config,
        collector,
        oncall,
        history: History::new(config.history.max_bytes.0, config.history.max_age),
        namer,
        outboxes: exporters
            .iter()
            .map(|e| (e.format, e.outbox.clone()))
            .collect(),
        telemetry: telemetry.clone(),
        scope,
        window_start: WindowStart::now(),
    };
    agent.serve(control_rx).await?;

    tracing::info!("stopping: exporting the last window");
    telemetry.set_ready(false);
    agent.stop()?;
    drop(agent);
    let _ = closing_tx.send(true);
    setup::drain_exporters(&config, &mut exporters).await;
    if let Some(server) = metrics_server {
        server.abort();
    }
    control.stop(&config);
    if let Some((_, task)) = pods {
        task.abort();
    }
    Ok(())
}

/// The running agent: the collector and what `run` does with its windows.
struct Agent<'a> {
    config: &'a Config,
    collector: Collector,
    oncall: OnCall,
    history: History,
    namer: ResourceNamer,
    outboxes: Vec<(Format, Outbox)>,
    telemetry: Arc<Telemetry>,
    scope: Scope,
    window_start: WindowStart,
}

impl Agent<'_> {
    /// Samples, exports windows and answers the control API until SIGINT
    /// or SIGTERM.
    async fn serve(&mut self, mut control_rx: mpsc::Receiver<Request>) -> anyhow::Result<()> {
        let config = self.config;
        self.scope.rescan(self.collector.probes_mut(), config)?;
        self.sync_probes()?;
        if !self.collector.is_sampling() {
            tracing::info!("on-demand mode: probes loaded, nothing sampled until enabled");
        }
        self.telemetry.set_ready(true);
        let events: Vec<&str> = config.events.iter().map(|e| e.name()).collect();
        tracing::info!(
            frequency = config.frequency,
            interval = ?config.export_interval,
            events = events.join(","),
            "profiling"
        );
        let mut export_tick = tokio::time::interval_at(
            tokio::time::Instant::now() + config.export_interval,
            config.export_interval,
        );
        export_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh_tick = tokio::time::interval(telemetry::REFRESH_INTERVAL);
        let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
        let mut oncall_tick = tokio::time::interval(ONCALL_TICK);
        let mut scope_tick = tokio::time::interval(SCOPE_RESCAN);
        let scoped = self.scope.cgroup2.is_some();
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        loop {
            tokio::select! {
                ready = self.collector.ready() => {
                    let ring = ready.context("waiting on the ring buffers")?;
                    let oncall = &mut self.oncall;
                    self.collector.drain_ready(ring, |ring, record| oncall.tee(ring, record))?;
                }
                Some(request) = control_rx.recv() => self.control(request)?,
                _ = oncall_tick.tick() => {
                    if self.oncall.captures_running() {
                        self.drain_cpu();
                    }
                    self.oncall.tick(Instant::now());
                    self.sync_probes()?;
                }
                _ = drain_tick.tick() => {
                    let oncall = &mut self.oncall;
                    self.collector.drain(|ring, record| oncall.tee(ring, record))?;
                }
                _ = export_tick.tick() => {
                    self.drain_cpu();
                    self.finish_window();
                }
                _ = scope_tick.tick(), if scoped => {
                    self.scope.rescan(self.collector.probes_mut(), config)?;
                }
                _ = refresh_tick.tick() => {
                    self.collector.upkeep();
                    self.collector.report(&self.telemetry);
                }
                _ = interrupt.recv() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
            }
        }
    }

    /// Answers one control request, attaching or detaching the probes
    /// when it changes what is wanted.
    fn control(&mut self, request: Request) -> anyhow::Result<()> {
        let deferred = self
            .oncall
            .handle(request, &view(&self.collector, &self.history));
        self.sync_probes()?;
        if let Some(deferred) = deferred {
            self.oncall
                .answer(deferred, &view(&self.collector, &self.history));
        }
        Ok(())
    }

    /// Detaches the probes, ends the captures and exports the last window.
    fn stop(&mut self) -> anyhow::Result<()> {
        let oncall = &mut self.oncall;
        self.collector
            .stop(|ring, record| oncall.tee(ring, record))
            .context("stopping the probes")?;
        self.oncall.finish_all();
        self.collector.report(&self.telemetry);
        self.finish_window();
        Ok(())
    }

    fn drain_cpu(&mut self) {
        let oncall = &mut self.oncall;
        self.collector
            .drain_cpu(|ring, record| oncall.tee(ring, record));
    }

    fn sync_probes(&mut self) -> anyhow::Result<()> {
        let wanted = self.oncall.wants_probes(Instant::now());
        let verb = if wanted { "starting" } else { "stopping" };
        self.collector
            .set_sampling(wanted)
            .with_context(|| format!("{verb} the probes"))
    }

    /// Ends the window: its profiles go to every exporter and the history.
    fn finish_window(&mut self) {
        let config = self.config;
        let context = WindowContext {
            pipeline: self.collector.pipeline_mut(),
            namer: &self.namer,
            outboxes: &self.outboxes,
            history: &mut self.history,
            telemetry: &self.telemetry,
            events: &config.events,
            period_ns: 1_000_000_000 / config.frequency,
            limits: WindowLimits {
                idle_windows: config.limits.process_idle_windows,
            },
        };
        self.window_start = window::finish(context, self.window_start);
    }
}

/// What the on-call status reports of the agent.
fn view<'a>(collector: &'a Collector, history: &'a History) -> oncall::Agent<'a> {
    oncall::Agent {
        attached_cpus: collector.probes().attached_cpus(),
        samples: collector.pipeline().total_samples(),
        history,
        network: collector.pipeline().network(),
    }
}
