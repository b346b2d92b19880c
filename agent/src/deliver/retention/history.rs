//! Recent profiles kept in memory, for on-call queries ("the last ten
//! minutes of this pod"), bounded by total bytes and by age.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime},
};

use bytes::Bytes;

/// One resource's profile over one export window.
#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub window_start: SystemTime,
    pub window_end: SystemTime,
    /// The resource's labels (Pyroscope style: `service_name`, `process_pid`, …).
    pub labels: Vec<(String, String)>,
    pub pprof_gz: Bytes,
}

pub struct History {
    entries: VecDeque<HistoryEntry>,
    bytes: u64,
    max_bytes: u64,
    max_age: Duration,
    dropped: u64,
}

impl History {
    pub fn new(max_bytes: u64, max_age: Duration) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_age,
            dropped: 0,
        }
    }

    /// Adds an entry, dropping the oldest beyond the bounds.
    pub fn push(&mut self, entry: HistoryEntry, now: SystemTime) {
        self.bytes += entry.pprof_gz.len() as u64;
        self.entries.push_back(entry);
        self.expire(now);
    }

    fn expire(&mut self, now: SystemTime) {
        while let Some(front) = self.entries.front() {
            let age = now.duration_since(front.window_end).unwrap_or_default();
            if self.bytes <= self.max_bytes && age <= self.max_age {
                break;
            }
            self.bytes -= front.pprof_gz.len() as u64;
            self.entries.pop_front();
            self.dropped += 1;
        }
    }

    /// Entries whose window ended after `since` and that `keep` accepts, oldest first.
    pub fn query(
        &self,
        since: SystemTime,
        keep: impl Fn(&HistoryEntry) -> bool,
    ) -> Vec<&HistoryEntry> {
        self.entries
            .iter()
            .filter(|e| e.window_end > since && keep(e))
            .collect()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries dropped by the bounds so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(end_secs: u64, size: usize, pid: &str) -> HistoryEntry {
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(end_secs);
        HistoryEntry {
            window_start: end - Duration::from_secs(10),
            window_end: end,
            labels: vec![("process_pid".into(), pid.into())],
            pprof_gz: vec![0; size].into(),
        }
    }

    #[test]
    fn bounded_by_bytes_and_age_oldest_first() {
        let mut history = History::new(250, Duration::from_secs(60));
        let now = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        history.push(entry(10, 100, "1"), now(10));
        history.push(entry(20, 100, "2"), now(20));
        history.push(entry(30, 100, "3"), now(30));
        assert_eq!(
            (history.len(), history.bytes(), history.dropped()),
            (2, 200, 1)
        );
        history.push(entry(85, 10, "4"), now(85));
        // The window that ended at 20 is now 65 s old.
        assert_eq!(history.len(), 2);
        assert_eq!(history.dropped(), 2);
    }

    #[test]
    fn queries_filter_by_time_and_labels() {
        let mut history = History::new(1 << 20, Duration::from_secs(3600));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        for (end, pid) in [(10, "1"), (20, "2"), (30, "1")] {
            history.push(entry(end, 1, pid), now);
        }
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(15);
        let pid_one =
            |e: &HistoryEntry| e.labels.iter().any(|(k, v)| k == "process_pid" && v == "1");
        let found = history.query(since, pid_one);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].window_end,
            SystemTime::UNIX_EPOCH + Duration::from_secs(30)
        );
    }
}
