//! A view of one CPU sample record as it sits in the ring: the header is
//! copied out, the frames are read in place.

use hearth_common::{MAX_STACK_DEPTH, SampleHeader, TASK_COMM_LEN, record_size};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SampleDecodeError {
    #[error("record of {0} bytes is shorter than what its header describes")]
    Short(usize),
    #[error(
        "record claims {kernel} kernel and {user} user frames (at most {MAX_STACK_DEPTH} each)"
    )]
    BadDepth { kernel: u16, user: u16 },
    #[error("network record of unknown kind {0}")]
    BadKind(u16),
}

/// The header copied out, the stacks read in place.
#[derive(Clone, Debug)]
pub struct RawSample<'a> {
    pub header: SampleHeader,
    kernel: &'a [u8],
    user: &'a [u8],
}

impl<'a> RawSample<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, SampleDecodeError> {
        if bytes.len() < size_of::<SampleHeader>() {
            return Err(SampleDecodeError::Short(bytes.len()));
        }
        // SAFETY: the length was checked, and every bit pattern is a valid
        // SampleHeader (integers only); the read needs no alignment.
        let header = unsafe { bytes.as_ptr().cast::<SampleHeader>().read_unaligned() };
        let (kernel, user) = (header.kernel_frames as usize, header.user_frames as usize);
        if kernel > MAX_STACK_DEPTH || user > MAX_STACK_DEPTH {
            return Err(SampleDecodeError::BadDepth {
                kernel: header.kernel_frames,
                user: header.user_frames,
            });
        }
        if bytes.len() < record_size(kernel + user) {
            return Err(SampleDecodeError::Short(bytes.len()));
        }
        let frames = &bytes[size_of::<SampleHeader>()..];
        Ok(Self {
            header,
            kernel: &frames[..kernel * 8],
            user: &frames[kernel * 8..(kernel + user) * 8],
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
        comm_to_str(&self.header.comm)
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

/// Lays out a sample as the kernel program writes it (frame counts taken
/// from the stacks); for tests and for replaying recorded samples.
pub fn encode(header: SampleHeader, kernel: &[u64], user: &[u64]) -> Vec<u8> {
    assert!(kernel.len() <= MAX_STACK_DEPTH && user.len() <= MAX_STACK_DEPTH);
    let header = SampleHeader {
        kernel_frames: kernel.len() as u16,
        user_frames: user.len() as u16,
        ..header
    };
    // SAFETY: SampleHeader is repr(C) plain data with no implicit padding.
    let header_bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(&header).cast::<u8>(),
            size_of::<SampleHeader>(),
        )
    };
    let mut record = header_bytes.to_vec();
    for frame in kernel.iter().chain(user) {
        record.extend_from_slice(&frame.to_ne_bytes());
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SampleHeader {
        SampleHeader {
            timestamp_ns: 1,
            cgroup_id: 2,
            process_start_ns: 3,
            tgid: 4,
            tid: 5,
            cpu: 6,
            exec_id: 7,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            ..SampleHeader::default()
        }
    }

    #[test]
    fn records_hold_only_the_frames_in_use() {
        let bytes = encode(header(), &[0xf_fff1], &[0x10, 0x20, 0x30]);
        assert_eq!(bytes.len(), 64 + 4 * 8);
    }

    #[test]
    fn decodes_what_the_kernel_layout_holds() {
        let bytes = encode(header(), &[0xf_fff1], &[0x10, 0x20, 0x30]);
        let raw = RawSample::decode(&bytes).unwrap();
        let h = raw.header;
        assert_eq!(
            (h.tgid, h.tid, h.cpu, h.exec_id, h.process_start_ns),
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
        let mut bad = encode(header(), &[], &[]);
        let at = std::mem::offset_of!(SampleHeader, user_frames);
        bad[at..at + 2].copy_from_slice(&500u16.to_ne_bytes());
        assert!(matches!(
            RawSample::decode(&bad),
            Err(SampleDecodeError::BadDepth { user: 500, .. })
        ));
        // A header that promises more frames than the record holds.
        let mut cut = encode(header(), &[1, 2], &[3]);
        cut.truncate(cut.len() - 8);
        assert!(matches!(
            RawSample::decode(&cut),
            Err(SampleDecodeError::Short(_))
        ));
    }
}
