//! Aggregation: every sample is interned by its raw identity (process
//! image, thread name, kernel and user addresses) and counted. Only a stack
//! never seen before costs more than one hash lookup: its user addresses are
//! resolved to files and offsets then, while the process is still alive.
//! Symbolization later works on unique stacks, never per sample.

use rustc_hash::FxHashMap;

use crate::{
    collect::probes::RawSample,
    enrich::process::{ProcessId, ProcessKey, ProcessTable, UserFrame},
};

/// Index of a thread name in a [`StackTable`].
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ThreadNameId(pub u32);

/// A label value of an [`EventTag`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagValue {
    Text(String),
    Num(i64),
}

/// What an event adds to its stack beyond the frames: labels (peer
/// address and port...) and possibly a frame below the leaf (a drop reason).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventTag {
    pub labels: Vec<(&'static str, TagValue)>,
    pub leaf: Option<String>,
}

/// A unique stack and how often it was sampled.
#[derive(Debug)]
pub struct Stack {
    pub process: ProcessId,
    pub thread: ThreadNameId,
    /// Kernel frames, innermost first; callers adjusted to their call site.
    pub kernel: Box<[u64]>,
    /// User frames, innermost first; callers adjusted to their call site.
    pub user: Box<[UserFrame]>,
    /// Samples, or the events' summed value (bytes, nanoseconds...).
    pub count: u64,
    pub tag: Option<Box<EventTag>>,
}

#[derive(Default)]
pub struct StackTable {
    index: FxHashMap<Box<[u64]>, u32>,
    stacks: Vec<Stack>,
    thread_names: Vec<String>,
    thread_index: FxHashMap<[u8; 16], ThreadNameId>,
    key: Vec<u64>,
    samples: u64,
    first_ns: Option<u64>,
    last_ns: u64,
}

/// A caller's frame holds its return address; the call is the byte before.
fn call_site(index: usize, address: u64) -> u64 {
    if index == 0 {
        address
    } else {
        address.saturating_sub(1)
    }
}

impl StackTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one sample.
    pub fn add(&mut self, sample: &RawSample<'_>, processes: &mut ProcessTable) {
        self.add_event(sample, processes, 1, &[], EventTag::default);
    }

    /// Adds `value` to the stack of `sample` tagged `tag_key`; `tag` makes
    /// the tag the key stands for, once, when the pair is new.
    pub fn add_event(
        &mut self,
        sample: &RawSample<'_>,
        processes: &mut ProcessTable,
        value: u64,
        tag_key: &[u64],
        tag: impl FnOnce() -> EventTag,
    ) {
        self.samples += 1;
        let header = &sample.header;
        self.first_ns.get_or_insert(header.timestamp_ns);
        self.last_ns = self.last_ns.max(header.timestamp_ns);

        let key = &mut self.key;
        key.clear();
        key.push(u64::from(header.tgid) << 32 | u64::from(header.exec_id));
        key.push(header.process_start_ns);
        key.push(u64::from_ne_bytes(header.comm[..8].try_into().unwrap()));
        key.push(u64::from_ne_bytes(header.comm[8..].try_into().unwrap()));
        key.push(sample.kernel_stack().len() as u64);
        key.extend(sample.kernel_stack());
        key.extend(sample.user_stack());
        key.extend_from_slice(tag_key);
        if let Some(&index) = self.index.get(key.as_slice()) {
            self.stacks[index as usize].count += value;
            return;
        }
        let tag = (!tag_key.is_empty()).then(|| Box::new(tag()));
        self.insert_new(sample, processes, value, tag);
    }

    #[cold]
    fn insert_new(
        &mut self,
        sample: &RawSample<'_>,
        processes: &mut ProcessTable,
        value: u64,
        tag: Option<Box<EventTag>>,
    ) {
        let header = &sample.header;
        let thread_name = sample.comm_str();
        let process = processes.observe(
            ProcessKey {
                tgid: header.tgid,
                exec_id: header.exec_id,
                start_ns: header.process_start_ns,
            },
            &thread_name,
        );
        let thread = match self.thread_index.get(&header.comm) {
            Some(&id) => id,
            None => {
                let id = ThreadNameId(self.thread_names.len() as u32);
                self.thread_names.push(thread_name.into_owned());
                self.thread_index.insert(header.comm, id);
                id
            }
        };
        let kernel = sample
            .kernel_stack()
            .enumerate()
            .map(|(i, address)| call_site(i, address))
            .collect();
        let user = sample
            .user_stack()
            .enumerate()
            .map(|(i, address)| processes.resolve(process, call_site(i, address)))
            .collect();
        let index = self.stacks.len() as u32;
        self.stacks.push(Stack {
            process,
            thread,
            kernel,
            user,
            count: value,
            tag,
        });
        self.index.insert(self.key.as_slice().into(), index);
    }

    pub fn stacks(&self) -> &[Stack] {
        &self.stacks
    }

    pub fn thread_name(&self, id: ThreadNameId) -> &str {
        &self.thread_names[id.0 as usize]
    }

    /// Samples (or events) counted so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Kernel timestamps (CLOCK_MONOTONIC ns) of the first and last sample.
    pub fn time_span_ns(&self) -> Option<(u64, u64)> {
        self.first_ns.map(|first| (first, self.last_ns))
    }
}

