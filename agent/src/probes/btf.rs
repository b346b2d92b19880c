//! Field offsets of kernel structs, read from the running kernel's BTF.
//!
//! Rust eBPF programs have no CO-RE relocations, so the agent resolves the
//! few `task_struct` offsets the programs need and passes them in at load.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use hearth_common::{TaskOffsets, net::SockOffsets};
use rustc_hash::FxHashMap;

/// Where the kernel publishes its own type information.
pub const KERNEL_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "this kernel has no BTF type information ({path} is missing); Hearth needs a kernel \
         built with CONFIG_DEBUG_INFO_BTF=y (the default in Debian, Ubuntu, Fedora and RHEL \
         kernels since 5.8)"
    )]
    Missing { path: PathBuf },
    #[error("could not read kernel BTF from {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("kernel BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("kernel BTF struct {structure} has no field {field}")]
    NoField { structure: String, field: String },
}

/// `pt_regs` offsets of the user instruction, stack and frame pointers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegsOffsets {
    pub ip: u32,
    pub sp: u32,
    pub bp: u32,
}

/// Reads the `task_struct` and `pt_regs` offsets the CPU sampler needs
/// from BTF at `path`.
pub fn task_offsets(path: &Path) -> Result<(TaskOffsets, RegsOffsets), BtfError> {
    let btf = load(path)?;
    let offset = |field: &str| member_offset(&btf, "task_struct", field);
    let task = TaskOffsets {
        pid: offset("pid")?,
        tgid: offset("tgid")?,
        group_leader: offset("group_leader")?,
        start_boottime: offset("start_boottime")?,
        self_exec_id: offset("self_exec_id")?,
        _pad: 0,
    };
    let regs = RegsOffsets {
        ip: member_offset(&btf, "pt_regs", "ip")?,
        sp: member_offset(&btf, "pt_regs", "sp")?,
        bp: member_offset(&btf, "pt_regs", "bp")?,
    };
    Ok((task, regs))
}

/// Reads the `sock`, `sk_buff` and `tcp_skb_cb` offsets the network
/// programs need from BTF at `path`.
pub fn sock_offsets(path: &Path) -> Result<SockOffsets, BtfError> {
    let btf = load(path)?;
    // `struct sock` starts with `struct sock_common __sk_common`.
    let common = member_offset(&btf, "sock", "__sk_common")?;
    let field = |name: &str| member_offset(&btf, "sock_common", name).map(|o| common + o);
    Ok(SockOffsets {
        family: field("skc_family")?,
        local_port: field("skc_num")?,
        remote_port: field("skc_dport")?,
        local_v4: field("skc_rcv_saddr")?,
        remote_v4: field("skc_daddr")?,
        local_v6: field("skc_v6_rcv_saddr")?,
        remote_v6: field("skc_v6_daddr")?,
        skb_sk: member_offset(&btf, "sk_buff", "sk")?,
        skb_gso_segs: member_offset(&btf, "sk_buff", "cb")?
            + member_offset(&btf, "tcp_skb_cb", "tcp_gso_segs")?,
        regs_ip: member_offset(&btf, "pt_regs", "ip")?,
        regs_sp: member_offset(&btf, "pt_regs", "sp")?,
        regs_bp: member_offset(&btf, "pt_regs", "bp")?,
    })
}

/// Names of the values of `enum name` with `prefix` taken off
/// (`SKB_DROP_REASON_NETFILTER_DROP` → `NETFILTER_DROP`); empty when the
/// kernel has no such enum.
pub fn enum_names(path: &Path, name: &str, prefix: &str) -> FxHashMap<u32, String> {
    let Ok(btf) = load(path) else {
        return FxHashMap::default();
    };
    let Ok(types) = btf.resolve_types_by_name(name) else {
        return FxHashMap::default();
    };
    let mut names = FxHashMap::default();
    for ty in types {
        if let Type::Enum(e) = ty {
            for member in &e.members {
                if let Ok(text) = btf.resolve_name(member) {
                    let short = text.strip_prefix(prefix).unwrap_or(&text);
                    names.insert(member.val(), short.to_owned());
                }
            }
        }
    }
    names
}

fn load(path: &Path) -> Result<Btf, BtfError> {
    if !path.exists() {
        return Err(BtfError::Missing {
            path: path.to_owned(),
        });
    }
    // Mapped, not parsed whole: parsing every kernel type peaks at ~40 MB
    // to answer five questions.
    Btf::from_file_with_backend(path, btf_rs::Backend::Mmap).map_err(|err| BtfError::Unreadable {
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

/// Byte offset of `field` in `struct structure`, looking through anonymous
/// struct and union members as the C compiler does.
pub fn member_offset(btf: &Btf, structure: &str, field: &str) -> Result<u32, BtfError> {
    let no_struct = || BtfError::NoStruct {
        name: structure.to_owned(),
    };
    let types = btf
        .resolve_types_by_name(structure)
        .map_err(|_| no_struct())?;
    let members = types
        .iter()
        .find_map(|ty| match ty {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(no_struct)?;
    find_member(btf, members, field)
        .map(|bits| bits / 8)
        .ok_or_else(|| BtfError::NoField {
            structure: structure.to_owned(),
            field: field.to_owned(),
        })
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

    #[test]
    fn missing_btf_says_what_kernel_is_needed() {
        let err = task_offsets(Path::new("/nonexistent/btf/vmlinux")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, BtfError::Missing { .. }), "{text}");
        assert!(text.contains("CONFIG_DEBUG_INFO_BTF"), "{text}");
    }

    #[test]
    fn garbage_btf_is_an_error_not_a_panic() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"definitely not BTF").unwrap();
        assert!(matches!(
            task_offsets(file.path()),
            Err(BtfError::Unreadable { .. })
        ));
    }

    #[test]
    fn running_kernel_socket_offsets_and_drop_reasons() {
        let path = Path::new(KERNEL_BTF_PATH);
        let offsets = sock_offsets(path).unwrap();
        // sock_common begins with the address pair, then the port pair.
        assert_eq!(offsets.remote_v4, 0);
        assert_eq!(offsets.local_v4, 4);
        assert_eq!(offsets.local_port, offsets.remote_port + 2);
        assert!(offsets.skb_sk > 0 && offsets.skb_gso_segs > offsets.skb_sk);
        let reasons = enum_names(path, "skb_drop_reason", "SKB_DROP_REASON_");
        assert!(
            reasons.values().any(|r| r == "NETFILTER_DROP"),
            "{reasons:?}"
        );
    }

    #[test]
    fn running_kernel_offsets_are_plausible() {
        let path = Path::new(KERNEL_BTF_PATH);
        if !path.exists() {
            panic!("{KERNEL_BTF_PATH} is missing: these tests need a BTF-enabled kernel");
        }
        let (offsets, regs) = task_offsets(path).unwrap();
        assert!(regs.ip > regs.bp && regs.sp > regs.ip, "{regs:?}");
        // tgid directly follows pid in every kernel since 2.6.
        assert_eq!(offsets.tgid, offsets.pid + 4);
        assert!(offsets.group_leader > offsets.tgid);
        assert!(offsets.start_boottime > 0 && offsets.self_exec_id > 0);
    }
}
