//! Network events, aggregated: one stack table per enabled event, each
//! stack tagged with the peer, the local port and (for drops and resets)
//! the reason, values summed in the event's unit. A connect's start waits
//! (bounded) for its end, and the pair becomes one latency value on the
//! connecting stack.

use std::collections::BTreeMap;

use hearth_common::net::{NetEventInfo, NetEventKind, TCP_ESTABLISHED};
use rustc_hash::FxHashMap;

use crate::{
    aggregate::{EventTag, StackTable, TagValue},
    collect::probes::{NetRecord, OffCpuSettings, RawSample, ReasonNames},
    enrich::process::ProcessTable,
    event::Event,
};

/// Default bytes of the network event ring (`network.ring_buffer`): about
/// 20,000 events, a fraction of a second of a busy bulk transfer.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
/// Default sockets whose owner the kernel remembers (`network.socket_owners`).
pub const DEFAULT_SOCKET_OWNERS: u32 = 65536;
/// Default threads' call sites remembered (`network.call_sites`).
pub const DEFAULT_CALL_SITES: u32 = 16384;
/// Default shortest block recorded off-CPU (`off_cpu.min_block`): 1 ms.
/// Blocks shorter than that are by far the most frequent (lock and pipe
/// handoffs, futex wakeups between busy threads) yet add up to little of
/// what a request waits for; waits on disks, peers and timers last longer.
pub const DEFAULT_OFF_CPU_MIN_NS: u64 = 1_000_000;
/// Default chance a block is recorded (`off_cpu.probability`): every
/// block. A thread that blocks again where it blocked last costs no
/// stack walk, so even a context-switch storm stays cheap (see
/// docs/benchmarks.md); lower it on nodes that switch more still.
pub const DEFAULT_OFF_CPU_PROBABILITY: f64 = 1.0;
/// Default threads that can be blocked at once and still be timed
/// (`off_cpu.max_blocked_threads`): 32 bytes each in the kernel.
pub const DEFAULT_MAX_BLOCKED_THREADS: u32 = 65536;
/// Default connects waiting for their handshake to end (`network.max_pending_connects`).
pub const DEFAULT_PENDING_CONNECTS: usize = 4096;

/// The kernel event kinds the given profile events need.
pub fn kernel_kinds(events: &[Event]) -> Vec<NetEventKind> {
    let mut kinds = Vec::new();
    for event in events {
        kinds.extend_from_slice(match event {
            Event::Cpu => &[][..],
            Event::TxBytes => &[NetEventKind::Send],
            Event::RxBytes => &[NetEventKind::Receive],
            Event::Retransmits => &[NetEventKind::Retransmit],
            Event::Resets => &[NetEventKind::ResetSent, NetEventKind::ResetReceived],
            Event::ConnectLatency => &[NetEventKind::ConnectStart, NetEventKind::ConnectEnd],
            Event::Drops => &[NetEventKind::Drop],
            Event::OffCpu => &[NetEventKind::OffCpu],
        });
    }
    kinds
}

/// The events among `events` that need a kind the kernel refused, each
/// with the kernel's reason.
pub fn refused_events(
    events: &[Event],
    refused: &[(NetEventKind, String)],
) -> Vec<(Event, String)> {
    events
        .iter()
        .filter_map(|&event| {
            let kinds = kernel_kinds(&[event]);
            refused
                .iter()
                .find(|(kind, _)| kinds.contains(kind))
                .map(|(_, reason)| (event, reason.clone()))
        })
        .collect()
}

/// Counts of what the aggregator could not use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Connect starts dropped because `max_pending_connects` was reached.
    pub pending_connects_dropped: u64,
    /// Connect ends whose start was never seen (the agent started mid-handshake).
    pub unmatched_connect_ends: u64,
    /// Events whose reused stack the agent no longer had (counted with no stack).
    pub stacks_forgotten: u64,
}

pub struct NetAggregator {
    tables: BTreeMap<Event, StackTable>,
    /// Connect starts by socket: the start record, waiting for its end.
    pending: FxHashMap<u64, Box<[u8]>>,
    max_pending: usize,
    /// Each thread's last walked record per kind, for the records that
    /// reuse its stack (`FLAG_SAME_STACK`).
    last_walked: FxHashMap<(u32, u16), Box<[u8]>>,
    max_last_walked: usize,
    /// Bumped when `last_walked` is emptied; the kernel must learn it.
    generation: u64,
    generation_published: u64,
    reasons: ReasonNames,
    /// Off-CPU time recorded is multiplied by this: 1 / the sampling probability.
    off_cpu_scale: f64,
    off_cpu: Option<OffCpuSettings>,
    stats: NetStats,
}

