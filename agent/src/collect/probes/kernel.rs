//! What the running kernel can do, decided once when the probes load:
//! which helper finds the user registers, which hooks count socket bytes,
//! which tracepoint arguments exist. Nothing here is a compile-time choice,
//! so one binary runs on every kernel from 5.10 on.

use aya::{
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported},
};
use hearth_common::net::{NetEventKind, hooks};
use rustc_hash::FxHashMap;

use super::btf::{BtfError, KernelBtf};

/// x86-64 kernel stacks: four pages, eight with KASAN (whose kernels
/// carry its report function).
const THREAD_SIZE: u32 = 16 << 10;
const THREAD_SIZE_KASAN: u32 = 32 << 10;

/// How the send and receive events are hooked on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketHooks {
    /// The `sock_send_length`/`sock_recv_length` tracepoints.
    Tracepoints,
    /// fexit programs on the IPv4 (and, when `ipv6`, IPv6) sendmsg and
    /// recvmsg functions, which return what those tracepoints report.
    Fexit { ipv6: bool },
    /// Neither: sends and receives cannot be counted here.
    None,
}

/// A program to load for the network events, and where it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetProgram {
    pub name: &'static str,
    pub hook: Hook,
    /// The kind it serves.
    pub kind: NetEventKind,
    /// Loaded whenever any network event is wanted: sends, receives and
    /// connects teach the kernel who owns a socket.
    pub always: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    RawTracepoint(&'static str),
    Fexit(&'static str),
    /// A BTF-typed tracepoint (`tp_btf`, Linux 5.5 and later).
    BtfTracepoint(&'static str),
}

impl NetProgram {
    /// What its records are, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            NetEventKind::Send => "send",
            NetEventKind::Receive => "receive",
            NetEventKind::ConnectStart | NetEventKind::ConnectEnd => "connect",
            NetEventKind::OffCpu => "off-CPU",
            _ => "network",
        }
    }

    /// The table walker this program tail-calls for user stacks, and the
    /// program array it is put in: one per kind of hook, as a tail call
    /// cannot leave its program type (nor, for fexit and BTF tracepoints,
    /// the hook's prototype). None for programs without user stacks.
    pub fn unwinder(&self) -> Option<(&'static str, &'static str)> {
        Some(match self.name {
            "net_send" | "net_recv" | "net_state" => ("raw_unwind", "RAW_UNWIND"),
            "net_send_inet" => ("send_inet_unwind", "SEND_INET_UNWIND"),
            "net_send_inet6" => ("send_inet6_unwind", "SEND_INET6_UNWIND"),
            "net_recv_inet" => ("recv_inet_unwind", "RECV_INET_UNWIND"),
            "net_recv_inet6" => ("recv_inet6_unwind", "RECV_INET6_UNWIND"),
            "off_cpu" => ("off_cpu_unwind", "OFF_CPU_UNWIND"),
            _ => return None,
        })
    }
}

/// Off-CPU time: `sched_switch`, as a BTF tracepoint.
const OFF_CPU_PROGRAM: NetProgram = program(
    "off_cpu",
    Hook::BtfTracepoint("sched_switch"),
    NetEventKind::OffCpu,
);

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RawTracepoint(name) => write!(f, "tracepoint {name}"),
            Self::Fexit(name) => write!(f, "fexit {name}"),
            Self::BtfTracepoint(name) => write!(f, "BTF tracepoint {name}"),
        }
    }
}

const fn program(name: &'static str, hook: Hook, kind: NetEventKind) -> NetProgram {
    NetProgram {
        name,
        hook,
        kind,
        always: false,
    }
}

/// A program loaded whenever any network event is wanted.
const fn owner_program(name: &'static str, hook: Hook, kind: NetEventKind) -> NetProgram {
    NetProgram {
        always: true,
        ..program(name, hook, kind)
    }
}

