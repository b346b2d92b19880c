//! The running kernel's type information (BTF): field offsets of the
//! kernel structs the programs read, tracepoint signatures and the
//! functions that exist, all decided at load time.
//!
//! Rust eBPF programs have no CO-RE relocations, so the agent resolves the
//! offsets here and passes them in as load-time constants.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::{Path, PathBuf},
};

use btf_rs::{Btf, Type};
use hearth_common::{TaskOffsets, UserRegsLayout, net::SockOffsets};
use rustc_hash::FxHashMap;

/// Where the kernel publishes its own type information.
pub const KERNEL_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Largest BTF accepted: kernels' are 3–8 MB; anything past this is not
/// the kernel's own.
const MAX_BTF_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "this kernel publishes no BTF type information ({path} is missing). Hearth needs a \
         kernel built with CONFIG_DEBUG_INFO_BTF=y: the stock kernels of Debian 11+, Ubuntu \
         20.10+, RHEL/Alma/Rocky 8.2+, Fedora 31+ and Amazon Linux 2 (5.10) are; install and \
         boot one (Debian: `apt install linux-image-amd64`). In a container, mount the host's \
         /sys (read-only is enough)"
    )]
    Missing { path: PathBuf },
    #[error(
        "could not read kernel BTF from {path}: {reason}. The file should be the kernel's own \
         type information; check that /sys is the host's sysfs and that the agent may read it \
         (root, or CAP_SYS_ADMIN/CAP_BPF with read access)"
    )]
    Unreadable { path: PathBuf, reason: String },
    #[error("kernel BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("kernel BTF struct {structure} has no field {field}")]
    NoField { structure: String, field: String },
}

/// The kernel's BTF, opened once for every question asked at load time.
pub struct KernelBtf {
    btf: Btf,
    path: PathBuf,
}

impl KernelBtf {
    /// The running kernel's BTF.
    pub fn running() -> Result<Self, BtfError> {
        Self::open(Path::new(KERNEL_BTF_PATH))
    }