const OUTCOME_ESTABLISHED: u64 = 1;

impl NetAggregator {
    /// Aggregates the network events among `events`; at most
    /// `max_pending_connects` connects wait for their end at once.
    pub fn new(
        events: &[Event],
        max_pending_connects: usize,
        call_sites: usize,
        reasons: ReasonNames,
    ) -> Self {
        Self {
            tables: events
                .iter()
                .filter(|e| e.is_ring_event())
                .map(|&e| (e, StackTable::new()))
                .collect(),
            pending: FxHashMap::default(),
            max_pending: max_pending_connects,
            last_walked: FxHashMap::default(),
            max_last_walked: call_sites,
            generation: 0,
            generation_published: 0,
            reasons,
            off_cpu_scale: 1.0,
            off_cpu: None,
            stats: NetStats::default(),
        }
    }

    /// Off-CPU blocks are chosen as `settings` say: each recorded block
    /// stands for 1/probability blocks like it.
    pub fn with_off_cpu(mut self, settings: Option<OffCpuSettings>) -> Self {
        if let Some(settings) = settings
            && settings.probability > 0.0
            && settings.probability <= 1.0
        {
            self.off_cpu_scale = 1.0 / settings.probability;
        }
        self.off_cpu = settings;
        self
    }

    /// What a profile of `event` should say about how it was gathered.
    pub fn notes(&self, event: Event) -> Vec<(String, String)> {
        match (event, self.off_cpu) {
            (Event::OffCpu, Some(off_cpu)) => vec![
                (
                    "hearth.off_cpu.min_block_ns".into(),
                    off_cpu.min_block_ns.to_string(),
                ),
                (
                    "hearth.off_cpu.sampling_probability".into(),
                    off_cpu.probability.to_string(),
                ),
                (
                    "hearth.off_cpu.scale".into(),
                    format!(
                        "values are blocked nanoseconds of blocks of at least {} ns, each \
                         recorded with probability {} and multiplied by {}",
                        off_cpu.min_block_ns, off_cpu.probability, self.off_cpu_scale
                    ),
                ),
            ],
            _ => Vec::new(),
        }
    }

