//! The on-disk mirror of an export queue: one file per payload, named
//! `<created unix ms>-<seq>.bin` so that name order is queue order,
//! written atomically, bounded by bytes.

use std::{
    collections::VecDeque,
    fs,
    io::{self, Write},
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

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Spooled payloads, oldest first: (seq, size).
    files: VecDeque<(u64, u64, PathBuf)>,
    bytes: u64,
    recovered: Vec<QueuedPayload>,
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

impl Spool {
    /// Opens (creating) `dir` and reads back what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let error = |source| SpoolError {
            dir: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(error)?;
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
        };
        for (created, seq, path) in found {
            match fs::read(&path) {
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
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "unreadable spool file skipped")
                }
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

    /// What a previous run left, oldest first (once).
    pub fn take_recovered(&mut self) -> Vec<QueuedPayload> {
        std::mem::take(&mut self.recovered)
    }

    /// Writes `item`; returns how many older payloads were unspooled to stay
    /// under the bound (a failed write counts this one).
    pub fn write(&mut self, item: &QueuedPayload) -> u64 {
        let path = self.dir.join(file_name(item));
        let temp = path.with_extension("tmp");
        let written = fs::File::create(&temp)
            .and_then(|mut file| {
                file.write_all(&item.payload)
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
    use crate::retention::{ExportQueue, QueueLimits};

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
}
