//! The end of an export window: the window's profile is built, split into
//! resources, encoded once per exporter and queued, and kept in the local
//! history.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::deliver::outbox::Outbox;
use crate::{
    deliver::retention::{History, HistoryEntry},
    deliver::{
        otlp::encode_request,
        pyroscope::{encode_push, labelled_profiles},
        resource::ResourceNamer,
    },
    event::Event,
    pipeline::{Pipeline, WindowLimits},
    profile::{Profile, ProfileMeta},
    telemetry::Telemetry,
};

/// The export formats a window is encoded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Otlp,
    Pyroscope,
}

/// When the current window began.
#[derive(Clone, Copy, Debug)]
pub struct WindowStart {
    pub wall: SystemTime,
    pub instant: Instant,
}

impl WindowStart {
    pub fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            instant: Instant::now(),
        }
    }
}

pub struct WindowContext<'a> {
    pub pipeline: &'a mut Pipeline,
    pub namer: &'a ResourceNamer,
    pub outboxes: &'a [(Format, Outbox)],
    pub history: &'a mut History,
    pub telemetry: &'a Telemetry,
    /// The profiles built each window.
    pub events: &'a [Event],
    pub period_ns: u64,
    pub limits: WindowLimits,
}

fn random_id() -> [u8; 16] {
    let id: u128 = rand::random::<u128>() | 1; // never all zeroes
    id.to_le_bytes()
}

/// Ends the window that began at `start`; returns the next window's start.
pub fn finish(mut ctx: WindowContext<'_>, start: WindowStart) -> WindowStart {
    let next = WindowStart::now();
    let meta = ProfileMeta {
        event: Event::Cpu,
        period_ns: ctx.period_ns,
        start_unix_ns: start
            .wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        duration_ns: next.instant.duration_since(start.instant).as_nanos() as u64,
    };
    let profiles: Vec<Profile> = ctx
        .events
        .iter()
        .filter_map(|&event| ctx.pipeline.event_profile(event, meta))
        .filter(|profile| !profile.samples.is_empty()) // nothing happened: nothing to send
        .collect();
    let stats = ctx.pipeline.symbolizer_stats();
    ctx.pipeline.end_window(&ctx.limits);
    ctx.telemetry.record_symbolizer(&stats);
    for profile in &profiles {
        export(&mut ctx, profile, start, next);
    }
    ctx.telemetry
        .record_window(ctx.history.bytes(), ctx.pipeline.processes());
    next
}

/// Encodes one profile for every exporter and keeps it in the history.
fn export(ctx: &mut WindowContext<'_>, profile: &Profile, start: WindowStart, next: WindowStart) {
    let groups = ctx.namer.group(profile);
    let labelled = labelled_profiles(profile, &groups);
    for (format, outbox) in ctx.outboxes {
        let payload = match format {
            Format::Otlp => encode_request(profile, &groups, &mut random_id).encode_to_vec(),
            Format::Pyroscope => encode_push(&labelled, &mut || {
                random_id().iter().map(|b| format!("{b:02x}")).collect()
            }),
        };
        outbox.push(payload.into(), ctx.telemetry);
    }
    let now = SystemTime::now();
    for labelled in labelled {
        ctx.history.push(
            HistoryEntry {
                window_start: start.wall,
                window_end: next.wall,
                labels: labelled.labels,
                pprof_gz: labelled.pprof_gz,
            },
            now,
        );
    }
    tracing::debug!(
        event = %profile.event,
        total = profile.total_samples(),
        resources = groups.len(),
        "window exported"
    );
}