    /// A new aggregator of `event` alone (for a capture), that knows the
    /// stacks this one was last sent: the records that reuse them find them.
    pub fn fork(&self, event: Event) -> Self {
        Self {
            tables: [(event, StackTable::new())].into_iter().collect(),
            pending: FxHashMap::default(),
            max_pending: self.max_pending,
            last_walked: self.last_walked.clone(),
            max_last_walked: self.max_last_walked,
            generation: 0,
            generation_published: 0,
            reasons: self.reasons.clone(),
            off_cpu_scale: self.off_cpu_scale,
            off_cpu: self.off_cpu,
            stats: NetStats::default(),
        }
    }

    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.tables.keys().copied()
    }

    pub fn table(&self, event: Event) -> Option<&StackTable> {
        self.tables.get(&event)
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Events counted in the current window, over all tables.
    pub fn events_counted(&self) -> u64 {
        self.tables.values().map(StackTable::samples).sum()
    }

    /// Starts a new window; connects still waiting keep waiting.
    pub fn end_window(&mut self) {
        for table in self.tables.values_mut() {
            *table = StackTable::new();
        }
    }

    /// A new stack generation the kernel must be told of, once.
    pub fn take_generation(&mut self) -> Option<u64> {
        (self.generation != self.generation_published).then(|| {
            self.generation_published = self.generation;
            self.generation
        })
    }

    pub fn add(&mut self, record: &NetRecord<'_>, bytes: &[u8], processes: &mut ProcessTable) {
        if matches!(
            record.kind,
            NetEventKind::Send | NetEventKind::Receive | NetEventKind::OffCpu
        ) {
            let key = (record.sample.header.tid, record.kind as u16);
            if record.same_stack() {
                if let Some(walked) = self.last_walked.get(&key) {
                    // The walked record's stack, with this call's bytes.
                    let stack = NetRecord::decode(walked).expect("decoded before");
                    let merged = NetRecord {
                        info: record.info,
                        kind: record.kind,
                        sample: stack.sample,
                    };
                    Self::add_scaled(
                        &mut self.tables,
                        &self.reasons,
                        self.off_cpu_scale,
                        &merged,
                        processes,
                    );
                    return;
                }
                self.stats.stacks_forgotten += 1;
            } else if record.sample.header.user_frames > 0 || record.kind == NetEventKind::OffCpu {
                if self.last_walked.len() >= self.max_last_walked
                    && !self.last_walked.contains_key(&key)
                {
                    self.last_walked.clear();
                    self.generation += 1;
                }
                self.last_walked.insert(key, bytes.into());
            }
        }
        if record.kind == NetEventKind::ConnectStart {
            if self.tables.contains_key(&Event::ConnectLatency) {
                self.connect_started(record, bytes);
            }
            return;
        }
        if record.kind == NetEventKind::ConnectEnd {
            self.connect_ended(record, processes);
            return;
        }
        if record.kind == NetEventKind::OffCpu && record.info.value == 0 {
            return; // a stack, written as its thread blocked; the time follows
        }
        Self::add_scaled(
            &mut self.tables,
            &self.reasons,
            self.off_cpu_scale,
            record,
            processes,
        );
    }

    /// Adds the record, its off-CPU time scaled up for the blocks sampled out.
    fn add_scaled(
        tables: &mut BTreeMap<Event, StackTable>,
        reasons: &ReasonNames,
        off_cpu_scale: f64,
        record: &NetRecord<'_>,
        processes: &mut ProcessTable,
    ) {
        if record.kind == NetEventKind::OffCpu && off_cpu_scale != 1.0 {
            let scaled = NetRecord {
                info: NetEventInfo {
                    value: (record.info.value as f64 * off_cpu_scale).round() as u64,
                    ..record.info
                },
                kind: record.kind,
                sample: record.sample.clone(),
            };
            Self::add_to_table(tables, reasons, &scaled, processes);
            return;
        }
        Self::add_to_table(tables, reasons, record, processes);
    }

    fn add_to_table(
        tables: &mut BTreeMap<Event, StackTable>,
        reasons: &ReasonNames,
        record: &NetRecord<'_>,
        processes: &mut ProcessTable,
    ) {
        let event = match record.kind {
            NetEventKind::Send => Event::TxBytes,
            NetEventKind::Receive => Event::RxBytes,
            NetEventKind::Retransmit => Event::Retransmits,
            NetEventKind::ResetSent | NetEventKind::ResetReceived => Event::Resets,
            NetEventKind::Drop => Event::Drops,
            NetEventKind::OffCpu => Event::OffCpu,
            NetEventKind::ConnectStart | NetEventKind::ConnectEnd => return,
        };
        let Some(table) = tables.get_mut(&event) else {
            return;
        };
        let detail = match record.kind {
            NetEventKind::ResetSent => 1 << 32 | u64::from(record.info.detail),
            NetEventKind::ResetReceived => 2 << 32,
            _ => u64::from(record.info.detail),
        };
        table.add_event(
            &record.sample,
            processes,
            record.info.value,
            &tag_key(record, detail),
            || tag(record, reasons),
        );
    }

    fn connect_started(&mut self, record: &NetRecord<'_>, bytes: &[u8]) {
        if self.pending.len() >= self.max_pending && !self.pending.contains_key(&record.info.socket)
        {
            self.stats.pending_connects_dropped += 1;
            return;
        }
        self.pending.insert(record.info.socket, bytes.into());
    }

    fn connect_ended(&mut self, end: &NetRecord<'_>, processes: &mut ProcessTable) {
        let Some(bytes) = self.pending.remove(&end.info.socket) else {
            self.stats.unmatched_connect_ends += 1;
            return;
        };
        let Some(table) = self.tables.get_mut(&Event::ConnectLatency) else {
            return;
        };
        let Ok(start) = NetRecord::decode(&bytes) else {
            return;
        };
        let latency = end
            .sample
            .header
            .timestamp_ns
            .saturating_sub(start.sample.header.timestamp_ns);
        let established = end.info.detail == TCP_ESTABLISHED;
        let outcome = if established { OUTCOME_ESTABLISHED } else { 0 };
        let sample: &RawSample<'_> = &start.sample;
        table.add_event(
            sample,
            processes,
            latency,
            &tag_key(&start, outcome),
            || {
                let mut tag = tag(&start, &ReasonNames::default());
                let text = if established { "established" } else { "failed" };
                tag.labels
                    .push(("connect.outcome", TagValue::Text(text.into())));
                tag
            },
        );
    }
}

