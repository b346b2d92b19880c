//! Process metadata: which program a sample's process runs and where its
//! executable files are mapped, read from procfs the first time a process
//! image is seen and refreshed when an address falls outside every known
//! mapping (a `dlopen` since).

mod container;
pub mod kubernetes;
mod objects;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use procfs::process::{MMPermissions, MMapPath, Process};
use rustc_hash::FxHashMap;

pub use container::{ContainerRef, container_from_cgroup, pod_uid};
pub use objects::{ObjectId, ObjectInfo, ObjectTable};

/// One process image: a PID reused by a new process, or a process that
/// execs, gets a new key, so their addresses are never mixed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ProcessKey {
    pub tgid: u32,
    pub exec_id: u32,
    /// Boot-time start of the thread-group leader, nanoseconds (0 if unknown).
    pub start_ns: u64,
}

/// A process in its [`ProcessTable`]; never reused for another process.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcessId(pub u32);

/// Limits on what the process table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessLimits {
    /// Most executable files held open for symbolization at once.
    pub max_open_objects: usize,
    /// Shortest time between two re-reads of one process's mappings.
    pub maps_refresh_interval: Duration,
}

impl Default for ProcessLimits {
    fn default() -> Self {
        Self {
            max_open_objects: 2048,
            maps_refresh_interval: Duration::from_secs(1),
        }
    }
}

/// An executable mapping of one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub object: ObjectId,
}

/// Where a user-space address points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserFrame {
    /// Inside a known mapping; `address` is as the process saw it.
    Mapped { address: u64, mapping: Mapping },
    /// Outside every mapping we know of (JIT code, or the process was gone
    /// before its mappings could be read).
    Unmapped { address: u64 },
}

impl UserFrame {
    pub fn address(&self) -> u64 {
        match *self {
            UserFrame::Mapped { address, .. } | UserFrame::Unmapped { address } => address,
        }
    }
}

pub struct ProcessInfo {
    pub key: ProcessKey,
    /// Main thread's name, or the sampled thread's if the process was gone.
    pub name: String,
    pub exe: Option<PathBuf>,
    pub container: Option<ContainerRef>,
    /// False when procfs no longer described this process image when it was
    /// first seen (it exited, or its PID was reused).
    pub seen_alive: bool,
    mappings: Vec<Mapping>,
    last_maps_read: Option<Instant>,
    /// The last window in which one of its stacks was new.
    last_seen_window: u64,
}

impl ProcessInfo {
    /// The executable's file name, else the process name.
    pub fn executable_name(&self) -> String {
        self.exe
            .as_deref()
            .and_then(|exe| exe.file_name())
            .map_or_else(|| self.name.clone(), |n| n.to_string_lossy().into_owned())
    }

    fn find(&self, address: u64) -> Option<Mapping> {
        let index = self.mappings.partition_point(|m| m.start <= address);
        let mapping = *self.mappings.get(index.checked_sub(1)?)?;
        (address < mapping.end).then_some(mapping)
    }
}

pub struct ProcessTable {
    processes: FxHashMap<ProcessId, ProcessInfo>,
    by_key: FxHashMap<ProcessKey, ProcessId>,
    objects: ObjectTable,
    limits: ProcessLimits,
    nanos_per_tick: u64,
    next_id: u32,
    window: u64,
}

impl ProcessTable {
    pub fn new(limits: ProcessLimits) -> Self {
        Self {
            processes: FxHashMap::default(),
            by_key: FxHashMap::default(),
            objects: ObjectTable::new(limits.max_open_objects),
            limits,
            nanos_per_tick: 1_000_000_000 / procfs::ticks_per_second().max(1),
            next_id: 0,
            window: 0,
        }
    }

    /// The process `id`, which must still be in the table (ids in the
    /// current window's stacks always are).
    pub fn get(&self, id: ProcessId) -> &ProcessInfo {
        &self.processes[&id]
    }

    pub fn objects(&self) -> &ObjectTable {
        &self.objects
    }

    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// The process for `key`, reading its metadata on first sight, and
    /// marking it seen in the current window. `thread_name` names it if
    /// procfs no longer has it.
    pub fn observe(&mut self, key: ProcessKey, thread_name: &str) -> ProcessId {
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(info) = self.processes.get_mut(&id) {
                info.last_seen_window = self.window;
            }
            return id;
        }
        let id = ProcessId(self.next_id);
        self.next_id += 1;
        let mut info = ProcessInfo {
            key,
            name: thread_name.to_owned(),
            exe: None,
            container: None,
            seen_alive: false,
            mappings: Vec::new(),
            last_maps_read: None,
            last_seen_window: self.window,
        };
        if let Some(process) = live_process(key, self.nanos_per_tick) {
            info.seen_alive = true;
            if let Ok(stat) = process.stat() {
                info.name = stat.comm;
            }
            info.exe = process.exe().ok();
            info.container = std::fs::read_to_string(format!("/proc/{}/cgroup", key.tgid))
                .ok()
                .and_then(|text| container_from_cgroup(&text));
            read_maps(&mut self.objects, &process, &mut info);
        }
        self.processes.insert(id, info);
        self.by_key.insert(key, id);
        id
    }

    /// Ends a window: forgets processes not seen for `idle_windows` windows
    /// and closes the files only they used. Returns the forgotten objects'
    /// read paths, for the symbolizer to drop what it cached for them.
    pub fn end_window(&mut self, idle_windows: u32) -> Vec<(ObjectId, Option<PathBuf>)> {
        let oldest_kept = self.window.saturating_sub(u64::from(idle_windows) - 1);
        self.window += 1;
        let before = self.processes.len();
        self.processes
            .retain(|_, info| info.last_seen_window >= oldest_kept);
        if self.processes.len() == before {
            return Vec::new();
        }
        let processes = &self.processes;
        self.by_key.retain(|_, id| processes.contains_key(id));
        let used: rustc_hash::FxHashSet<ObjectId> = processes
            .values()
            .flat_map(|p| p.mappings.iter().map(|m| m.object))
            .collect();
        self.objects.retain(|id| used.contains(&id))
    }

    /// Where `address` of process `id` points; re-reads the process's
    /// mappings (at most once per refresh interval) when nothing matches.
    pub fn resolve(&mut self, id: ProcessId, address: u64) -> UserFrame {
        let Some(info) = self.processes.get_mut(&id) else {
            return UserFrame::Unmapped { address };
        };
        if let Some(mapping) = info.find(address) {
            return UserFrame::Mapped { address, mapping };
        }
        let stale = info
            .last_maps_read
            .is_none_or(|at| at.elapsed() >= self.limits.maps_refresh_interval);
        if info.seen_alive
            && stale
            && let Some(process) = live_process(info.key, self.nanos_per_tick)
        {
            read_maps(&mut self.objects, &process, info);
            if let Some(mapping) = info.find(address) {
                return UserFrame::Mapped { address, mapping };
            }
        }
        UserFrame::Unmapped { address }
    }
}