/// The tracepoint programs every kernel from 5.10 has a hook for.
const OWNER_PROGRAMS: [NetProgram; 5] = [
    owner_program(
        "net_state",
        Hook::RawTracepoint("inet_sock_set_state"),
        NetEventKind::ConnectStart,
    ),
    program(
        "net_retransmit",
        Hook::RawTracepoint("tcp_retransmit_skb"),
        NetEventKind::Retransmit,
    ),
    program(
        "net_send_reset",
        Hook::RawTracepoint("tcp_send_reset"),
        NetEventKind::ResetSent,
    ),
    program(
        "net_receive_reset",
        Hook::RawTracepoint("tcp_receive_reset"),
        NetEventKind::ResetReceived,
    ),
    program(
        "net_drop",
        Hook::RawTracepoint("kfree_skb"),
        NetEventKind::Drop,
    ),
];

/// What the running kernel offers the probes.
#[derive(Clone, Debug)]
pub struct KernelSupport {
    /// `uname -r`.
    pub release: String,
    /// 0: `bpf_task_pt_regs` exists; else the offset of the user registers
    /// above `task_struct.stack` (the kernel programs' `USER_REGS_STACK_OFFSET`).
    pub regs_stack_offset: u32,
    /// [`hooks`] bits (the kernel programs' `NET_HOOK_ARGS`).
    pub net_hook_args: u32,
    pub socket_hooks: SocketHooks,
    /// Tracepoints this kernel lacks, each with the program that needs it.
    pub missing_tracepoints: Vec<NetProgram>,
    /// BTF tracepoints work: the kernel's BTF types `sched_switch`'s
    /// tracepoint (5.5 and later attach BPF programs there).
    pub btf_tracepoints: bool,
    /// Names of drop and reset reasons.
    pub reasons: ReasonNames,
}

impl KernelSupport {
    pub fn detect(btf: &KernelBtf) -> Result<Self, BtfError> {
        let regs_stack_offset =
            match is_helper_supported(ProgramType::PerfEvent, BpfHelper::BPF_FUNC_task_pt_regs) {
                Ok(true) => 0,
                // Probing failed or said no: the stack layout every x86-64
                // kernel has, checked in the kernel before each use.
                _ => {
                    let thread_size = if btf.function_params("kasan_report").is_some() {
                        THREAD_SIZE_KASAN
                    } else {
                        THREAD_SIZE
                    };
                    thread_size - btf.struct_size("pt_regs")?
                }
            };
        let args = |tracepoint: &str| btf.tracepoint_args(tracepoint).unwrap_or(0);
        let mut net_hook_args = 0;
        for (present, bit) in [
            (args("kfree_skb") >= 3, hooks::DROP_REASON),
            (args("kfree_skb") >= 4, hooks::DROP_RX_SOCKET),
            (args("tcp_send_reset") >= 3, hooks::RESET_REASON),
            (args("tcp_retransmit_skb") >= 3, hooks::RETRANSMIT_ERROR),
            (args("sched_switch") >= 4, hooks::SWITCH_PREV_STATE),
        ] {
            if present {
                net_hook_args |= bit;
            }
        }
        let socket_hooks = if btf.tracepoint_args("sock_send_length").is_some()
            && btf.tracepoint_args("sock_recv_length").is_some()
        {
            SocketHooks::Tracepoints
        } else if btf.function_params("inet_sendmsg") == Some(3)
            && btf.function_params("inet_recvmsg") == Some(4)
        {
            SocketHooks::Fexit {
                ipv6: btf.function_params("inet6_sendmsg") == Some(3)
                    && btf.function_params("inet6_recvmsg") == Some(4),
            }
        } else {
            SocketHooks::None
        };
        let missing_tracepoints = OWNER_PROGRAMS
            .into_iter()
            .filter(
                |p| matches!(p.hook, Hook::RawTracepoint(tp) if btf.tracepoint_args(tp).is_none()),
            )
            .collect();
        let btf_tracepoints = btf.tracepoint_args("sched_switch").is_some();
        Ok(Self {
            release: kernel_release(),
            regs_stack_offset,
            net_hook_args,
            socket_hooks,
            missing_tracepoints,
            btf_tracepoints,
            reasons: ReasonNames::from_btf(btf),
        })
    }

