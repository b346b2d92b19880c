//! The kernel unwinder's maps as the agent writes them: the shared row
//! array (memory-mapped, so loading a table is a copy, not a system call
//! per row) and the per-process mapping entries.

use std::{
    os::fd::{AsFd as _, AsRawFd},
    ptr::NonNull,
};

use aya::maps::{HashMap, MapData};
use hearth_common::unwind::{ProcessUnwind, UnwindRow};

use super::{ProbeError, map_error};

pub(super) const UNWIND_ROWS: &str = "UNWIND_ROWS";
pub(super) const UNWIND_PROCESSES: &str = "UNWIND_PROCESSES";
pub(super) const UNWIND_PROGRAMS: &str = "UNWIND_PROGRAMS";

/// Limits of the kernel unwinder's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindCapacity {
    /// Rows of all loaded tables together (8 bytes each, allocated at load).
    pub rows: u32,
    /// Processes with tables (about 2 KiB each, allocated as used).
    pub processes: u32,
}

/// Writable view of the kernel unwinder's maps.
pub struct UnwindMaps {
    rows: RowArray,
    processes: HashMap<MapData, u32, ProcessUnwind>,
}

impl UnwindMaps {
    pub(super) fn new(
        rows: MapData,
        processes: MapData,
        capacity: u32,
    ) -> Result<Self, ProbeError> {
        let processes = HashMap::try_from(aya::maps::Map::HashMap(processes))
            .map_err(|source| map_error(UNWIND_PROCESSES, source))?;
        Ok(Self {
            rows: RowArray::map(rows, capacity)?,
            processes,
        })
    }

    /// Rows the array holds.
    pub fn row_capacity(&self) -> u32 {
        self.rows.len as u32
    }

    /// Copies `rows` into the array from index `first` on.
    pub fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) {
        let first = first as usize;
        assert!(first + rows.len() <= self.rows.len, "rows beyond the array");
        // SAFETY: the range is inside the mapping (checked above); the kernel
        // only reads rows a process entry points at, and none points here yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                rows.as_ptr(),
                self.rows.base.as_ptr().add(first),
                rows.len(),
            );
        }
    }

    /// Copies rows `from..from + len` to `to..to + len` (ranges that do not
    /// overlap), for moving a table into a gap.
    pub fn copy_rows(&mut self, from: u32, to: u32, len: u32) {
        let (from, to, len) = (from as usize, to as usize, len as usize);
        assert!(
            from + len <= self.rows.len && to + len <= self.rows.len,
            "rows beyond the array"
        );
        assert!(
            from + len <= to || to + len <= from,
            "overlapping row ranges"
        );
        // SAFETY: both ranges are inside the mapping and disjoint (checked
        // above); no process entry points at the destination yet.
        unsafe {
            let base = self.rows.base.as_ptr();
            std::ptr::copy_nonoverlapping(base.add(from), base.add(to), len);
        }
    }

    /// Sets (or replaces) the entry of process `tgid`.
    pub fn set_process(&mut self, tgid: u32, entry: &ProcessUnwind) -> Result<(), ProbeError> {
        self.processes
            .insert(tgid, entry, 0)
            .map_err(|source| map_error(UNWIND_PROCESSES, source))
    }

    pub fn remove_process(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.processes
            .remove(&tgid)
            .map_err(|source| map_error(UNWIND_PROCESSES, source))
    }

    /// Tgids with an entry in the kernel map.
    pub fn processes(&self) -> Vec<u32> {
        self.processes.keys().filter_map(Result::ok).collect()
    }
}

/// `UNWIND_ROWS`, mapped into the agent's memory.
struct RowArray {
    base: NonNull<UnwindRow>,
    len: usize,
    bytes: usize,
    _map: MapData,
}

// SAFETY: the mapping is owned by this value and only written through &mut.
unsafe impl Send for RowArray {}

impl RowArray {
    fn map(map: MapData, len: u32) -> Result<Self, ProbeError> {
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
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(ProbeError::MapMemory(std::io::Error::last_os_error()));
        }
        Ok(Self {
            base: NonNull::new(base.cast()).expect("mmap returned null"),
            len,
            bytes,
            _map: map,
        })
    }
}

impl Drop for RowArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
