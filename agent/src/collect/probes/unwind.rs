//! The kernel unwinder's maps as the agent writes them: the row store
//! (an array of row arrays, "shards", made as tables need them and each
//! memory-mapped, so loading a table is a copy, not a system call per
//! row) and the per-process mapping entries.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    ptr::NonNull,
};

use aya::maps::{HashMap, MapData};
use hearth_common::unwind::{
    ProcessUnwind, UNWIND_MAX_SHARDS, UNWIND_SHARD_STRIDE_LOG2, UnwindRow,
};

use super::{
    ProbeError, map_error,
    shard::{self, Shard},
};

pub(super) const UNWIND_ROW_SHARDS: &str = "UNWIND_ROW_SHARDS";
pub(super) const UNWIND_PROCESSES: &str = "UNWIND_PROCESSES";
pub(super) const UNWIND_PROGRAMS: &str = "UNWIND_PROGRAMS";

/// Limits of the kernel unwinder's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindCapacity {
    /// Rows of one shard of the row store (8 bytes each, allocated when
    /// the shard is made).
    pub shard_rows: u32,
    /// Most shards the row store may have.
    pub max_shards: u32,
    /// Processes with tables (about 2 KiB each, allocated at load).
    pub processes: u32,
}

impl UnwindCapacity {
    /// Shards of `shard_rows` (at most one shard stride) up to `max_rows`
    /// rows in all, rounded up to a whole shard.
    pub fn new(shard_rows: u32, max_rows: u32, processes: u32) -> Self {
        let shard_rows = shard_rows.clamp(1, 1 << UNWIND_SHARD_STRIDE_LOG2);
        Self {
            shard_rows,
            max_shards: max_rows.div_ceil(shard_rows).clamp(1, UNWIND_MAX_SHARDS),
            processes,
        }
    }

    /// Rows the store holds when every shard is made.
    pub fn max_rows(&self) -> u64 {
        u64::from(self.shard_rows) * u64::from(self.max_shards)
    }
}

/// Writable view of the kernel unwinder's maps.
pub struct UnwindMaps {
    /// The array of shards the kernel looks rows up through.
    shards_fd: OwnedFd,
    /// The BTF every shard is made with (see [`shard`]).
    shard_btf: OwnedFd,
    shards: Vec<Shard>,
    capacity: UnwindCapacity,
    processes: HashMap<MapData, u32, ProcessUnwind>,
}

impl UnwindMaps {
    pub(super) fn new(
        shards: MapData,
        processes: MapData,
        capacity: UnwindCapacity,
    ) -> Result<Self, ProbeError> {
        let processes = HashMap::try_from(aya::maps::Map::HashMap(processes))
            .map_err(|source| map_error(UNWIND_PROCESSES, source))?;
        let shards_fd = shards
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(ProbeError::Shard)?;
        let shard_btf = shard::load_shard_btf().map_err(ProbeError::Shard)?;
        Ok(Self {
            shards_fd,
            shard_btf,
            shards: Vec::new(),
            capacity,
            processes,
        })
    }

    /// Rows of one shard, and the most shards there may be.
    pub fn capacity(&self) -> UnwindCapacity {
        self.capacity
    }

    /// Shards made so far.
    pub fn shards(&self) -> u32 {
        self.shards.len() as u32
    }

    /// Makes the next shard (rows `shards() << UNWIND_SHARD_STRIDE_LOG2`
    /// onwards) and hands it to the kernel.
    pub fn add_shard(&mut self) -> Result<(), ProbeError> {
        let index = self.shards();
        assert!(index < self.capacity.max_shards, "shard beyond the store");
        let shard =
            Shard::create(&self.shard_btf, self.capacity.shard_rows).map_err(ProbeError::Shard)?;
        shard::set_slot(&self.shards_fd, index, &shard).map_err(ProbeError::Shard)?;
        self.shards.push(shard);
        Ok(())
    }

    /// Takes the last shard from the kernel and frees it; no process entry
    /// may point into it.
    pub fn remove_last_shard(&mut self) {
        let Some(index) = self.shards().checked_sub(1) else {
            return;
        };
        // Should the delete fail, the slot keeps the (empty) shard alive in
        // the kernel until a new shard is set there; nothing points into it.
        if let Err(err) = shard::delete_slot(&self.shards_fd, index) {
            tracing::debug!(%err, shard = index, "emptying a row store slot");
        }
        self.shards.pop();
    }

    /// Copies `rows` into the store from row `first` on.
    pub fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) {
        let (shard, at) = self.locate(first, rows.len());
        // SAFETY: the range is inside the shard's mapping (checked by
        // locate); the kernel only reads rows a process entry points at,
        // and none points here yet.
        unsafe {
            std::ptr::copy_nonoverlapping(rows.as_ptr(), shard.base.as_ptr().add(at), rows.len());
        }
    }

    /// Copies rows `from..from + len` to `to..to + len` (ranges that do not
    /// overlap), for moving a table into a gap.
    pub fn copy_rows(&mut self, from: u32, to: u32, len: u32) {
        let len = len as usize;
        let (source, at) = self.locate(from, len);
        let source = NonNull::new(source.base.as_ptr().wrapping_add(at)).expect("in the shard");
        let (target, at) = self.locate(to, len);
        let target = target.base.as_ptr().wrapping_add(at);
        assert!(
            source.as_ptr().wrapping_add(len) <= target
                || target.wrapping_add(len) <= source.as_ptr(),
            "overlapping row ranges"
        );
        // SAFETY: both ranges are inside shard mappings and disjoint
        // (checked above); no process entry points at the destination yet.
        unsafe { std::ptr::copy_nonoverlapping(source.as_ptr(), target, len) };
    }

    /// The shard holding rows `first..first + len`, and where they start.
    fn locate(&self, first: u32, len: usize) -> (&Shard, usize) {
        let shard = &self.shards[(first >> UNWIND_SHARD_STRIDE_LOG2) as usize];
        let at = (first & ((1 << UNWIND_SHARD_STRIDE_LOG2) - 1)) as usize;
        assert!(at + len <= shard.len, "rows beyond the shard");
        (shard, at)
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
