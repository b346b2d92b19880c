//! Symbolization: names user addresses from ELF symbols and DWARF
//! (file:line, inlined functions as frames of their own, Rust and C++
//! demangled) and kernel addresses from kallsyms, with blazesym.
//!
//! Results are cached by object identity and file offset, so an address is
//! symbolized once however many stacks and processes share it. The cache
//! is bounded and keeps two generations: what is used survives, what was
//! not used for a generation is dropped. Addresses that cannot be named
//! keep a frame: `module+0xoffset`, or `[unknown]`.

mod cache;
pub mod elfcheck;

use cache::Generations;
use elfcheck::Verdict;

use std::{path::PathBuf, sync::Arc};

use blazesym::symbolize::{
    self as blaze, Input, Symbolized,
    source::{Elf, Kernel, Source},
};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::enrich::process::{ObjectId, ObjectTable};

/// One function frame of a symbolized address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub function: Arc<str>,
    pub file: Option<Arc<str>>,
    pub line: u32,
}

/// Cache effectiveness, for logs and self-metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Addresses answered from the cache.
    pub hits: u64,
    /// Addresses that had to be symbolized.
    pub misses: u64,
    /// Objects whose symbols could not be read at all (corrupt or unreadable).
    pub unreadable_objects: u64,
    /// Objects that would have made blazesym allocate past
    /// `symbolize.max_section_bytes` (symbolized from ELF symbols alone, or
    /// not at all).
    pub hostile_objects: u64,
    /// Symbolizations thrown away because the object file shrank while
    /// blazesym read it.
    pub shrunk_objects: u64,
}

/// Frames of one address, outermost function first, inlined callees after.
type Frames = Box<[Frame]>;

pub struct Symbolizer {
    blaze: blaze::Symbolizer,
    blaze_since: std::time::Instant,
    /// Read DWARF (and separate debug files) as well as ELF symbols.
    debug_info: bool,
    /// Most bytes one compressed section may inflate to.
    max_section_bytes: u64,
    /// What [`elfcheck`] allowed of each object seen.
    verdicts: FxHashMap<ObjectId, Verdict>,
    strings: FxHashSet<Arc<str>>,
    user: Generations<(ObjectId, u64), Frames>,
    kernel: Generations<u64, Frames>,
    unknown: Frames,
    stats: SymbolizerStats,
}

/// Addresses cached when nothing else is said (about 160 bytes each).
pub const DEFAULT_CACHE_ENTRIES: usize = 65_536;
/// Most bytes one compressed ELF section may inflate to when nothing else
/// is said (`symbolize.max_section_bytes`).
pub const DEFAULT_MAX_SECTION_BYTES: u64 = 256 << 20;

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_ENTRIES, true)
    }
}

/// blazesym as the agent sets it up (public for the fuzz targets).
pub fn new_blaze() -> blaze::Symbolizer {
    blaze::Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        // Objects are identified by device and inode and read through held
        // file descriptors, so re-checking paths buys nothing; and procfs
        // files such as /proc/kallsyms look new on every stat, which made
        // blazesym re-read all kernel symbols again and again.
        .enable_auto_reload(false)
        .build()
}

/// How long kernel symbols (and blazesym's parsed files) are kept before
/// being read afresh, so modules loaded since get named.
pub const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30 * 60);

impl Symbolizer {
    /// A symbolizer caching at most `cache_entries` addresses (three
    /// quarters for user code, a quarter for the kernel), reading DWARF
    /// when `debug_info` is set.
    pub fn new(cache_entries: usize, debug_info: bool) -> Self {
        let blaze = new_blaze();
        let mut strings = FxHashSet::default();
        let unknown = Box::new([Frame {
            function: intern(&mut strings, "[unknown]"),
            file: None,
            line: 0,
        }]);
        Self {
            blaze,
            blaze_since: std::time::Instant::now(),
            debug_info,
            max_section_bytes: DEFAULT_MAX_SECTION_BYTES,
            verdicts: FxHashMap::default(),
            strings,
            user: Generations::new(cache_entries / 4 * 3),
            kernel: Generations::new(cache_entries / 4),
            unknown,
            stats: SymbolizerStats::default(),
        }
    }

