//! `hearth check`: loads and attaches every kernel program for a moment,
//! as `record` and `run` would, and says what this kernel serves: each
//! event with the hooks behind it, or the reason it is refused.

use std::fmt::Write as _;

use anyhow::Context as _;
use hearth_common::unwind::UnwindMode;
use serde::Serialize;

use crate::{
    aggregate::network,
    collect::preflight,
    collect::probes::{
        NetSettings, OffCpuSettings, ProbeSettings, Probes, RingBufferSize, SocketHooks,
        UnwindCapacity, online_cpu_count,
    },
    enrich::unwind,
    event::Event,
};

/// What `hearth check` found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    /// Where the CPU sampler and the unwinder find user registers.
    pub user_registers: String,
    pub events: Vec<EventSupport>,
}

#[derive(Debug, Serialize)]
pub struct EventSupport {
    pub event: String,
    pub supported: bool,
    /// The hooks that serve it, or why it is refused.
    pub detail: String,
}

const CHECK_FREQUENCY_HZ: u64 = 19;

/// Loads every program (CPU sampler, table unwinder, every network
/// event), attaches them, detaches them, and reports.
pub fn run() -> anyhow::Result<Report> {
    preflight::check_privileges()?;
    preflight::raise_resource_limits();
    let network_events: Vec<Event> = Event::ALL
        .into_iter()
        .filter(|e| e.is_ring_event())
        .collect();
    let mut probes = Probes::load(&ProbeSettings {
        cpu: true,
        frequency_hz: CHECK_FREQUENCY_HZ,
        kernel_stacks: true,
        filter_processes: false,
        ring_buffer_bytes: RingBufferSize::Auto.bytes(online_cpu_count(), CHECK_FREQUENCY_HZ),
        filter_capacity: 1,
        network: Some(NetSettings {
            emit: network::kernel_kinds(&network_events),
            ring_buffer_bytes: network::DEFAULT_RING_BYTES,
            socket_owners: network::DEFAULT_SOCKET_OWNERS,
            user_stacks: true,
            call_sites: network::DEFAULT_CALL_SITES,
            off_cpu: Some(OffCpuSettings {
                min_block_ns: network::DEFAULT_OFF_CPU_MIN_NS,
                probability: network::DEFAULT_OFF_CPU_PROBABILITY,
                max_blocked_threads: network::DEFAULT_MAX_BLOCKED_THREADS,
            }),
        }),
        cgroup_capacity: Some(1),
        ignore_own_process: true,
        unwind_mode: UnwindMode::Dwarf,
        unwind_capacity: UnwindCapacity::new(
            unwind::DEFAULT_SHARD_ROWS,
            unwind::DEFAULT_MAX_ROWS,
            unwind::DEFAULT_MAX_PROCESSES,
        ),
    })
    .context("loading the probes")?;
    probes.start().context("attaching the probes")?;
    let attached_cpus = probes.attached_cpus();
    probes.stop().context("detaching the probes")?;

    let support = probes.kernel();
    let user_registers = if support.regs_stack_offset == 0 {
        "bpf_task_pt_regs".to_owned()
    } else {
        format!(
            "the task's kernel stack (+{} bytes; bpf_task_pt_regs needs Linux 5.15)",
            support.regs_stack_offset
        )
    };
    let refused = network::refused_events(&network_events, probes.refused_kinds());
    let mut events = vec![EventSupport {
        event: Event::Cpu.name().to_owned(),
        supported: true,
        detail: format!(
            "perf_event cpu-clock on {attached_cpus} CPUs; frame pointers and unwind tables"
        ),
    }];
    for event in network_events {
        let (supported, detail) = match refused.iter().find(|(e, _)| *e == event) {
            Some((_, reason)) => (false, reason.clone()),
            None => (true, hooks_of(&probes, event)),
        };
        events.push(EventSupport {
            event: event.name().to_owned(),
            supported,
            detail,
        });
    }
    Ok(Report {
        kernel: support.release.clone(),
        user_registers,
        events,
    })
}

/// The hooks that serve `event`, with what this kernel's hooks carry.
fn hooks_of(probes: &Probes, event: Event) -> String {
    let kinds = network::kernel_kinds(&[event]);
    let mut hooks: Vec<String> = Vec::new();
    for program in probes.net_programs() {
        if kinds.contains(&program.kind) {
            let hook = program.hook.to_string();
            if !hooks.contains(&hook) {
                hooks.push(hook);
            }
        }
    }
    let support = probes.kernel();
    let mut text = hooks.join(", ");
    let note = match event {
        Event::Drops if support.reasons.drops.is_empty() => Some("no drop reasons before 5.17"),
        Event::Resets if support.reasons.resets.is_empty() => Some("no reset reasons before 6.10"),
        Event::TxBytes | Event::RxBytes
            if support.socket_hooks == (SocketHooks::Fexit { ipv6: false }) =>
        {
            Some("IPv4 only: no IPv6 sendmsg/recvmsg in BTF")
        }
        _ => None,
    };
    if let Some(note) = note {
        let _ = write!(text, " ({note})");
    }
    text
}

impl Report {
    /// Human-readable lines.
    pub fn text(&self) -> String {
        let mut text = format!(
            "kernel {}\nuser registers: {}\n",
            self.kernel, self.user_registers
        );
        for event in &self.events {
            let mark = if event.supported { "yes" } else { "NO " };
            let _ = writeln!(text, "{mark} {:<16} {}", event.event, event.detail);
        }
        text
    }
}