    /// Opens the BTF at `path`. It is memory-mapped and parsed lazily
    /// (parsing every kernel type would peak at ~40 MB to answer a few
    /// questions); kernels before 7.x refuse to map
    /// `/sys/kernel/btf/vmlinux` (ENODEV), so there it is read once into
    /// an anonymous memory file, which maps.
    pub fn open(path: &Path) -> Result<Self, BtfError> {
        let unreadable = |reason: String| BtfError::Unreadable {
            path: path.to_owned(),
            reason,
        };
        if !path.exists() {
            return Err(BtfError::Missing {
                path: path.to_owned(),
            });
        }
        let btf = match Btf::from_file_with_backend(path, btf_rs::Backend::Mmap) {
            Ok(btf) => btf,
            Err(mapped) => {
                let copy = copy_to_memory_file(path).map_err(|err| unreadable(err.to_string()))?;
                // The mapping keeps the memory file alive once `copy` closes.
                let by_fd = format!("/proc/self/fd/{}", copy.as_raw_fd());
                Btf::from_file_with_backend(by_fd, btf_rs::Backend::Mmap).map_err(|err| {
                    let (copied, mapped) = (err.to_string(), mapped.to_string());
                    unreadable(if copied == mapped {
                        copied
                    } else {
                        format!("{copied} (mapping it: {mapped})")
                    })
                })?
            }
        };
        Ok(Self {
            btf,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `task_struct` offsets and the `pt_regs` layout the programs need.
    pub fn task_offsets(&self) -> Result<(TaskOffsets, UserRegsLayout), BtfError> {
        let offset = |field: &str| self.member_offset("task_struct", field);
        let task = TaskOffsets {
            pid: offset("pid")?,
            tgid: offset("tgid")?,
            group_leader: offset("group_leader")?,
            start_boottime: offset("start_boottime")?,
            self_exec_id: offset("self_exec_id")?,
            stack: offset("stack")?,
        };
        let regs = UserRegsLayout {
            ip: self.member_offset("pt_regs", "ip")?,
            sp: self.member_offset("pt_regs", "sp")?,
            bp: self.member_offset("pt_regs", "bp")?,
            cs: self.member_offset("pt_regs", "cs")?,
        };
        Ok((task, regs))
    }

    /// `task_struct.__state` (renamed from `state` in 5.14): 0 while the
    /// task is runnable.
    pub fn task_state_offset(&self) -> Result<u32, BtfError> {
        self.member_offset("task_struct", "__state")
            .or_else(|_| self.member_offset("task_struct", "state"))
    }

    /// Offsets of `task_struct.se.cfs_rq`, `cfs_rq.rq` and `rq.clock`: the
    /// way from a task on a CPU to the scheduler's clock of that CPU
    /// (None on kernels without CONFIG_FAIR_GROUP_SCHED, which lack the
    /// first two).
    pub fn rq_clock_offsets(&self) -> Option<(u32, u32, u32)> {
        let se = self.member_offset("task_struct", "se").ok()?;
        let cfs_rq = self.member_offset("sched_entity", "cfs_rq").ok()?;
        let rq = self.member_offset("cfs_rq", "rq").ok()?;
        let clock = self.member_offset("rq", "clock").ok()?;
        Some((se + cfs_rq, rq, clock))
    }

    /// The `sock`, `socket`, `sk_buff` and `tcp_skb_cb` offsets the
    /// network programs need.
    pub fn sock_offsets(&self) -> Result<SockOffsets, BtfError> {
        // `struct sock` starts with `struct sock_common __sk_common`.
        let common = self.member_offset("sock", "__sk_common")?;
        let field = |name: &str| self.member_offset("sock_common", name).map(|o| common + o);
        Ok(SockOffsets {
            family: field("skc_family")?,
            local_port: field("skc_num")?,
            remote_port: field("skc_dport")?,
            local_v4: field("skc_rcv_saddr")?,
            remote_v4: field("skc_daddr")?,
            local_v6: field("skc_v6_rcv_saddr")?,
            remote_v6: field("skc_v6_daddr")?,
            skb_sk: self.member_offset("sk_buff", "sk")?,
            skb_gso_segs: self.member_offset("sk_buff", "cb")?
                + self.member_offset("tcp_skb_cb", "tcp_gso_segs")?,
            socket_sk: self.member_offset("socket", "sk")?,
        })
    }

    /// Byte size of `struct name`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        Ok(self.find_struct(name)?.size() as u32)
    }

    /// Arguments the tracepoint `name` passes to a raw tracepoint program
    /// (None: this kernel has no such tracepoint). Read from the
    /// `btf_trace_<name>` typedef, a pointer to a function whose first
    /// parameter is the tracepoint's private data.
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let types = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?;
        types.iter().find_map(|ty| {
            let Type::Typedef(typedef) = ty else {
                return None;
            };
            let Ok(Type::Ptr(ptr)) = self.btf.resolve_chained_type(typedef) else {
                return None;
            };
            match self.btf.resolve_chained_type(&ptr) {
                Ok(Type::FuncProto(proto)) => Some(proto.parameters.len().saturating_sub(1)),
                _ => None,
            }
        })
    }

    /// Parameters of the kernel function `name` (None: no such function
    /// in BTF, so fentry/fexit cannot attach to it).
    pub fn function_params(&self, name: &str) -> Option<usize> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.iter().find_map(|ty| {
            let Type::Func(func) = ty else {
                return None;
            };
            match self.btf.resolve_chained_type(func) {
                Ok(Type::FuncProto(proto)) => Some(proto.parameters.len()),
                _ => None,
            }
        })
    }

    /// Names of the values of `enum name` with `prefix` taken off
    /// (`SKB_DROP_REASON_NETFILTER_DROP` → `NETFILTER_DROP`); empty when
    /// the kernel has no such enum.
    pub fn enum_names(&self, name: &str, prefix: &str) -> FxHashMap<u32, String> {
        let Ok(types) = self.btf.resolve_types_by_name(name) else {
            return FxHashMap::default();
        };
        let mut names = FxHashMap::default();
        for ty in types {
            if let Type::Enum(e) = ty {
                for member in &e.members {
                    if let Ok(text) = self.btf.resolve_name(member) {
                        let short = text.strip_prefix(prefix).unwrap_or(&text);
                        names.insert(member.val(), short.to_owned());
                    }
                }
            }
        }
        names
    }