    /// Sets the most bytes one compressed section may inflate to.
    pub fn with_max_section_bytes(mut self, bytes: u64) -> Self {
        self.max_section_bytes = bytes;
        self
    }

    pub fn stats(&self) -> SymbolizerStats {
        self.stats
    }

    /// Addresses cached.
    pub fn cached(&self) -> usize {
        self.user.len() + self.kernel.len()
    }

    /// Drops what was cached for objects that are no longer tracked,
    /// including blazesym's parsed copy of each (its read path, a
    /// `/proc/self/fd/N`, may name another file once the fd is reused).
    pub fn forget(&mut self, gone: &[(ObjectId, Option<PathBuf>)]) {
        if gone.is_empty() {
            return;
        }
        let ids: FxHashSet<ObjectId> = gone.iter().map(|(id, _)| *id).collect();
        self.user.retain(|(object, _)| !ids.contains(object));
        self.verdicts.retain(|object, _| !ids.contains(object));
        for path in gone.iter().filter_map(|(_, path)| path.as_ref()) {
            let _ = self.blaze.evict(&blaze::evict::Elf::new(path).into());
        }
    }

    /// Lets go of names no cached address uses any more, and every
    /// [`REFRESH_INTERVAL`] of what blazesym has parsed (kernel symbols
    /// included), so that it is read afresh.
    pub fn trim(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        if self.blaze_since.elapsed() >= REFRESH_INTERVAL {
            self.blaze = new_blaze();
            self.blaze_since = std::time::Instant::now();
            self.kernel = Generations::new(self.kernel.capacity());
        }
    }

    /// Symbolizes every (object, file offset) pair not cached yet, one batch per object.
    pub fn prepare_user(
        &mut self,
        objects: &ObjectTable,
        wanted: impl IntoIterator<Item = (ObjectId, u64)>,
    ) {
        let mut missing: FxHashMap<ObjectId, Vec<u64>> = FxHashMap::default();
        for (object, offset) in wanted {
            if self.user.touch(&(object, offset)) {
                self.stats.hits += 1;
            } else {
                self.stats.misses += 1;
                missing.entry(object).or_default().push(offset);
            }
        }
        for (object, mut offsets) in missing {
            offsets.sort_unstable();
            offsets.dedup();
            let info = objects.get(object);
            let mut results = match info.readable_path() {
                Some(path) => self.symbolize_object(object, &info.path, &path, &offsets),
                None => None,
            };
            let module = info.short_name();
            for (i, offset) in offsets.iter().enumerate() {
                let named = results.as_mut().and_then(|r| r[i].take());
                let frames = named.unwrap_or_else(|| {
                    let name = format!("{module}+0x{offset:x}");
                    Box::new([Frame {
                        function: intern(&mut self.strings, &name),
                        file: None,
                        line: 0,
                    }])
                });
                self.user.insert((object, *offset), frames);
            }
        }
    }

