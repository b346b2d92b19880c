//! The kernel side of one unwind row shard: a memory-mapped BPF array made
//! to match the eBPF object's shard template, set into (and taken out of)
//! a slot of the array of shards. aya creates maps only from an object's
//! definitions, and an inner map must agree with the template on more than
//! its sizes and flags: from 5.15 to 6.1 the kernel also compares the
//! offsets of spin locks and timers found in the value's BTF, which a map
//! made without BTF lacks (`EINVAL` on insertion). So shards are made with
//! a BTF of their own: a `u32` key and an 8-byte struct value without
//! either, as the template's `UnwindRow` is.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    ptr::NonNull,
};

use hearth_common::unwind::UnwindRow;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_F_MMAPABLE | BPF_F_INNER_MAP`: the flags of the eBPF side's shard
/// template, which every shard must carry too.
const SHARD_FLAGS: u32 = 1024 | 4096;

/// Type ids in [`shard_btf`].
const KEY_TYPE: u32 = 1;
const VALUE_TYPE: u32 = 2;

/// `bpf(cmd, attr, size)`: a file descriptor or 0, or the error. `T` must
/// have no padding (the kernel reads every byte of it).
fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, fully initialised attribute block of the
    // layout `cmd` takes, and its size is passed with it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<T>() as u32,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: a file descriptor the kernel just returned to this process.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The raw BTF of a shard: `[1] u32` (key) and `[2] struct hearth_row
/// { u32 pc; u32 rule; }` (value, 8 bytes).
fn shard_btf() -> Vec<u8> {
    const STRINGS: &[u8] = b"\0u32\0hearth_row\0pc\0rule\0";
    let (u32_name, struct_name, pc_name, rule_name) = (1u32, 5u32, 16u32, 19u32);
    let mut types = Vec::new();
    let mut word = |w: u32| types.extend_from_slice(&w.to_le_bytes());
    // INT "u32": size 4, unsigned, 32 bits at offset 0.
    word(u32_name);
    word(1 << 24);
    word(4);
    word(32);
    // STRUCT "hearth_row": two members, 8 bytes.
    word(struct_name);
    word((4 << 24) | 2);
    word(8);
    for (name, bit_offset) in [(pc_name, 0), (rule_name, 32)] {
        word(name);
        word(KEY_TYPE);
        word(bit_offset);
    }
    let mut blob = Vec::new();
    blob.extend_from_slice(&0xeb9f_u16.to_le_bytes()); // magic
    blob.extend_from_slice(&[1, 0]); // version, flags
    for w in [
        24,
        0,
        types.len() as u32,
        types.len() as u32,
        STRINGS.len() as u32,
    ] {
        blob.extend_from_slice(&w.to_le_bytes()); // hdr_len, type_off, type_len, str_off, str_len
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(STRINGS);
    blob
}

// Packed to its 28 bytes: padding after the last field would reach
// the kernel uninitialised, and kernels before 6.4 refuse any nonzero
// byte past the fields they know (EINVAL).
#[repr(C, packed(4))]
struct BtfLoad {
    btf: u64,
    log_buf: u64,
    size: u32,
    log_size: u32,
    log_level: u32,
}

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
}

/// Loads [`shard_btf`] into the kernel; on failure, once more with the
/// kernel's log, which the error then carries.
pub(super) fn load_shard_btf() -> io::Result<OwnedFd> {
    let blob = shard_btf();
    let load = |log: &mut [u8], level: u32| {
        let attr = BtfLoad {
            btf: blob.as_ptr() as u64,
            log_buf: if level > 0 {
                log.as_mut_ptr() as u64
            } else {
                0
            },
            size: blob.len() as u32,
            log_size: if level > 0 { log.len() as u32 } else { 0 },
            log_level: level,
        };
        bpf(BPF_BTF_LOAD, &attr).map(owned)
    };
    let err = match load(&mut [], 0) {
        Ok(fd) => return Ok(fd),
        Err(err) => err,
    };
    let mut log = vec![0u8; 16 << 10];
    let _ = load(&mut log, 1);
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let said = String::from_utf8_lossy(&log[..end]);
    Err(io::Error::new(
        err.kind(),
        format!(
            "loading the shards' BTF: {err}; the kernel said: {}",
            said.trim()
        ),
    ))
}