    fn find_struct(&self, structure: &str) -> Result<btf_rs::Struct, BtfError> {
        let no_struct = || BtfError::NoStruct {
            name: structure.to_owned(),
        };
        let types = self
            .btf
            .resolve_types_by_name(structure)
            .map_err(|_| no_struct())?;
        types
            .into_iter()
            .find_map(|ty| match ty {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(no_struct)
    }

    /// Byte offset of `field` in `struct structure`, looking through
    /// anonymous struct and union members as the C compiler does.
    pub fn member_offset(&self, structure: &str, field: &str) -> Result<u32, BtfError> {
        let members = self.find_struct(structure)?;
        find_member(&self.btf, &members, field)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoField {
                structure: structure.to_owned(),
                field: field.to_owned(),
            })
    }
}

/// Copies `path` (bounded by [`MAX_BTF_BYTES`]) into an anonymous memory file.
fn copy_to_memory_file(path: &Path) -> std::io::Result<File> {
    let mut source = File::open(path)?;
    // SAFETY: a NUL-terminated name and valid flags.
    let fd = unsafe { libc::memfd_create(c"hearth-kernel-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned here.
    let mut copy = unsafe { File::from_raw_fd(fd) };
    let mut buffer = vec![0; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = source.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_BTF_BYTES {
            return Err(std::io::Error::other(format!(
                "larger than {} MiB, not a kernel's BTF",
                MAX_BTF_BYTES >> 20
            )));
        }
        copy.write_all(&buffer[..n])?;
    }
    Ok(copy)
}

/// Bit offset of `field` within `container`, searching anonymous members.
fn find_member(btf: &Btf, container: &btf_rs::Struct, field: &str) -> Option<u32> {
    for member in &container.members {
        let name = btf.resolve_name(member).unwrap_or_default();
        if name == field {
            return Some(member.bit_offset());
        }
        if name.is_empty()
            && let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(member)
            && let Some(inner_offset) = find_member(btf, &inner, field)
        {
            return Some(member.bit_offset() + inner_offset);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> KernelBtf {
        KernelBtf::running().expect("these tests need a kernel with BTF")
    }

    #[test]
    fn missing_btf_says_what_to_install() {
        let err = KernelBtf::open(Path::new("/nonexistent/btf/vmlinux"))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(matches!(err, BtfError::Missing { .. }), "{text}");
        assert!(text.contains("CONFIG_DEBUG_INFO_BTF"), "{text}");
        assert!(text.contains("apt install"), "{text}");
    }

    #[test]
    fn garbage_btf_is_an_error_not_a_panic() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"definitely not BTF").unwrap();
        let err = KernelBtf::open(file.path()).err().unwrap();
        assert!(matches!(err, BtfError::Unreadable { .. }), "{err}");
    }

    #[test]
    fn a_copy_in_memory_reads_as_the_file_does() {
        let copy = copy_to_memory_file(Path::new(KERNEL_BTF_PATH)).unwrap();
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", copy.as_raw_fd()));
        let copied = KernelBtf::open(&by_fd).unwrap();
        drop(copy);
        assert_eq!(
            copied.task_offsets().unwrap(),
            running().task_offsets().unwrap()
        );
        assert_eq!(
            copied.sock_offsets().unwrap(),
            running().sock_offsets().unwrap()
        );
    }

    #[test]
    fn a_file_larger_than_any_kernels_btf_is_not_copied() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(MAX_BTF_BYTES + 1).unwrap();
        let err = copy_to_memory_file(file.path()).unwrap_err();
        assert!(err.to_string().contains("not a kernel's BTF"), "{err}");
    }

    #[test]
    fn running_kernel_socket_offsets_and_drop_reasons() {
        let btf = running();
        let offsets = btf.sock_offsets().unwrap();
        // sock_common begins with the address pair, then the port pair.
        assert_eq!(offsets.remote_v4, 0);
        assert_eq!(offsets.local_v4, 4);
        assert_eq!(offsets.local_port, offsets.remote_port + 2);
        assert!(offsets.skb_sk > 0 && offsets.skb_gso_segs > offsets.skb_sk);
        assert!(offsets.socket_sk > 0);
        let reasons = btf.enum_names("skb_drop_reason", "SKB_DROP_REASON_");
        assert!(
            reasons.values().any(|r| r == "NETFILTER_DROP"),
            "{reasons:?}"
        );
    }

    #[test]
    fn running_kernel_offsets_are_plausible() {
        let (offsets, regs) = running().task_offsets().unwrap();
        assert!(regs.ip > regs.bp && regs.sp > regs.ip, "{regs:?}");
        assert!(regs.cs > regs.ip && regs.cs < regs.sp, "{regs:?}");
        // tgid directly follows pid in every kernel since 2.6.
        assert_eq!(offsets.tgid, offsets.pid + 4);
        assert!(offsets.group_leader > offsets.tgid);
        assert!(offsets.start_boottime > 0 && offsets.self_exec_id > 0 && offsets.stack > 0);
        // x86-64: 21 saved registers of 8 bytes.
        assert_eq!(running().struct_size("pt_regs").unwrap(), 168);
    }

    #[test]
    fn tracepoint_and_function_signatures_come_from_btf() {
        let btf = running();
        // sched_switch(bool preempt, prev, next[, prev_state]) since 4.x.
        assert!(btf.tracepoint_args("sched_switch").unwrap() >= 3);
        assert_eq!(btf.tracepoint_args("tcp_receive_reset"), Some(1));
        assert_eq!(btf.tracepoint_args("no_such_tracepoint_here"), None);
        assert_eq!(btf.function_params("inet_sendmsg"), Some(3));
        assert_eq!(btf.function_params("inet_recvmsg"), Some(4));
        assert_eq!(btf.function_params("no_such_function_here"), None);
    }
}
