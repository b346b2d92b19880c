//! One exporter's queue of encoded payloads, oldest first, bounded by
//! total bytes and by age. With a spool, each payload is also on disk
//! until it is delivered or dropped.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime},
};

use bytes::Bytes;

use super::spool::Spool;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// A payload waiting for delivery.
#[derive(Clone, Debug)]
pub struct QueuedPayload {
    pub seq: u64,
    pub created: SystemTime,
    pub payload: Bytes,
}

/// What a bound, or the backend, made the queue give up; each is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Oldest payloads dropped to stay under `max_bytes`.
    pub over_bytes: u64,
    /// Payloads older than `max_age`.
    pub too_old: u64,
    /// Spool files that failed their checksum when a restarted agent read
    /// them back (moved aside, never sent).
    pub corrupt: u64,
    /// Not a loss: payloads whose spool copy was deleted to keep the spool
    /// under its bound (still queued in memory and delivered, but no longer
    /// safe across a restart). Counted apart from the drops.
    pub unspooled: u64,
}

impl Dropped {
    /// Whether anything was really lost.
    pub fn any(&self) -> bool {
        self.over_bytes + self.too_old + self.corrupt > 0
    }
}

pub struct ExportQueue {
    items: VecDeque<QueuedPayload>,
    bytes: u64,
    limits: QueueLimits,
    spool: Option<Spool>,
    next_seq: u64,
}

impl ExportQueue {
    /// An empty queue, or one holding what `spool` kept from a previous run
    /// (within the bounds; what falls outside is reported as dropped).
    pub fn new(limits: QueueLimits, spool: Option<Spool>, now: SystemTime) -> (Self, Dropped) {
        let mut queue = Self {
            items: VecDeque::new(),
            bytes: 0,
            limits,
            spool: None,
            next_seq: 0,
        };
        let mut dropped = Dropped::default();
        if let Some(mut spool) = spool {
            let recovered = spool.take_recovered();
            let corrupt = spool.corrupt_found();
            queue.next_seq = recovered.iter().map(|item| item.seq + 1).max().unwrap_or(0);
            queue.spool = Some(spool);
            for item in recovered {
                queue.bytes += item.payload.len() as u64;
                queue.items.push_back(item);
            }
            dropped = queue.enforce(now);
            dropped.corrupt = corrupt;
        }
        (queue, dropped)
    }

    /// Appends a payload, then drops the oldest while over a bound.
    pub fn push(&mut self, payload: Bytes, now: SystemTime) -> Dropped {
        let item = QueuedPayload {
            seq: self.next_seq,
            created: now,
            payload,
        };
        self.next_seq += 1;
        let mut dropped = Dropped::default();
        if let Some(spool) = &mut self.spool {
            dropped.unspooled += spool.write(&item);
        }
        self.bytes += item.payload.len() as u64;
        self.items.push_back(item);
        let enforced = self.enforce(now);
        Dropped {
            unspooled: dropped.unspooled,
            ..enforced
        }
    }

    /// Drops what is too old or over the byte bound, oldest first.
    pub fn enforce(&mut self, now: SystemTime) -> Dropped {
        let mut dropped = Dropped::default();
        while let Some(front) = self.items.front() {
            let age = now.duration_since(front.created).unwrap_or_default();
            if age > self.limits.max_age {
                dropped.too_old += 1;
            } else if self.bytes > self.limits.max_bytes {
                dropped.over_bytes += 1;
            } else {
                break;
            }
            let seq = front.seq;
            self.remove(seq);
        }
        dropped
    }

    /// The oldest payload, which is the next to send.
    pub fn front(&self) -> Option<&QueuedPayload> {
        self.items.front()
    }

    /// Removes payload `seq` (delivered, or rejected by the backend).
    pub fn remove(&mut self, seq: u64) {
        if let Some(index) = self.items.iter().position(|item| item.seq == seq) {
            let item = self.items.remove(index).expect("index just found");
            self.bytes -= item.payload.len() as u64;
            if let Some(spool) = &mut self.spool {
                spool.remove(&item);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Age of the oldest payload.
    pub fn oldest_age(&self, now: SystemTime) -> Duration {
        self.items
            .front()
            .map(|item| now.duration_since(item.created).unwrap_or_default())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(seconds: u64) -> SystemTime {
        T0 + Duration::from_secs(seconds)
    }

    fn queue(max_bytes: u64, max_age_secs: u64) -> ExportQueue {
        let limits = QueueLimits {
            max_bytes,
            max_age: Duration::from_secs(max_age_secs),
        };
        ExportQueue::new(limits, None, T0).0
    }

    fn payload(n: usize) -> Bytes {
        Bytes::from(vec![7; n])
    }

    #[test]
    fn keeps_order_and_drops_the_oldest_over_the_byte_bound() {
        let mut q = queue(250, 3600);
        assert!(!q.push(payload(100), at(0)).any());
        assert!(!q.push(payload(100), at(1)).any());
        assert_eq!(q.bytes(), 200);
        // 300 bytes > 250: the oldest (seq 0) goes.
        assert_eq!(q.push(payload(100), at(2)).over_bytes, 1);
        assert_eq!(q.len(), 2);
        assert_eq!(q.front().unwrap().seq, 1);
        let dropped = q.push(payload(100), at(3));
        assert_eq!(dropped.over_bytes, 1);
        assert_eq!(q.front().unwrap().seq, 2);
        assert_eq!(q.bytes(), 200);
    }

    #[test]
    fn drops_what_is_older_than_the_age_bound() {
        let mut q = queue(1 << 20, 60);
        q.push(payload(10), at(0));
        q.push(payload(10), at(30));
        let dropped = q.enforce(at(75));
        assert_eq!(dropped.too_old, 1);
        assert_eq!(q.len(), 1);
        assert_eq!(q.oldest_age(at(75)), Duration::from_secs(45));
    }

    #[test]
    fn removing_delivered_payloads_frees_their_bytes() {
        let mut q = queue(1 << 20, 60);
        q.push(payload(10), at(0));
        q.push(payload(20), at(1));
        let first = q.front().unwrap().seq;
        q.remove(first);
        assert_eq!((q.len(), q.bytes()), (1, 20));
        q.remove(999); // unknown: nothing happens
        assert_eq!(q.len(), 1);
    }
}
