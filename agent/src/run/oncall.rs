//! What the control API asks of the running agent: on-demand enabling
//! (the probes attach only while enabled or capturing), captures fed from
//! the same ring records as the main pipeline, and history queries.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use crate::{
    aggregate::network::NetAggregator,
    collect::Ready,
    config::{Config, Mode},
    control::{Filter, ProfileFile, Refusal, Request, Status},
    deliver::retention::History,
    deliver::{self, OutputFormat, SvgOptions, merge_pprof},
    enrich::process::{ProcessLimits, kubernetes::PodIndex},
    event::Event,
    pipeline::Pipeline,
    profile::ProfileMeta,
    symbolize::Symbolizer,
};

struct Capture {
    event: Event,
    until: Instant,
    started: Instant,
    started_wall: SystemTime,
    filter: Filter,
    format: OutputFormat,
    pipeline: Pipeline,
    reply: tokio::sync::oneshot::Sender<Result<ProfileFile, Refusal>>,
}

pub struct OnCall {
    mode: Mode,
    /// On-demand: sampling until then.
    enabled_until: Option<Instant>,
    captures: Vec<Capture>,
    max_enable: Duration,
    max_capture: Duration,
    max_captures: usize,
    frequency_hz: u64,
    events: Vec<Event>,
    process_limits: ProcessLimits,
    pods: Option<PodIndex>,
}

/// What a request may look at in the agent.
pub struct Agent<'a> {
    pub attached_cpus: usize,
    pub samples: u64,
    pub history: &'a History,
    /// The main pipeline's event aggregator, which captures of events fork.
    pub network: Option<&'a NetAggregator>,
}

impl OnCall {
    pub fn new(config: &Config, process_limits: ProcessLimits, pods: Option<PodIndex>) -> Self {
        Self {
            mode: config.mode,
            enabled_until: None,
            captures: Vec::new(),
            max_enable: config.control.max_enable,
            max_capture: config.control.max_capture,
            max_captures: config.control.max_captures,
            frequency_hz: config.frequency,
            events: config.events.clone(),
            process_limits,
            pods,
        }
    }

    fn enabled(&self, now: Instant) -> bool {
        self.mode == Mode::Always || self.enabled_until.is_some_and(|until| now < until)
    }

    /// Whether the probes should be attached now.
    pub fn wants_probes(&self, now: Instant) -> bool {
        self.enabled(now) || !self.captures.is_empty()
    }

    /// Hands a ring record to the running captures of its ring.
    pub fn tee(&mut self, ring: Ready, record: &[u8]) {
        for capture in &mut self.captures {
            match (ring, capture.event) {
                (Ready::Cpu, Event::Cpu) => capture.pipeline.ingest(record),
                (Ready::Network, event) if event != Event::Cpu => {
                    capture.pipeline.ingest_net(record)
                }
                _ => {}
            }
        }
    }

    pub fn captures_running(&self) -> bool {
        !self.captures.is_empty()
    }

    fn status(&self, agent: &Agent<'_>, now: Instant) -> Status {
        let expires = match (self.mode, self.enabled_until) {
            (Mode::OnDemand, Some(until)) if until > now => Some((until - now).as_secs_f64()),
            _ => None,
        };
        Status {
            enabled: self.enabled(now),
            mode: match self.mode {
                Mode::Always => "always".into(),
                Mode::OnDemand => "on-demand".into(),
            },
            expires_in_seconds: expires,
            attached_cpus: agent.attached_cpus,
            frequency_hz: self.frequency_hz,
            events: self.events.iter().map(|e| e.name().to_owned()).collect(),
            samples: agent.samples,
            captures_running: self.captures.len(),
            history_profiles: agent.history.len(),
            history_bytes: agent.history.bytes(),
        }
    }