/// Makes an array of `rows` rows to serve as a shard.
fn create_array(btf: &OwnedFd, rows: u32) -> io::Result<OwnedFd> {
    let mut map_name = [0u8; 16];
    map_name[..11].copy_from_slice(b"hearth_rows");
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: size_of::<u32>() as u32,
        value_size: size_of::<UnwindRow>() as u32,
        max_entries: rows,
        map_flags: SHARD_FLAGS,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
        map_ifindex: 0,
        btf_fd: btf.as_raw_fd() as u32,
        btf_key_type_id: KEY_TYPE,
        btf_value_type_id: VALUE_TYPE,
    };
    bpf(BPF_MAP_CREATE, &attr).map(owned)
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Puts `shard` into slot `index` of the array of shards `outer`.
pub(super) fn set_slot(outer: &OwnedFd, index: u32, shard: &Shard) -> io::Result<()> {
    let value = shard.fd.as_raw_fd() as u32;
    let attr = ElemAttr {
        map_fd: outer.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(&index) as u64,
        value: std::ptr::from_ref(&value) as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &attr).map(drop)
}

/// Empties slot `index` of `outer` (the kernel allows deleting from
/// arrays of maps: the slot then holds no map).
pub(super) fn delete_slot(outer: &OwnedFd, index: u32) -> io::Result<()> {
    let attr = ElemAttr {
        map_fd: outer.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(&index) as u64,
        value: 0,
        flags: 0,
    };
    bpf(BPF_MAP_DELETE_ELEM, &attr).map(drop)
}

/// One shard, mapped into the agent's memory.
pub(super) struct Shard {
    fd: OwnedFd,
    pub(super) base: NonNull<UnwindRow>,
    pub(super) len: usize,
    bytes: usize,
}

// SAFETY: the mapping is owned by this value and only written through
// &mut UnwindMaps.
unsafe impl Send for Shard {}

impl Shard {
    /// Makes a shard of `len` rows and maps it.
    pub(super) fn create(btf: &OwnedFd, len: u32) -> io::Result<Self> {
        let fd = create_array(btf, len)?;
        let page = super::page_size();
        let len = len as usize;
        let bytes = (len * size_of::<UnwindRow>()).div_ceil(page) * page;
        // SAFETY: a shared mapping of the array's fd, the way the kernel
        // documents for BPF_F_MMAPABLE arrays; unmapped on drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            base: NonNull::new(base.cast()).expect("mmap returned null"),
            len,
            bytes,
        })
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `create`, not used after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_blocks_have_no_padding() {
        // What the kernel's union bpf_attr holds for each command.
        let btf_load = 8 + 8 + 4 + 4 + 4;
        let map_create = 4 * 7 + 16 + 4 * 4;
        let elem = 4 + 4 + 8 + 8 + 8;
        assert_eq!(size_of::<BtfLoad>(), btf_load);
        assert_eq!(size_of::<MapCreate>(), map_create);
        assert_eq!(size_of::<ElemAttr>(), elem);
    }

    #[test]
    fn the_shard_btf_is_laid_out_as_the_kernel_reads_it() {
        let blob = shard_btf();
        assert_eq!(&blob[..4], &[0x9f, 0xeb, 1, 0]);
        let type_len = u32::from_le_bytes(blob[12..16].try_into().unwrap()) as usize;
        let str_len = u32::from_le_bytes(blob[20..24].try_into().unwrap()) as usize;
        assert_eq!(type_len, 16 + 36);
        assert_eq!(blob.len(), 24 + type_len + str_len);
        let strings = &blob[24 + type_len..];
        let name = |at: usize| {
            let end = strings[at..].iter().position(|&b| b == 0).unwrap();
            std::str::from_utf8(&strings[at..at + end]).unwrap()
        };
        assert_eq!(
            [name(1), name(5), name(16), name(19)],
            ["u32", "hearth_row", "pc", "rule"]
        );
    }
}
