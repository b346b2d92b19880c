//! Which tables the kernel unwinder holds: one compiled table per object
//! file (by device and inode), shared by every process that maps it, and
//! one entry per process saying where each of its executable mappings is
//! and which table covers it. Processes are added when their samples ask
//! (`SAMPLE_NEEDS_TABLES`), re-read when an address falls outside what the
//! kernel knows (a `dlopen`, an `exec`), and removed once they exit; a
//! table goes when the last process mapping its object does.

use std::{
    collections::hash_map::Entry,
    path::PathBuf,
    time::{Duration, Instant},
};

use hearth_common::unwind::{MAX_UNWIND_MAPPINGS, ProcessUnwind, UnwindMapping};
use procfs::process::{MMPermissions, MMapPath};
use rustc_hash::FxHashMap;

use super::{
    UnwindError,
    alloc::RowAllocator,
    compile_elf,
    load::{ObjectKey, load_bias, map as map_object},
};
use crate::{
    collect::probes::{ProbeError, UnwindMaps},
    enrich::process::{ProcessKey, live_process},
};

/// Limits of what the agent loads into the kernel unwinder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindLimits {
    /// Rows one object's table may have; a larger object is walked with
    /// frame pointers.
    pub max_rows_per_object: usize,
    /// Longest time between two reads of one process's mappings while its
    /// samples keep asking (addresses outside every mapping, such as JIT
    /// code). The first re-read comes after [`FIRST_REFRESH`], and the wait
    /// doubles each time a read finds no new mapping, up to this.
    pub refresh_interval: Duration,
}

/// Wait before re-reading a process's mappings after a read that found
/// something new (a `dlopen` is usually followed by more).
pub const FIRST_REFRESH: Duration = Duration::from_millis(100);

/// When a process may be read again, and the wait after that.
#[derive(Clone, Copy)]
struct Retry {
    at: Instant,
    wait: Duration,
}

/// What the registry holds and what it could not load, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindStats {
    pub processes: u64,
    pub objects: u64,
    pub rows: u64,
    /// Rows of the shards made, and shards made.
    pub row_capacity: u64,
    pub shards: u64,
    /// Rows the store may grow to (`unwind.max_rows`, in whole shards).
    pub max_rows: u64,
    /// Shards made as tables needed room, and given back once empty.
    pub shards_added: u64,
    pub shards_removed: u64,
    /// Objects whose `.eh_frame` could not be compiled (each counted once).
    pub compile_errors: u64,
    /// Tables not loaded because the row store was full at its cap.
    pub tables_full: u64,
    /// Times the row store was compacted to make room for a table, and
    /// the tables moved doing it.
    pub compactions: u64,
    pub tables_moved: u64,
    /// The longest free run of rows, against all free rows: 1 − their
    /// ratio is the array's fragmentation.
    pub largest_free_rows: u64,
    pub free_rows: u64,
    /// Processes not added because the kernel's process map was full.
    pub processes_full: u64,
}

struct Table {
    /// `(first_row, rows)` in the kernel array; rows 0: no table.
    first_row: u32,
    rows: u32,
    /// Processes whose entry points at it.
    users: u32,
}

struct Loaded {
    key: ProcessKey,
    objects: Vec<ObjectKey>,
    /// What the kernel holds for it (rewritten when a table moves).
    entry: ProcessUnwind,
}

pub struct UnwindRegistry {
    maps: UnwindMaps,
    limits: UnwindLimits,
    tables: FxHashMap<ObjectKey, Table>,
    allocator: RowAllocator,
    processes: FxHashMap<u32, Loaded>,
    /// When each tgid may be read again (rate limit).
    retries: FxHashMap<u32, Retry>,
    stats: UnwindStats,
    nanos_per_tick: u64,
    /// Whether the store being full at its cap was logged (once).
    told_full: bool,
}

