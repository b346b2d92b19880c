//! The on-disk mirror of an export queue: one file per payload, named
//! `<created unix ms>-<seq>.bin` so that name order is queue order,
//! written atomically, bounded by bytes.
//!
//! The spool holds what the root-only control API guards (process names,
//! paths, symbols), so the directory is 0700 and owned by the agent, and
//! each file is 0600. Each file starts with a header — magic, payload
//! length, CRC-32 of the payload — checked when a restarted agent reads it
//! back; a file that fails (truncated, overwritten, empty) is moved into
//! `corrupt/` beside the spool, named in the log and counted, never sent.

use std::{
    collections::VecDeque,
    fs,
    io::{self, Write},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::queue::QueuedPayload;

#[derive(Debug, thiserror::Error)]
#[error("cannot use the spool directory {dir}: {source}; check spool.dir and its permissions")]
pub struct SpoolError {
    pub dir: PathBuf,
    #[source]
    pub source: io::Error,
}

/// First bytes of every spool file (format version 1).
const MAGIC: &[u8; 8] = b"HRTHSPL1";
/// Magic, payload length (u64 LE), CRC-32 of the payload (u32 LE).
const HEADER_LEN: usize = 8 + 8 + 4;
/// Moved-aside corrupt files kept for inspection; older ones are deleted.
pub const MAX_CORRUPT_KEPT: usize = 16;
/// Where corrupt files go, inside the spool directory.
const CORRUPT_DIR: &str = "corrupt";

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Spooled payloads, oldest first: (seq, size).
    files: VecDeque<(u64, u64, PathBuf)>,
    bytes: u64,
    recovered: Vec<QueuedPayload>,
    corrupt: u64,
}

fn file_name(item: &QueuedPayload) -> String {
    let millis = item
        .created
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{millis:016}-{:012}.bin", item.seq)
}

fn parse_name(name: &str) -> Option<(SystemTime, u64)> {
    let (millis, seq) = name.strip_suffix(".bin")?.split_once('-')?;
    let created = UNIX_EPOCH + Duration::from_millis(millis.parse().ok()?);
    Some((created, seq.parse().ok()?))
}

