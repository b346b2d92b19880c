//! Executable files mapped by profiled processes, one entry per file
//! identity (device + inode), shared by every process that maps it.
//!
//! Each object is held open while it is tracked, so a process that exits,
//! or a binary that is replaced or deleted, can still be symbolized.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use rustc_hash::FxHashMap;

/// An object in its [`ObjectTable`]; never reused for another file.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectId(pub u32);

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Identity {
    File {
        device: (i32, i32),
        inode: u64,
    },
    /// Kernel-provided code such as `[vdso]`, one per name.
    Pseudo(String),
}

pub struct ObjectInfo {
    /// The path as the process that mapped it named it.
    pub path: PathBuf,
    /// Open handle, when one could be taken within the open-file budget.
    file: Option<File>,
    /// Where to read it from when no handle is held (valid while the
    /// process that mapped it lives).
    fallback_path: PathBuf,
    build_id: OnceLock<Option<Vec<u8>>>,
    pseudo: bool,
}

impl ObjectInfo {
    /// File name without directories, for `module+0xoffset` frames.
    pub fn short_name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        )
    }

    /// A path blazesym can open now, or None for pseudo objects.
    pub fn readable_path(&self) -> Option<PathBuf> {
        if self.pseudo {
            return None;
        }
        Some(match &self.file {
            Some(file) => PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            None => self.fallback_path.clone(),
        })
    }

    /// GNU build id, read once on first use.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id
            .get_or_init(|| {
                let path = self.readable_path()?;
                blazesym::helper::read_elf_build_id(&path)
                    .ok()
                    .flatten()
                    .map(|id| id.into_owned())
            })
            .as_deref()
    }

    pub fn is_pseudo(&self) -> bool {
        self.pseudo
    }
}

pub struct ObjectTable {
    objects: FxHashMap<ObjectId, (Identity, ObjectInfo)>,
    by_identity: FxHashMap<Identity, ObjectId>,
    open_files: usize,
    max_open_files: usize,
    next_id: u32,
}

impl ObjectTable {
    pub fn new(max_open_files: usize) -> Self {
        Self {
            objects: FxHashMap::default(),
            by_identity: FxHashMap::default(),
            open_files: 0,
            max_open_files,
            next_id: 0,
        }
    }

    /// The object `id`, which must still be in the table (ids in live
    /// processes' mappings always are).
    pub fn get(&self, id: ObjectId) -> &ObjectInfo {
        &self.objects[&id].1
    }

    /// Keeps the objects `keep` says yes to; returns the others' ids and
    /// the paths they were read through, after closing them.
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(ObjectId) -> bool,
    ) -> Vec<(ObjectId, Option<PathBuf>)> {
        let gone: Vec<ObjectId> = self
            .objects
            .keys()
            .copied()
            .filter(|&id| !keep(id))
            .collect();
        gone.into_iter()
            .filter_map(|id| {
                let (identity, info) = self.objects.remove(&id)?;
                self.by_identity.remove(&identity);
                self.open_files -= usize::from(info.file.is_some());
                Some((id, info.readable_path()))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn open_files(&self) -> usize {
        self.open_files
    }

    /// The object for a file mapping of process `tgid`, opening it on first sight.
    pub fn file(
        &mut self,
        tgid: u32,
        mapping: &procfs::process::MemoryMap,
        path: &Path,
    ) -> ObjectId {
        let identity = Identity::File {
            device: mapping.dev,
            inode: mapping.inode,
        };
        if let Some(&id) = self.by_identity.get(&identity) {
            return id;
        }
        let (start, end) = mapping.address;
        let visible_path = path
            .to_str()
            .and_then(|p| p.strip_suffix(" (deleted)"))
            .map_or_else(|| path.to_owned(), PathBuf::from);
        let fallback_path = Path::new(&format!("/proc/{tgid}/root"))
            .join(visible_path.strip_prefix("/").unwrap_or(&visible_path));
        let file = if self.open_files < self.max_open_files {
            // map_files names exactly the mapped file, even if deleted or
            // replaced since; it needs CAP_SYS_ADMIN, so fall back to the path
            // inside the process's mount namespace.
            File::open(format!("/proc/{tgid}/map_files/{start:x}-{end:x}"))
                .or_else(|_| File::open(&fallback_path))
                .ok()
        } else {
            None
        };
        self.open_files += usize::from(file.is_some());
        self.insert(
            identity,
            ObjectInfo {
                path: visible_path,
                file,
                fallback_path,
                build_id: OnceLock::new(),
                pseudo: false,
            },
        )
    }

    /// The object for kernel-provided code such as `[vdso]`.
    pub fn pseudo(&mut self, name: &str) -> ObjectId {
        let identity = Identity::Pseudo(name.to_owned());
        if let Some(&id) = self.by_identity.get(&identity) {
            return id;
        }
        // The vDSO image is the same in every native process of this
        // kernel, so the agent's own copy names everyone's.
        let file = (name == "[vdso]").then(own_vdso_image).flatten();
        self.insert(
            identity,
            ObjectInfo {
                path: PathBuf::from(name),
                pseudo: file.is_none(),
                file,
                fallback_path: PathBuf::new(),
                build_id: OnceLock::new(),
            },
        )
    }

    fn insert(&mut self, identity: Identity, info: ObjectInfo) -> ObjectId {
        let id = ObjectId(self.next_id);
        self.next_id += 1;
        self.by_identity.insert(identity.clone(), id);
        self.objects.insert(id, (identity, info));
        id
    }
}

/// This process's vDSO, copied into an anonymous file blazesym can read.
fn own_vdso_image() -> Option<File> {
    let maps = procfs::process::Process::myself().ok()?.maps().ok()?;
    let vdso = maps
        .into_iter()
        .find(|m| m.pathname == procfs::process::MMapPath::Vdso)?;
    let (start, end) = vdso.address;
    // SAFETY: the kernel maps the vDSO readable for the life of the process.
    let image = unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    let mut file = tempfile::tempfile().ok()?;
    std::io::Write::write_all(&mut file, image).ok()?;
    Some(file)
}