    /// Answers a request; probes are (de)attached by the caller from
    /// [`wants_probes`](Self::wants_probes) afterwards. The status in an
    /// answer is made by `status` once that has happened.
    pub fn handle(&mut self, request: Request, agent: &Agent<'_>) -> Option<Deferred> {
        let now = Instant::now();
        match request {
            Request::Status(reply) => {
                let _ = reply.send(self.status(agent, now));
                None
            }
            Request::Enable { duration, reply } => {
                if self.mode == Mode::Always {
                    let _ = reply.send(Err(Refusal::Conflict(
                        "this agent runs in always mode: it samples all the time; start it with \
                         --mode on-demand to switch sampling on and off"
                            .into(),
                    )));
                    return None;
                }
                if duration > self.max_enable {
                    let _ = reply.send(Err(Refusal::BadRequest(format!(
                        "{} is longer than control.max_enable ({})",
                        humantime::format_duration(duration),
                        humantime::format_duration(self.max_enable)
                    ))));
                    return None;
                }
                self.enabled_until = Some(now + duration);
                tracing::info!(duration = %humantime::format_duration(duration), "enabled by the control API");
                Some(Deferred::Status(reply))
            }
            Request::Disable(reply) => {
                if self.mode == Mode::Always {
                    let _ = reply.send(Err(Refusal::Conflict(
                        "this agent runs in always mode and cannot be disabled; start it with \
                         --mode on-demand"
                            .into(),
                    )));
                    return None;
                }
                self.enabled_until = None;
                tracing::info!("disabled by the control API");
                Some(Deferred::Status(reply))
            }
            Request::Capture {
                event,
                duration,
                filter,
                format,
                reply,
            } => {
                let filter = match filter.resolve_pod(self.pods.as_ref()) {
                    Ok(filter) => filter,
                    Err(refusal) => {
                        let _ = reply.send(Err(refusal));
                        return None;
                    }
                };
                let refusal = if !self.events.contains(&event) {
                    Some(Refusal::Conflict(format!(
                        "this agent does not collect {event} (its events are {}); add `{event}` \
                         to `events` in its configuration",
                        self.events
                            .iter()
                            .map(|e| e.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                } else if duration > self.max_capture {
                    Some(Refusal::BadRequest(format!(
                        "{} is longer than control.max_capture ({})",
                        humantime::format_duration(duration),
                        humantime::format_duration(self.max_capture)
                    )))
                } else if self.captures.len() >= self.max_captures {
                    Some(Refusal::Busy(format!(
                        "{} captures are already running (control.max_captures); try again when \
                         one ends",
                        self.captures.len()
                    )))
                } else {
                    None
                };
                if let Some(refusal) = refusal {
                    let _ = reply.send(Err(refusal));
                    return None;
                }
                // A capture is short: it affords DWARF lines and inlined frames.
                let mut pipeline = Pipeline::new(self.process_limits, Symbolizer::default());
                if let Some(network) = agent.network.filter(|_| event.is_ring_event()) {
                    pipeline = pipeline.with_network(network.fork(event));
                }
                self.captures.push(Capture {
                    event,
                    until: now + duration,
                    started: now,
                    started_wall: SystemTime::now(),
                    filter,
                    format,
                    pipeline,
                    reply,
                });
                None
            }
            Request::History {
                event,
                last,
                filter,
                reply,
            } => {
                let answer = filter
                    .resolve_pod(self.pods.as_ref())
                    .and_then(|filter| history(agent.history, event, last, &filter));
                let _ = reply.send(answer);
                None
            }
        }
    }

    /// Answers what waited for the probes to be (de)attached.
    pub fn answer(&self, deferred: Deferred, agent: &Agent<'_>) {
        let Deferred::Status(reply) = deferred;
        let _ = reply.send(Ok(self.status(agent, Instant::now())));
    }

    /// Finishes every capture now (the agent is stopping): each gets what
    /// was sampled so far.
    pub fn finish_all(&mut self) {
        for capture in std::mem::take(&mut self.captures) {
            finish_capture(capture, self.frequency_hz);
        }
    }

    /// Ends an expired enable and finishes the captures that are due.
    pub fn tick(&mut self, now: Instant) {
        if self.enabled_until.is_some_and(|until| until <= now) {
            self.enabled_until = None;
            tracing::info!("the enabled window ended: sampling stops");
        }
        let (due, running): (Vec<Capture>, Vec<Capture>) = std::mem::take(&mut self.captures)
            .into_iter()
            .partition(|c| c.until <= now);
        self.captures = running;
        for capture in due {
            finish_capture(capture, self.frequency_hz);
        }
    }
}

/// A reply that waits until the probes match the new state.
pub enum Deferred {
    Status(tokio::sync::oneshot::Sender<Result<Status, Refusal>>),
}

fn finish_capture(mut capture: Capture, frequency_hz: u64) {
    let elapsed = capture.started.elapsed();
    let event = capture.event;
    let meta = ProfileMeta {
        event,
        period_ns: 1_000_000_000 / frequency_hz,
        start_unix_ns: capture
            .started_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        duration_ns: elapsed.as_nanos() as u64,
    };
    let profile = capture
        .pipeline
        .event_profile(event, meta)
        .unwrap_or_default();
    let kept = capture.filter.samples(&profile);
    let answer = if kept.is_empty() {
        let nothing = match event {
            Event::Cpu => "nothing chosen ran on a CPU".to_owned(),
            Event::OffCpu => "nothing chosen blocked for off_cpu.min_block or longer".to_owned(),
            event => format!("nothing chosen had a {event} event"),
        };
        Err(Refusal::NotFound(format!(
            "no {event} samples in {:.0} s{}: {nothing}",
            elapsed.as_secs_f64(),
            if capture.filter.is_empty() {
                String::new()
            } else {
                format!(" for {}", capture.filter)
            }
        )))
    } else {
        let profile = profile.subset(&kept);
        let subtitle = match event {
            Event::Cpu => format!(
                "{} samples at {frequency_hz} Hz over {:.1} s",
                profile.total_samples(),
                elapsed.as_secs_f64()
            ),
            event => format!(
                "{} {} over {:.1} s",
                profile.total_samples(),
                event.unit_label(),
                elapsed.as_secs_f64()
            ),
        };
        let title = match event {
            Event::Cpu => "Hearth CPU flamegraph (capture)".to_owned(),
            event => format!("Hearth {event} flamegraph (capture)"),
        };
        let svg = SvgOptions {
            title,
            subtitle: Some(subtitle),
        };
        let mut bytes = Vec::new();
        deliver::write_profile(&profile, capture.format, &svg, &mut bytes)
            .map(|()| ProfileFile {
                format: capture.format,
                bytes,
            })
            .map_err(|err| Refusal::BadRequest(format!("writing the profile failed: {err}")))
    };
    let _ = capture.reply.send(answer);
}

fn history(
    history: &History,
    event: Event,
    last: Duration,
    filter: &Filter,
) -> Result<ProfileFile, Refusal> {
    let since = SystemTime::now() - last;
    let entries = history.query(since, |entry| {
        filter.labels_match(&entry.labels)
            && entry
                .labels
                .iter()
                .any(|(k, v)| k == "__name__" && v == event.series_name())
    });
    if entries.is_empty() {
        return Err(Refusal::NotFound(format!(
            "the local history has no {event} profiles from the last {}{} (it keeps \
             history.max_age and history.max_bytes)",
            humantime::format_duration(last),
            if filter.is_empty() {
                String::new()
            } else {
                format!(" for {filter}")
            }
        )));
    }
    let files: Vec<&[u8]> = entries.iter().map(|e| e.pprof_gz.as_ref()).collect();
    let merged = merge_pprof(&files)
        .map_err(|err| Refusal::BadRequest(format!("the history could not be read: {err}")))?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    std::io::Write::write_all(&mut gz, &merged.encode_to_vec())
        .and_then(|()| gz.finish())
        .map(|bytes| ProfileFile {
            format: OutputFormat::Pprof,
            bytes,
        })
        .map_err(|err| Refusal::BadRequest(format!("encoding the history failed: {err}")))
}