/// The words that tell two events' tags apart: peer, ports and `detail`.
fn tag_key(record: &NetRecord<'_>, detail: u64) -> [u64; 4] {
    let info = &record.info;
    [
        u64::from_ne_bytes(info.remote_addr[..8].try_into().unwrap()),
        u64::from_ne_bytes(info.remote_addr[8..].try_into().unwrap()),
        u64::from(info.family) << 32
            | u64::from(info.remote_port) << 16
            | u64::from(info.local_port),
        detail,
    ]
}

/// Labels follow the OpenTelemetry network attribute names.
fn tag(record: &NetRecord<'_>, reasons: &ReasonNames) -> EventTag {
    let mut tag = EventTag::default();
    // A port of 0 is one the socket no longer (or not yet) has.
    if let Some((address, port)) = record.remote() {
        tag.labels
            .push(("network.peer.address", TagValue::Text(address.to_string())));
        if port != 0 {
            tag.labels
                .push(("network.peer.port", TagValue::Num(i64::from(port))));
        }
    }
    if let Some((_, port)) = record.local().filter(|(_, port)| *port != 0) {
        tag.labels
            .push(("network.local.port", TagValue::Num(i64::from(port))));
    }
    match record.kind {
        NetEventKind::Drop => {
            let reason = ReasonNames::name(&reasons.drops, record.info.detail);
            tag.leaf = Some(format!("[drop: {reason}]"));
            tag.labels.push(("drop.reason", TagValue::Text(reason)));
        }
        NetEventKind::ResetSent => {
            let reason = ReasonNames::name(&reasons.resets, record.info.detail);
            tag.leaf = Some("[reset sent]".into());
            tag.labels
                .push(("tcp.reset.direction", TagValue::Text("sent".into())));
            tag.labels
                .push(("tcp.reset.reason", TagValue::Text(reason)));
        }
        NetEventKind::ResetReceived => {
            tag.leaf = Some("[reset received]".into());
            tag.labels
                .push(("tcp.reset.direction", TagValue::Text("received".into())));
        }
        _ => {}
    }
    tag
}

#[cfg(test)]
mod tests {
    use hearth_common::{
        SampleHeader,
        net::{AF_INET, NetEventInfo, TCP_CLOSE},
    };

    use super::*;
    use crate::{collect::probes::encode_net_record, enrich::process::ProcessLimits};

    const NO_SUCH_PID: u32 = 0x7fff_fff0;

    fn record(kind: NetEventKind, value: u64, ts: u64, port: u16, user: &[u64]) -> Vec<u8> {
        let mut info = NetEventInfo {
            value,
            socket: 0xffff_8880_0000_1000,
            kind: kind as u16,
            family: AF_INET,
            local_port: 50000,
            remote_port: port,
            ..NetEventInfo::default()
        };
        info.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let header = SampleHeader {
            timestamp_ns: ts,
            tgid: NO_SUCH_PID,
            tid: NO_SUCH_PID,
            ..SampleHeader::default()
        };
        encode_net_record(info, header, &[], user)
    }

    fn add(agg: &mut NetAggregator, processes: &mut ProcessTable, bytes: &[u8]) {
        agg.add(&NetRecord::decode(bytes).unwrap(), bytes, processes);
    }

    #[test]
    fn bytes_sum_per_stack_and_peer() {
        let mut processes = ProcessTable::new(ProcessLimits::default());
        let mut agg = NetAggregator::new(&[Event::TxBytes], 16, 16, ReasonNames::default());
        for (value, port) in [(100, 80), (250, 80), (7, 443)] {
            add(
                &mut agg,
                &mut processes,
                &record(NetEventKind::Send, value, 1, port, &[0x10]),
            );
        }
        // Receives are not wanted: ignored.
        add(
            &mut agg,
            &mut processes,
            &record(NetEventKind::Receive, 5, 1, 80, &[0x10]),
        );
        let table = agg.table(Event::TxBytes).unwrap();
        let mut values: Vec<u64> = table.stacks().iter().map(|s| s.count).collect();
        values.sort();
        assert_eq!(values, [7, 350]);
        let tag = table.stacks()[0].tag.as_deref().unwrap();
        assert!(
            tag.labels
                .contains(&("network.peer.address", TagValue::Text("127.0.0.1".into())))
        );
        assert!(agg.table(Event::RxBytes).is_none());
    }