    /// The network programs to load for `emit`, and the kinds this kernel
    /// cannot serve, each with the reason.
    pub fn net_programs(
        &self,
        emit: &[NetEventKind],
    ) -> (Vec<NetProgram>, Vec<(NetEventKind, String)>) {
        // Socket owners are learned whenever a socket event is wanted.
        let sockets = emit.iter().any(|kind| *kind != NetEventKind::OffCpu);
        let wanted = |p: &NetProgram| (p.always && sockets) || emit.contains(&p.kind);
        let mut programs: Vec<NetProgram> = self
            .socket_programs()
            .into_iter()
            .chain(OWNER_PROGRAMS)
            .chain([OFF_CPU_PROGRAM])
            .filter(|p| wanted(p) && !self.missing_tracepoints.contains(p))
            .collect();
        let mut refused = Vec::new();
        if emit.contains(&NetEventKind::OffCpu) && !self.btf_tracepoints {
            refused.push((
                NetEventKind::OffCpu,
                format!(
                    "this kernel ({}) cannot attach BPF programs to the sched_switch BTF \
                     tracepoint (Linux 5.5 and later, with BTF)",
                    self.release
                ),
            ));
        }
        if self.socket_hooks == SocketHooks::None {
            for kind in [NetEventKind::Send, NetEventKind::Receive] {
                refused.push((
                    kind,
                    format!(
                        "this kernel ({}) has neither the sock_send_length/sock_recv_length \
                         tracepoints (Linux 6.3 and later) nor BPF trampolines on \
                         inet_sendmsg/inet_recvmsg (Linux 5.5 and later, with \
                         CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS)",
                        self.release
                    ),
                ));
            }
        }
        for missing in &self.missing_tracepoints {
            if let Hook::RawTracepoint(tp) = missing.hook
                && emit.contains(&missing.kind)
            {
                refused.push((
                    missing.kind,
                    format!("this kernel ({}) has no {tp} tracepoint", self.release),
                ));
            }
        }
        programs.retain(|p| !refused.iter().any(|(kind, _)| *kind == p.kind));
        (programs, refused)
    }

    fn socket_programs(&self) -> Vec<NetProgram> {
        use NetEventKind::{Receive, Send};
        match self.socket_hooks {
            SocketHooks::Tracepoints => vec![
                owner_program("net_send", Hook::RawTracepoint("sock_send_length"), Send),
                owner_program("net_recv", Hook::RawTracepoint("sock_recv_length"), Receive),
            ],
            SocketHooks::Fexit { ipv6 } => {
                let mut programs = vec![
                    owner_program("net_send_inet", Hook::Fexit("inet_sendmsg"), Send),
                    owner_program("net_recv_inet", Hook::Fexit("inet_recvmsg"), Receive),
                ];
                if ipv6 {
                    programs.extend([
                        owner_program("net_send_inet6", Hook::Fexit("inet6_sendmsg"), Send),
                        owner_program("net_recv_inet6", Hook::Fexit("inet6_recvmsg"), Receive),
                    ]);
                }
                programs
            }
            SocketHooks::None => Vec::new(),
        }
    }