/// A payload framed with its header.
fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a spool file, or why the file is not one.
fn decode(mut file: Vec<u8>) -> Result<Vec<u8>, &'static str> {
    if file.len() < HEADER_LEN {
        return Err("shorter than its header");
    }
    if &file[..8] != MAGIC {
        return Err("no spool header");
    }
    let len = u64::from_le_bytes(file[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(file[16..20].try_into().expect("4 bytes"));
    if len != (file.len() - HEADER_LEN) as u64 {
        return Err("length does not match its header (truncated or extended)");
    }
    if crc32fast::hash(&file[HEADER_LEN..]) != crc {
        return Err("checksum mismatch");
    }
    file.drain(..HEADER_LEN);
    Ok(file)
}

/// Creates `dir` 0700, or checks an existing one is a directory the agent
/// owns (never a link) and narrows its mode to 0700.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(
            "it exists and is not a directory (Hearth does not spool through links)",
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(io::Error::other(format!(
            "it belongs to uid {}, not to the agent (uid {euid}); spooled profiles must \
             not be readable by another user",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        tracing::info!(dir = %dir.display(), "spool directory narrowed to mode 0700");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl Spool {
    /// Opens (creating) `dir` and reads back what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let error = |source| SpoolError {
            dir: dir.to_owned(),
            source,
        };
        prepare_dir(dir).map_err(error)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(error)? {
            let entry = entry.map_err(error)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path()); // a write cut short by a crash
                continue;
            }
            if let Some((created, seq)) = parse_name(&name) {
                found.push((created, seq, entry.path()));
            }
        }
        found.sort();
        let mut spool = Self {
            dir: dir.to_owned(),
            max_bytes,
            files: VecDeque::new(),
            bytes: 0,
            recovered: Vec::new(),
            corrupt: 0,
        };
        for (created, seq, path) in found {
            match spool.read_back(&path) {
                Ok(payload) => {
                    let size = payload.len() as u64;
                    spool.bytes += size;
                    spool.files.push_back((seq, size, path));
                    spool.recovered.push(QueuedPayload {
                        seq,
                        created,
                        payload: payload.into(),
                    });
                }
                Err(why) => spool.set_aside(&path, &why),
            }
        }
        if !spool.recovered.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                payloads = spool.recovered.len(),
                bytes = spool.bytes,
                "recovered spooled profiles from a previous run"
            );
        }
        Ok(spool)
    }

    /// One spool file's payload, bounded by the spool's own size before
    /// anything is read, or why it cannot be used.
    fn read_back(&self, path: &Path) -> Result<Vec<u8>, String> {
        let meta = fs::symlink_metadata(path).map_err(|err| err.to_string())?;
        if !meta.file_type().is_file() {
            return Err("not a regular file".into());
        }
        if meta.len() > self.max_bytes.saturating_add(HEADER_LEN as u64) {
            return Err(format!(
                "{} bytes, more than spool.max_bytes ({})",
                meta.len(),
                self.max_bytes
            ));
        }
        let bytes = fs::read(path).map_err(|err| err.to_string())?;
        decode(bytes).map_err(str::to_owned)
    }

    /// Moves a file that is not a valid payload into `corrupt/`, logs and
    /// counts it; keeps only the newest [`MAX_CORRUPT_KEPT`] there.
    fn set_aside(&mut self, path: &Path, why: &str) {
        self.corrupt += 1;
        let aside = self.dir.join(CORRUPT_DIR);
        let moved = fs::DirBuilder::new()
            .mode(0o700)
            .create(&aside)
            .or_else(|err| match err.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(err),
            })
            .and_then(|()| fs::rename(path, aside.join(path.file_name().unwrap_or_default())));
        match moved {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                why,
                moved_to = %aside.display(),
                "corrupt spool file set aside, not sent"
            ),
            Err(err) => {
                let _ = fs::remove_file(path);
                tracing::warn!(path = %path.display(), why, %err, "corrupt spool file deleted, not sent");
            }
        }
        let mut kept: Vec<PathBuf> = fs::read_dir(&aside)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        kept.sort();
        let excess = kept.len().saturating_sub(MAX_CORRUPT_KEPT);
        for old in &kept[..excess] {
            let _ = fs::remove_file(old);
        }
    }

    /// What a previous run left, oldest first (once).
    pub fn take_recovered(&mut self) -> Vec<QueuedPayload> {
        std::mem::take(&mut self.recovered)
    }

    /// How many files a previous run left that failed their check.
    pub fn corrupt_found(&self) -> u64 {
        self.corrupt
    }

    /// Writes `item`; returns how many older payloads were unspooled to stay
    /// under the bound (a failed write counts this one).
    pub fn write(&mut self, item: &QueuedPayload) -> u64 {
        let path = self.dir.join(file_name(item));
        let temp = path.with_extension("tmp");
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(&encode(&item.payload))
                    .and_then(|()| file.sync_data())
            })
            .and_then(|()| fs::rename(&temp, &path));
        if let Err(err) = written {
            tracing::warn!(path = %path.display(), %err, "cannot spool a profile; it stays only in memory");
            let _ = fs::remove_file(&temp);
            return 1;
        }
        let size = item.payload.len() as u64;
        self.bytes += size;
        self.files.push_back((item.seq, size, path));
        let mut unspooled = 0;
        while self.bytes > self.max_bytes && self.files.len() > 1 {
            let (_, size, path) = self.files.pop_front().expect("non-empty");
            let _ = fs::remove_file(&path);
            self.bytes -= size;
            unspooled += 1;
        }
        unspooled
    }

    /// Deletes the file of a payload that was delivered or dropped.
    pub fn remove(&mut self, item: &QueuedPayload) {
        if let Some(index) = self.files.iter().position(|(seq, _, _)| *seq == item.seq) {
            let (_, size, path) = self.files.remove(index).expect("index just found");
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %err, "cannot delete a spool file");
            }
            self.bytes -= size;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::retention::{ExportQueue, QueueLimits};

    fn limits() -> QueueLimits {
        QueueLimits {
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_restarted_queue_gets_back_what_was_not_delivered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            let (mut queue, _) = ExportQueue::new(limits(), Some(spool), now);
            for n in 0..3u8 {
                queue.push(vec![n; 10].into(), now);
            }
            let delivered = queue.front().unwrap().seq;
            queue.remove(delivered);
        } // the agent stops here
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let (mut queue, dropped) = ExportQueue::new(limits(), Some(spool), now);
        assert!(!dropped.any());
        let mut contents = Vec::new();
        while let Some(front) = queue.front().cloned() {
            contents.push(front.payload[0]);
            queue.remove(front.seq);
        }
        assert_eq!(contents, [1, 2]);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "delivered files are deleted"
        );
        // New payloads continue the sequence after the recovered ones.
        queue.push(vec![9].into(), now);
        assert_eq!(queue.front().unwrap().seq, 3);
    }

    #[test]
    fn the_spool_stays_under_its_byte_bound_counting_what_it_unspools() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 25).unwrap();
        let item = |seq| QueuedPayload {
            seq,
            created: SystemTime::now(),
            payload: vec![0; 10].into(),
        };
        assert_eq!(spool.write(&item(0)) + spool.write(&item(1)), 0);
        assert_eq!(spool.write(&item(2)), 1);
        assert_eq!(spool.bytes(), 20);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("0000000000000001-000000000001.tmp"),
            b"half",
        )
        .unwrap();
        fs::write(dir.path().join("unrelated.txt"), b"keep").unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.take_recovered().is_empty());
        assert!(dir.path().join("unrelated.txt").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn files_are_private_and_corrupt_ones_are_set_aside_and_counted() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        let now = SystemTime::now();
        {
            let mut spool = Spool::open(&dir, 1 << 20).unwrap();
            for seq in 0..4 {
                spool.write(&QueuedPayload {
                    seq,
                    created: now,
                    payload: vec![seq as u8; 100].into(),
                });
            }
        }
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let mut names: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for name in &names {
            assert_eq!(fs::metadata(name).unwrap().mode() & 0o777, 0o600);
        }
        // Truncated, overwritten with garbage, emptied; the last stays good.
        let full = fs::read(&names[0]).unwrap();
        fs::write(&names[0], &full[..full.len() - 7]).unwrap();
        fs::write(&names[1], vec![0x5a; full.len()]).unwrap();
        fs::write(&names[2], b"").unwrap();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.corrupt_found(), 3);
        let recovered = spool.take_recovered();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].seq, 3);
        assert_eq!(&recovered[0].payload[..], &[3u8; 100][..]);
        assert_eq!(fs::read_dir(dir.join(CORRUPT_DIR)).unwrap().count(), 3);
    }

    #[test]
    fn a_spool_directory_of_another_kind_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("spool");
        fs::write(&file, b"not a directory").unwrap();
        let err = Spool::open(&file, 1 << 20).err().unwrap();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(parent.path(), &link).unwrap();
        let err = Spool::open(&link, 1 << 20).err().unwrap();
        assert!(err.to_string().contains("links"), "{err}");
    }
}