impl UnwindRegistry {
    /// A registry whose store has no shard yet: the first is made when
    /// the first table is loaded.
    pub fn new(maps: UnwindMaps, limits: UnwindLimits) -> Self {
        let capacity = maps.capacity();
        Self {
            maps,
            limits: UnwindLimits {
                max_rows_per_object: limits.max_rows_per_object.min(capacity.shard_rows as usize),
                ..limits
            },
            tables: FxHashMap::default(),
            allocator: RowAllocator::new(capacity.shard_rows),
            processes: FxHashMap::default(),
            retries: FxHashMap::default(),
            stats: UnwindStats {
                max_rows: capacity.max_rows(),
                ..UnwindStats::default()
            },
            nanos_per_tick: 1_000_000_000 / procfs::ticks_per_second().max(1),
            told_full: false,
        }
    }

    /// Loads or refreshes the tables of the processes whose samples asked,
    /// each at most once per refresh interval.
    pub fn serve(&mut self, requests: impl IntoIterator<Item = ProcessKey>) {
        let now = Instant::now();
        for key in requests {
            let retry = self.retries.get(&key.tgid).copied();
            if retry.is_some_and(|r| now < r.at) {
                continue;
            }
            let before = self.processes.get(&key.tgid).map(|p| p.objects.clone());
            if let Err(err) = self.load_process(key) {
                tracing::warn!(pid = key.tgid, %err, "loading unwind tables failed");
            }
            let after = self.processes.get(&key.tgid).map(|p| &p.objects);
            let wait = match retry {
                Some(retry) if before.as_ref() == after => {
                    (retry.wait * 2).min(self.limits.refresh_interval)
                }
                _ => FIRST_REFRESH,
            };
            self.retries.insert(
                key.tgid,
                Retry {
                    at: now + wait,
                    wait,
                },
            );
        }
    }