    /// blazesym's answer for `offsets` of one object, read through `path`,
    /// if the object passes [`elfcheck`] and did not shrink meanwhile.
    fn symbolize_object(
        &mut self,
        object: ObjectId,
        shown: &std::path::Path,
        path: &std::path::Path,
        offsets: &[u64],
    ) -> Option<Vec<Option<Frames>>> {
        let verdict = self.verdicts.entry(object).or_insert_with(|| {
            let verdict = elfcheck::check(path, self.debug_info, self.max_section_bytes);
            match &verdict {
                Verdict::Full => {}
                Verdict::SymbolsOnly(why) => {
                    self.stats.hostile_objects += 1;
                    tracing::warn!(object = %shown.display(), why, "object file would inflate past its limit; symbolized from ELF symbols only");
                }
                Verdict::Refused(why) => {
                    self.stats.hostile_objects += 1;
                    tracing::warn!(object = %shown.display(), why, "object file would inflate past its limit; its frames stay as module+offset");
                }
            }
            verdict
        });
        let debug_syms = match verdict {
            Verdict::Full => self.debug_info,
            Verdict::SymbolsOnly(_) => false,
            Verdict::Refused(_) => return None,
        };
        let mut elf = Elf::new(path);
        elf.debug_syms = debug_syms;
        let source = Source::Elf(elf);
        let blaze = &self.blaze;
        let (result, shrank) =
            crate::fault::watch(|| blaze.symbolize(&source, Input::FileOffset(offsets)));
        if shrank {
            drop(result);
            self.stats.shrunk_objects += 1;
            let _ = self.blaze.evict(&blaze::evict::Elf::new(path).into());
            tracing::warn!(
                object = %shown.display(),
                "object file shrank while it was read; its frames stay as module+offset"
            );
            return None;
        }
        match result {
            Ok(results) => Some(
                results
                    .iter()
                    .map(|r| frames_of(&mut self.strings, r))
                    .collect(),
            ),
            Err(err) => {
                self.stats.unreadable_objects += 1;
                tracing::warn!(
                    object = %shown.display(),
                    %err,
                    "cannot read symbols (corrupt or unreadable ELF); its frames stay as module+offset"
                );
                None
            }
        }
    }

    /// Symbolizes every kernel address not cached yet, in one batch.
    pub fn prepare_kernel(&mut self, wanted: impl IntoIterator<Item = u64>) {
        let mut missing = Vec::new();
        for address in wanted {
            if self.kernel.touch(&address) {
                self.stats.hits += 1;
            } else {
                self.stats.misses += 1;
                missing.push(address);
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        let source = Source::Kernel(Kernel {
            debug_syms: self.debug_info,
            ..Kernel::default()
        });
        let results = match self.blaze.symbolize(&source, Input::AbsAddr(&missing)) {
            Ok(results) => Some(results),
            Err(err) => {
                tracing::warn!(%err, "cannot read kernel symbols; kernel frames stay [unknown]");
                None
            }
        };
        for (i, address) in missing.iter().enumerate() {
            let frames = results
                .as_ref()
                .and_then(|r| frames_of(&mut self.strings, &r[i]))
                .unwrap_or_else(|| self.unknown.clone());
            self.kernel.insert(*address, frames);
        }
    }

    /// Frames of a user address; `[unknown]` if it was never prepared.
    pub fn user(&self, object: ObjectId, offset: u64) -> &[Frame] {
        self.user.get(&(object, offset)).unwrap_or(&self.unknown)
    }

    /// Frames of a kernel address; `[unknown]` if it was never prepared.
    pub fn kernel(&self, address: u64) -> &[Frame] {
        self.kernel.get(&address).unwrap_or(&self.unknown)
    }

    /// The frame for an address outside every known mapping.
    pub fn unknown(&self) -> &[Frame] {
        &self.unknown
    }
}

fn intern(strings: &mut FxHashSet<Arc<str>>, text: &str) -> Arc<str> {
    if let Some(existing) = strings.get(text) {
        return existing.clone();
    }
    let shared: Arc<str> = Arc::from(text);
    strings.insert(shared.clone());
    shared
}

/// The function, then each inlined callee, each with its own line.
fn frames_of(strings: &mut FxHashSet<Arc<str>>, symbolized: &Symbolized<'_>) -> Option<Frames> {
    let Symbolized::Sym(sym) = symbolized else {
        return None;
    };
    let mut frame = |name: &str, code: Option<&blaze::CodeInfo<'_>>| Frame {
        function: intern(strings, name),
        file: code.map(|c| intern(strings, &c.to_path().to_string_lossy())),
        line: code.and_then(|c| c.line).unwrap_or(0),
    };
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    frames.push(frame(&sym.name, sym.code_info.as_deref()));
    for inlined in &sym.inlined {
        frames.push(frame(&inlined.name, inlined.code_info.as_ref()));
    }
    Some(frames.into_boxed_slice())
}