/// The procfs entry for `key`, if it still describes that process image.
pub fn live_process(key: ProcessKey, nanos_per_tick: u64) -> Option<Process> {
    let process = Process::new(key.tgid as i32).ok()?;
    if key.start_ns != 0 {
        let started_ticks = process.stat().ok()?.starttime;
        if started_ticks != key.start_ns / nanos_per_tick {
            return None; // the PID now belongs to another process
        }
    }
    Some(process)
}

fn read_maps(objects: &mut ObjectTable, process: &Process, info: &mut ProcessInfo) {
    info.last_maps_read = Some(Instant::now());
    let maps = match process.maps() {
        Ok(maps) => maps,
        Err(err) => {
            tracing::debug!(pid = info.key.tgid, %err, "cannot read memory maps");
            return;
        }
    };
    let tgid = info.key.tgid;
    let mut mappings: Vec<Mapping> = maps
        .into_iter()
        .filter(|map| map.perms.contains(MMPermissions::EXECUTE))
        .filter_map(|map| {
            let object = match &map.pathname {
                MMapPath::Path(path) => objects.file(tgid, &map, path),
                MMapPath::Vdso => objects.pseudo("[vdso]"),
                MMapPath::Vsyscall => objects.pseudo("[vsyscall]"),
                _ => return None,
            };
            Some(Mapping {
                start: map.address.0,
                end: map.address.1,
                file_offset: map.offset,
                object,
            })
        })
        .collect();
    mappings.sort_by_key(|m| m.start);
    info.mappings = mappings;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_key(table: &ProcessTable) -> ProcessKey {
        let me = Process::myself().unwrap();
        ProcessKey {
            tgid: me.pid as u32,
            exec_id: 0,
            start_ns: me.stat().unwrap().starttime * table.nanos_per_tick,
        }
    }

    #[test]
    fn own_code_resolves_to_this_executable() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        let key = own_key(&table);
        let id = table.observe(key, "ignored");
        assert!(table.get(id).seen_alive);
        let address = own_code_resolves_to_this_executable as *const () as u64;
        let UserFrame::Mapped { mapping, .. } = table.resolve(id, address) else {
            panic!("own function address not in any mapping");
        };
        let object = table.objects().get(mapping.object);
        assert_eq!(object.path, std::env::current_exe().unwrap());
        assert!(object.readable_path().is_some());
    }

    #[test]
    fn a_reused_pid_is_not_mistaken_for_its_predecessor() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        let mut key = own_key(&table);
        key.start_ns += 3_600_000_000_000; // same PID, started an hour later
        let id = table.observe(key, "gone-worker");
        let info = table.get(id);
        assert!(!info.seen_alive);
        assert_eq!(info.name, "gone-worker");
        assert_eq!(
            table.resolve(id, 0x1234),
            UserFrame::Unmapped { address: 0x1234 }
        );
    }

    #[test]
    fn idle_processes_and_their_files_are_forgotten() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        let key = own_key(&table);
        let id = table.observe(key, "me");
        let objects = table.objects().len();
        assert!(objects > 0);
        // Seen in window 0, then idle through windows 1 and 2: with
        // idle_windows = 2 it goes when window 2 ends.
        assert!(table.end_window(2).is_empty());
        assert!(table.end_window(2).is_empty());
        assert_eq!(table.len(), 1);
        let forgotten = table.end_window(2);
        assert_eq!(table.len(), 0);
        assert_eq!(
            forgotten.len(),
            objects,
            "every object only this process used"
        );
        assert!(table.objects().is_empty());
        // Seen again: a new id, read afresh.
        assert_ne!(table.observe(key, "me"), id);
        assert_eq!(table.objects().len(), objects);
    }

    #[test]
    fn a_process_seen_each_window_is_kept() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        let key = own_key(&table);
        let id = table.observe(key, "me");
        for _ in 0..5 {
            table.end_window(1);
            assert_eq!(table.observe(key, "me"), id);
        }
    }

    #[test]
    fn one_object_per_file_however_often_it_is_seen() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        let key = own_key(&table);
        let first = table.observe(key, "a");
        let objects_before = table.objects().len();
        let again = table.observe(key, "b");
        assert_eq!(first, again);
        assert_eq!(table.objects().len(), objects_before);
    }
}