    /// Removes the processes that have exited (or whose PID now names
    /// another process), and the tables only they used.
    pub fn reap(&mut self) {
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, loaded)| live_process(loaded.key, self.nanos_per_tick).is_none())
            .map(|(&tgid, _)| tgid)
            .collect();
        for tgid in gone {
            self.unload_process(tgid);
        }
        let now = Instant::now();
        let processes = &self.processes;
        self.retries
            .retain(|tgid, retry| processes.contains_key(tgid) || retry.at > now);
    }

    pub fn stats(&self) -> UnwindStats {
        UnwindStats {
            processes: self.processes.len() as u64,
            objects: self.tables.values().filter(|t| t.rows > 0).count() as u64,
            rows: self.allocator.used(),
            row_capacity: self.allocator.capacity(),
            shards: u64::from(self.allocator.shards()),
            largest_free_rows: u64::from(self.allocator.largest_free()),
            free_rows: self.allocator.free_rows(),
            ..self.stats
        }
    }

    /// Tgids in the kernel's process map (for tests and diagnostics).
    pub fn kernel_processes(&self) -> Vec<u32> {
        self.maps.processes()
    }

    fn load_process(&mut self, key: ProcessKey) -> Result<(), ProbeError> {
        let Some(process) = live_process(key, self.nanos_per_tick) else {
            return Ok(()); // gone before it could be read
        };
        let Ok(maps) = process.maps() else {
            return Ok(());
        };
        let mut mappings = Vec::new();
        let mut objects = Vec::new();
        for map in maps
            .into_iter()
            .filter(|m| m.perms.contains(MMPermissions::EXECUTE))
        {
            let MMapPath::Path(path) = &map.pathname else {
                continue; // [vdso], JIT code: frame pointers there
            };
            if mappings.len() == MAX_UNWIND_MAPPINGS {
                break;
            }
            let object = ObjectKey {
                device: ((map.dev.0 as u64) << 32) | (map.dev.1 as u64 & 0xffff_ffff),
                inode: map.inode,
            };
            let read_path = map_file(key.tgid, map.address, path);
            // Read once: for the bias, and for the table if it is new.
            let Ok(data) = map_object(&read_path) else {
                continue;
            };
            let (bias, shrank) =
                crate::fault::watch(|| load_bias(&data, map.address.0, map.offset));
            let Some(bias) = bias.filter(|_| !shrank) else {
                continue;
            };
            let table = self.table(object, &data, &read_path);
            mappings.push(UnwindMapping {
                start: map.address.0,
                end: map.address.1,
                bias,
                first_row: table.0,
                rows: table.1,
            });
            objects.push(object);
        }
        // A table placed earlier in this loop may have moved since, when a
        // later one compacted the array: take each from where it is now.
        for (mapping, object) in mappings.iter_mut().zip(&objects) {
            if let Some(table) = self.tables.get(object) {
                mapping.first_row = table.first_row;
                mapping.rows = table.rows;
            }
        }
        let mut entry = ProcessUnwind {
            start_ns: key.start_ns,
            exec_id: key.exec_id,
            count: mappings.len() as u32,
            mappings: [UnwindMapping::default(); MAX_UNWIND_MAPPINGS],
        };
        mappings.sort_by_key(|m| m.start);
        entry.mappings[..mappings.len()].copy_from_slice(&mappings);
        for object in &objects {
            if let Some(table) = self.tables.get_mut(object) {
                table.users += 1;
            }
        }
        let result = self.maps.set_process(key.tgid, &entry);
        let previous = self.processes.insert(
            key.tgid,
            Loaded {
                key,
                objects,
                entry,
            },
        );
        if let Some(previous) = previous {
            self.release(&previous.objects);
        }
        if result.is_err() {
            self.stats.processes_full += 1;
            if let Some(loaded) = self.processes.remove(&key.tgid) {
                self.release(&loaded.objects);
            }
        }
        result
    }

    /// The table of `object` (compiled and loaded on first use), as
    /// `(first_row, rows)`; `(0, 0)` when it has none.
    fn table(&mut self, object: ObjectKey, data: &[u8], path: &std::path::Path) -> (u32, u32) {
        if let Some(table) = self.tables.get(&object) {
            return (table.first_row, table.rows);
        }
        let (compiled, shrank) =
            crate::fault::watch(|| compile_elf(data, self.limits.max_rows_per_object));
        let compiled = if shrank {
            tracing::warn!(
                object = %path.display(),
                "object file shrank while its unwind table was read; walking it with frame pointers"
            );
            Err(UnwindError::Shrunk)
        } else {
            compiled.map_err(UnwindError::from)
        };
        let (first_row, rows) = match compiled {
            Ok(table) if table.rows.is_empty() => (0, 0),
            Ok(table) => match self.allocate(table.rows.len() as u32) {
                Some(first) => {
                    self.maps.write_rows(first, &table.rows);
                    (first, table.rows.len() as u32)
                }
                None => {
                    self.stats.tables_full += 1;
                    let message = "the unwind row store is full at unwind.max_rows; this object \
                                   and others that do not fit are walked with frame pointers \
                                   (hearth_unwind_tables_not_loaded_total{reason=\"rows_full\"}); \
                                   raise unwind.max_rows to give them tables";
                    if std::mem::replace(&mut self.told_full, true) {
                        tracing::debug!(object = %path.display(), rows = table.rows.len(), "{message}");
                    } else {
                        tracing::warn!(
                            object = %path.display(),
                            rows = table.rows.len(),
                            max_rows = self.stats.max_rows,
                            "{message}"
                        );
                    }
                    (0, 0)
                }
            },
            Err(err) => {
                self.stats.compile_errors += 1;
                tracing::debug!(object = %path.display(), %err, "no unwind table");
                (0, 0)
            }
        };
        self.tables.insert(
            object,
            Table {
                first_row,
                rows,
                users: 0,
            },
        );
        (first_row, rows)
    }

    /// Rows for a table of `len`: compacting the store when it has them
    /// free but not in one piece, else adding a shard while under the cap.
    fn allocate(&mut self, len: u32) -> Option<u32> {
        if let Some(first) = self.allocator.allocate(len) {
            return Some(first);
        }
        if let Some(first) = self.compact(len) {
            return Some(first);
        }
        if self.allocator.shards() >= self.maps.capacity().max_shards {
            return None;
        }
        if let Err(err) = self.maps.add_shard() {
            tracing::warn!(
                err = %crate::error_chain(&err),
                "adding an unwind row shard failed; objects that do not fit are walked with frame pointers"
            );
            return None;
        }
        self.allocator.grow();
        self.stats.shards_added += 1;
        tracing::debug!(
            shards = self.allocator.shards(),
            rows = self.allocator.capacity(),
            "unwind row store grew"
        );
        self.allocator.allocate(len)
    }

    /// Gives back the shards at the top of the store that no table uses.
    fn shrink(&mut self) {
        while self.allocator.shrink() {
            self.maps.remove_last_shard();
            self.stats.shards_removed += 1;
            tracing::debug!(
                shards = self.allocator.shards(),
                "unwind row store gave back an empty shard"
            );
        }
    }

    /// Rows for a table of `len` made by moving tables into gaps, if the
    /// store has that many free.
    fn compact(&mut self, len: u32) -> Option<u32> {
        let placed: Vec<(u32, u32)> = self
            .tables
            .values()
            .filter(|t| t.rows > 0)
            .map(|t| (t.first_row, t.rows))
            .collect();
        let moves = self.allocator.compact(&placed, len);
        if moves.is_empty() {
            return None;
        }
        self.stats.compactions += 1;
        self.stats.tables_moved += moves.len() as u64;
        for &(from, to, rows) in &moves {
            self.move_table(from, to, rows);
        }
        tracing::debug!(
            moved = moves.len(),
            rows = len,
            "unwind row store compacted"
        );
        self.allocator.allocate(len)
    }

    /// Moves the table at rows `from..from + rows` to `to`: copies the rows,
    /// then repoints every process entry that uses it (the old rows stay
    /// intact until then, so a walk in progress reads either place whole).
    fn move_table(&mut self, from: u32, to: u32, rows: u32) {
        self.maps.copy_rows(from, to, rows);
        if let Some(table) = self
            .tables
            .values_mut()
            .find(|t| t.first_row == from && t.rows == rows)
        {
            table.first_row = to;
        }
        for (&tgid, loaded) in &mut self.processes {
            let count = loaded.entry.count as usize;
            let mut changed = false;
            for mapping in &mut loaded.entry.mappings[..count] {
                if mapping.first_row == from && mapping.rows == rows {
                    mapping.first_row = to;
                    changed = true;
                }
            }
            if changed && let Err(err) = self.maps.set_process(tgid, &loaded.entry) {
                tracing::debug!(pid = tgid, %err, "repointing an unwind entry");
            }
        }
    }

    fn unload_process(&mut self, tgid: u32) {
        if let Err(err) = self.maps.remove_process(tgid) {
            tracing::debug!(pid = tgid, %err, "removing unwind entry");
        }
        if let Some(loaded) = self.processes.remove(&tgid) {
            self.release(&loaded.objects);
        }
    }

    /// Drops one use of each object; a table nobody uses is freed (no
    /// process entry points at its rows any more).
    fn release(&mut self, objects: &[ObjectKey]) {
        for object in objects {
            let Entry::Occupied(mut entry) = self.tables.entry(*object) else {
                continue;
            };
            let table = entry.get_mut();
            table.users = table.users.saturating_sub(1);
            if table.users == 0 {
                if table.rows > 0 {
                    self.allocator.free(table.first_row, table.rows);
                }
                entry.remove();
            }
        }
        self.shrink();
    }
}

/// A path the mapped file can be read from, even from another mount
/// namespace or after it was deleted.
fn map_file(tgid: u32, (start, end): (u64, u64), path: &std::path::Path) -> PathBuf {
    let direct = PathBuf::from(format!("/proc/{tgid}/map_files/{start:x}-{end:x}"));
    if direct.exists() {
        return direct;
    }
    PathBuf::from(format!("/proc/{tgid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}