    /// One line for logs and `record`'s summary: what this kernel gets.
    pub fn describe(&self) -> String {
        let regs = if self.regs_stack_offset == 0 {
            "bpf_task_pt_regs"
        } else {
            "task stack"
        };
        let sockets = match self.socket_hooks {
            SocketHooks::Tracepoints => "socket tracepoints",
            SocketHooks::Fexit { ipv6: true } => "fexit inet/inet6 sendmsg/recvmsg",
            SocketHooks::Fexit { ipv6: false } => "fexit inet sendmsg/recvmsg (no IPv6)",
            SocketHooks::None => "none",
        };
        format!(
            "kernel {}: user registers from {regs}; send/receive hooks: {sockets}; drop \
             reasons: {}; reset reasons: {}",
            self.release,
            yes_no(self.net_hook_args & hooks::DROP_REASON != 0),
            yes_no(self.net_hook_args & hooks::RESET_REASON != 0),
        )
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// `uname -r` of the running kernel.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Names of kernel enum values (drop and reset reasons), read from BTF.
#[derive(Clone, Debug, Default)]
pub struct ReasonNames {
    pub drops: FxHashMap<u32, String>,
    pub resets: FxHashMap<u32, String>,
}

impl ReasonNames {
    /// The kernel's names (empty when its BTF lacks the enum: kernels
    /// that pass no reason).
    pub fn from_btf(btf: &KernelBtf) -> Self {
        Self {
            drops: btf.enum_names("skb_drop_reason", "SKB_DROP_REASON_"),
            resets: btf.enum_names("sk_rst_reason", "SK_RST_REASON_"),
        }
    }

    /// The name of `value` in `names`; `unknown` when the kernel has no
    /// names (it passes no reason), the number when it lacks this one.
    pub fn name(names: &FxHashMap<u32, String>, value: u32) -> String {
        if names.is_empty() {
            return "unknown".to_owned();
        }
        names
            .get(&value)
            .cloned()
            .unwrap_or_else(|| value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> KernelSupport {
        KernelSupport::detect(&KernelBtf::running().unwrap()).unwrap()
    }

    #[test]
    fn this_kernel_serves_every_network_event_with_its_newest_hooks() {
        // The development kernel (6.18) has every hook the programs use.
        let support = host();
        assert_eq!(support.regs_stack_offset, 0, "{}", support.describe());
        assert_eq!(support.socket_hooks, SocketHooks::Tracepoints);
        assert_eq!(
            support.net_hook_args,
            hooks::DROP_REASON
                | hooks::DROP_RX_SOCKET
                | hooks::RESET_REASON
                | hooks::RETRANSMIT_ERROR
                | hooks::SWITCH_PREV_STATE
        );
        let (programs, refused) = support.net_programs(&NetEventKind::ALL);
        assert!(refused.is_empty(), "{refused:?}");
        let names: Vec<_> = programs.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "net_send",
                "net_recv",
                "net_state",
                "net_retransmit",
                "net_send_reset",
                "net_receive_reset",
                "net_drop",
                "off_cpu"
            ]
        );
        assert!(support.btf_tracepoints);
    }

    #[test]
    fn only_the_programs_of_the_wanted_kinds_load() {
        let (programs, _) = host().net_programs(&[NetEventKind::Drop]);
        let names: Vec<_> = programs.iter().map(|p| p.name).collect();
        assert_eq!(names, ["net_send", "net_recv", "net_state", "net_drop"]);
    }

    #[test]
    fn off_cpu_alone_loads_no_socket_program_and_is_refused_by_name_without_btf_tracepoints() {
        let (programs, refused) = host().net_programs(&[NetEventKind::OffCpu]);
        let names: Vec<_> = programs.iter().map(|p| p.name).collect();
        assert_eq!(names, ["off_cpu"]);
        assert!(refused.is_empty());
        let support = KernelSupport {
            btf_tracepoints: false,
            ..host()
        };
        let (programs, refused) = support.net_programs(&[NetEventKind::OffCpu, NetEventKind::Drop]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, NetEventKind::OffCpu);
        assert!(refused[0].1.contains("sched_switch"), "{}", refused[0].1);
        assert!(programs.iter().any(|p| p.name == "net_drop"));
    }

    #[test]
    fn a_kernel_without_socket_hooks_refuses_bytes_alone_by_name() {
        let support = KernelSupport {
            socket_hooks: SocketHooks::None,
            ..host()
        };
        let (programs, refused) = support.net_programs(&NetEventKind::ALL);
        let kinds: Vec<_> = refused.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(kinds, [NetEventKind::Send, NetEventKind::Receive]);
        assert!(refused[0].1.contains("Linux 6.3"), "{}", refused[0].1);
        assert!(programs.iter().any(|p| p.name == "net_drop"));
        assert!(
            !programs
                .iter()
                .any(|p| matches!(p.name, "net_send" | "net_recv"))
        );
    }

    #[test]
    fn reasons_a_kernel_does_not_pass_are_unknown_not_a_number() {
        let mut names = FxHashMap::default();
        assert_eq!(ReasonNames::name(&names, 0), "unknown");
        names.insert(3, "NO_SOCKET".to_owned());
        assert_eq!(ReasonNames::name(&names, 3), "NO_SOCKET");
        assert_eq!(ReasonNames::name(&names, 99), "99");
    }
}
