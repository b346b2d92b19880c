//! A view of one `CpuSample` record as it sits in the ring: header fields
//! are copied out, stacks are read in place.

use std::mem::offset_of;

use hearth_common::{CpuSample, MAX_STACK_DEPTH, TASK_COMM_LEN};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SampleDecodeError {
    #[error("record of {0} bytes is shorter than a CPU sample")]
    Short(usize),
    #[error(
        "record claims {kernel} kernel and {user} user frames (at most {MAX_STACK_DEPTH} each)"
    )]
    BadDepth { kernel: u32, user: u32 },
}

#[derive(Debug)]
pub struct RawSample<'a> {
    pub timestamp_ns: u64,
    pub cgroup_id: u64,
    pub process_start_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub exec_id: u32,
    pub comm: [u8; TASK_COMM_LEN],
    kernel: &'a [u8],
    user: &'a [u8],
}

macro_rules! field {
    ($bytes:expr, $field:ident, $ty:ty) => {{
        const AT: usize = offset_of!(CpuSample, $field);
        <$ty>::from_ne_bytes($bytes[AT..AT + size_of::<$ty>()].try_into().unwrap())
    }};
}

impl<'a> RawSample<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, SampleDecodeError> {
        if bytes.len() < size_of::<CpuSample>() {
            return Err(SampleDecodeError::Short(bytes.len()));
        }
        let kernel = field!(bytes, kernel_frames, u32);
        let user = field!(bytes, user_frames, u32);
        if kernel as usize > MAX_STACK_DEPTH || user as usize > MAX_STACK_DEPTH {
            return Err(SampleDecodeError::BadDepth { kernel, user });
        }
        let kernel_at = offset_of!(CpuSample, kernel_stack);
        let user_at = offset_of!(CpuSample, user_stack);
        let comm_at = offset_of!(CpuSample, comm);
        Ok(Self {
            timestamp_ns: field!(bytes, timestamp_ns, u64),
            cgroup_id: field!(bytes, cgroup_id, u64),
            process_start_ns: field!(bytes, process_start_ns, u64),
            tgid: field!(bytes, tgid, u32),
            tid: field!(bytes, tid, u32),
            cpu: field!(bytes, cpu, u32),
            exec_id: field!(bytes, exec_id, u32),
            comm: bytes[comm_at..comm_at + TASK_COMM_LEN].try_into().unwrap(),
            kernel: &bytes[kernel_at..kernel_at + kernel as usize * 8],
            user: &bytes[user_at..user_at + user as usize * 8],
        })
    }

    /// Kernel frames, innermost first.
    pub fn kernel_stack(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        frames(self.kernel)
    }

    /// User frames, innermost first.
    pub fn user_stack(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        frames(self.user)
    }

    /// The thread name up to its first NUL.
    pub fn comm_str(&self) -> std::borrow::Cow<'_, str> {
        comm_to_str(&self.comm)
    }
}

pub fn comm_to_str(comm: &[u8; TASK_COMM_LEN]) -> std::borrow::Cow<'_, str> {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..len])
}

fn frames(bytes: &[u8]) -> impl ExactSizeIterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|chunk| u64::from_ne_bytes(chunk.try_into().unwrap()))
}

/// Encodes a sample the way the kernel program lays it out; used by tests
/// and benchmarks that replay recorded samples.
pub fn encode(sample: &CpuSample) -> Vec<u8> {
    // SAFETY: CpuSample is repr(C) plain data with no implicit padding.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(sample).cast::<u8>(),
            size_of::<CpuSample>(),
        )
    };
    bytes.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kernel: &[u64], user: &[u64]) -> CpuSample {
        let mut s = CpuSample {
            timestamp_ns: 1,
            cgroup_id: 2,
            process_start_ns: 3,
            tgid: 4,
            tid: 5,
            cpu: 6,
            exec_id: 7,
            kernel_frames: kernel.len() as u32,
            user_frames: user.len() as u32,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            kernel_stack: [0; MAX_STACK_DEPTH],
            user_stack: [0; MAX_STACK_DEPTH],
        };
        s.kernel_stack[..kernel.len()].copy_from_slice(kernel);
        s.user_stack[..user.len()].copy_from_slice(user);
        s
    }

    #[test]
    fn decodes_what_the_kernel_layout_holds() {
        let bytes = encode(&sample(&[0xf_fff1], &[0x10, 0x20, 0x30]));
        let raw = RawSample::decode(&bytes).unwrap();
        assert_eq!(
            (
                raw.tgid,
                raw.tid,
                raw.cpu,
                raw.exec_id,
                raw.process_start_ns
            ),
            (4, 5, 6, 7, 3)
        );
        assert_eq!(raw.comm_str(), "worker");
        assert_eq!(raw.kernel_stack().collect::<Vec<_>>(), [0xf_fff1]);
        assert_eq!(raw.user_stack().collect::<Vec<_>>(), [0x10, 0x20, 0x30]);
    }

    #[test]
    fn rejects_short_and_impossible_records() {
        assert_eq!(
            RawSample::decode(&[0; 10]).unwrap_err(),
            SampleDecodeError::Short(10)
        );
        let mut bad = sample(&[], &[]);
        bad.user_frames = 500;
        assert!(matches!(
            RawSample::decode(&encode(&bad)),
            Err(SampleDecodeError::BadDepth { user: 500, .. })
        ));
    }
}