#[cfg(test)]
mod tests {
    use hearth_common::SampleHeader;

    use super::*;
    use crate::{collect::probes::encode_sample, enrich::process::ProcessLimits};

    fn sample(tgid: u32, comm: &[u8], kernel: &[u64], user: &[u64]) -> Vec<u8> {
        let mut header = SampleHeader {
            timestamp_ns: 100,
            tgid,
            tid: tgid,
            ..SampleHeader::default()
        };
        header.comm[..comm.len()].copy_from_slice(comm);
        encode_sample(header, kernel, user)
    }

    fn add(table: &mut StackTable, processes: &mut ProcessTable, bytes: &[u8]) {
        table.add(&RawSample::decode(bytes).unwrap(), processes);
    }

    // PIDs above the kernel's pid_max never exist, so no procfs entry interferes.
    const NO_SUCH_PID: u32 = 0x7fff_fff0;

    #[test]
    fn identical_stacks_are_interned_once_and_counted() {
        let mut processes = ProcessTable::new(ProcessLimits::default());
        let mut table = StackTable::new();
        let a = sample(
            NO_SUCH_PID,
            b"w",
            &[0xffff_0010, 0xffff_0020],
            &[0x1000, 0x2000],
        );
        for _ in 0..3 {
            add(&mut table, &mut processes, &a);
        }
        assert_eq!(table.stacks().len(), 1);
        assert_eq!(table.stacks()[0].count, 3);
        assert_eq!(table.samples(), 3);
        assert_eq!(processes.len(), 1);
    }

    #[test]
    fn stacks_differ_by_process_thread_and_kernel_user_split() {
        let mut processes = ProcessTable::new(ProcessLimits::default());
        let mut table = StackTable::new();
        for bytes in [
            sample(NO_SUCH_PID, b"w", &[0x10], &[0x20]),
            sample(NO_SUCH_PID + 1, b"w", &[0x10], &[0x20]),
            sample(NO_SUCH_PID, b"other", &[0x10], &[0x20]),
            // Same addresses, split differently between kernel and user.
            sample(NO_SUCH_PID, b"w", &[], &[0x10, 0x20]),
        ] {
            add(&mut table, &mut processes, &bytes);
        }
        assert_eq!(table.stacks().len(), 4);
        assert!(table.stacks().iter().all(|s| s.count == 1));
        assert_eq!(processes.len(), 2);
    }

    #[test]
    fn callers_point_at_their_call_site() {
        let mut processes = ProcessTable::new(ProcessLimits::default());
        let mut table = StackTable::new();
        add(
            &mut table,
            &mut processes,
            &sample(NO_SUCH_PID, b"w", &[0x100, 0x200], &[0x1000, 0x2000]),
        );
        let stack = &table.stacks()[0];
        assert_eq!(&*stack.kernel, &[0x100, 0x1ff]);
        let user: Vec<u64> = stack.user.iter().map(UserFrame::address).collect();
        assert_eq!(user, [0x1000, 0x1fff]);
        // The process is gone (never existed): its frames stay, unmapped.
        assert!(matches!(stack.user[0], UserFrame::Unmapped { .. }));
        assert_eq!(table.thread_name(stack.thread), "w");
    }
}