    #[test]
    fn calls_from_the_same_site_reuse_the_walked_stack() {
        let mut processes = ProcessTable::new(ProcessLimits::default());
        let mut agg = NetAggregator::new(&[Event::TxBytes], 16, 1, ReasonNames::default());
        add(
            &mut agg,
            &mut processes,
            &record(NetEventKind::Send, 100, 1, 80, &[0x10, 0x20]),
        );
        let mut repeat = record(NetEventKind::Send, 50, 2, 80, &[]);
        let at = std::mem::offset_of!(NetEventInfo, flags);
        repeat[at..at + 4].copy_from_slice(&hearth_common::net::FLAG_SAME_STACK.to_ne_bytes());
        add(&mut agg, &mut processes, &repeat);
        let table = agg.table(Event::TxBytes).unwrap();
        let [stack] = table.stacks() else {
            panic!("one stack expected: {:?}", table.stacks())
        };
        assert_eq!((stack.count, stack.user.len()), (150, 2));

        // Another thread's walk overflows the bound: the cache is emptied,
        // the kernel told, and a later reuse is counted, its bytes kept.
        let mut other = record(NetEventKind::Send, 1, 3, 80, &[0x30]);
        let tid = std::mem::offset_of!(SampleHeader, tid) + hearth_common::net::NET_INFO_BYTES;
        other[tid..tid + 4].copy_from_slice(&1u32.to_ne_bytes());
        add(&mut agg, &mut processes, &other);
        assert_eq!(agg.take_generation(), Some(1));
        assert_eq!(agg.take_generation(), None);
        add(&mut agg, &mut processes, &repeat);
        assert_eq!(agg.stats().stacks_forgotten, 1);
        assert_eq!(agg.events_counted(), 4);
    }

    #[test]
    fn a_connect_start_and_end_make_one_latency() {
        let mut processes = ProcessTable::new(ProcessLimits::default());
        let mut agg = NetAggregator::new(&[Event::ConnectLatency], 1, 16, ReasonNames::default());
        add(
            &mut agg,
            &mut processes,
            &record(NetEventKind::ConnectStart, 1, 1_000, 80, &[0x10]),
        );
        let mut end = NetRecord::decode(&record(NetEventKind::ConnectEnd, 1, 51_000, 80, &[]))
            .unwrap()
            .info;
        end.detail = TCP_CLOSE;
        let bytes = encode_net_record(
            end,
            SampleHeader {
                timestamp_ns: 51_000,
                ..SampleHeader::default()
            },
            &[],
            &[],
        );
        add(&mut agg, &mut processes, &bytes);
        let table = agg.table(Event::ConnectLatency).unwrap();
        let [stack] = table.stacks() else {
            panic!("one stack expected")
        };
        assert_eq!(stack.count, 50_000);
        assert_eq!(stack.user.len(), 1, "the connecting stack is kept");
        let tag = stack.tag.as_deref().unwrap();
        assert!(
            tag.labels
                .contains(&("connect.outcome", TagValue::Text("failed".into())))
        );
        // An end without a start, and a start beyond the bound, are counted.
        add(&mut agg, &mut processes, &bytes);
        assert_eq!(agg.stats().unmatched_connect_ends, 1);
        let mut other = record(NetEventKind::ConnectStart, 1, 1, 80, &[]);
        other[8] ^= 0xff; // another socket
        add(
            &mut agg,
            &mut processes,
            &record(NetEventKind::ConnectStart, 1, 1, 80, &[]),
        );
        add(&mut agg, &mut processes, &other);
        assert_eq!(agg.stats().pending_connects_dropped, 1);
    }

    #[test]
    fn drops_carry_their_reason_as_label_and_leaf_frame() {
        let mut processes = ProcessTable::new(ProcessLimits::default());
        let mut reasons = ReasonNames::default();
        reasons.drops.insert(77, "NETFILTER_DROP".into());
        let mut agg = NetAggregator::new(&[Event::Drops], 1, 16, reasons);
        let mut info = NetRecord::decode(&record(NetEventKind::Drop, 1, 1, 80, &[]))
            .unwrap()
            .info;
        info.detail = 77;
        let bytes = encode_net_record(info, SampleHeader::default(), &[0xffff_ffff_8100_0000], &[]);
        add(&mut agg, &mut processes, &bytes);
        let stack = &agg.table(Event::Drops).unwrap().stacks()[0];
        let tag = stack.tag.as_deref().unwrap();
        assert_eq!(tag.leaf.as_deref(), Some("[drop: NETFILTER_DROP]"));
        assert!(
            tag.labels
                .contains(&("drop.reason", TagValue::Text("NETFILTER_DROP".into())))
        );
    }
}
