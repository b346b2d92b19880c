//! Network event records as the kernel writes them to `NET_EVENTS`: a
//! [`NetEventInfo`], then a CPU-sample-shaped header and stack.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hearth_common::{
    SampleHeader,
    net::{
        AF_INET, AF_INET6, FLAG_SAME_STACK, NET_INFO_BYTES, NetCounter, NetEventInfo, NetEventKind,
    },
};

use super::{RawSample, SampleDecodeError, encode_sample};

/// How the network programs are set up at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSettings {
    /// Kinds written to the ring. Sends, receives and connects are hooked
    /// whenever any kind is wanted: they teach the kernel who owns a socket.
    pub emit: Vec<NetEventKind>,
    /// Bytes of the network event ring (a power of two, at least a page).
    pub ring_buffer_bytes: u32,
    /// Sockets whose owner the kernel remembers (least recently used go first).
    pub socket_owners: u32,
    /// Collect the user stack of sends, receives and connects.
    pub user_stacks: bool,
    /// Threads' last call sites remembered, so that repeated sends and
    /// receives (and blocks) from one place skip the stack walk.
    pub call_sites: u32,
    /// Off-CPU settings, when off-CPU time is wanted.
    pub off_cpu: Option<OffCpuSettings>,
}

/// How blocks are chosen for off-CPU profiles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OffCpuSettings {
    /// Blocks shorter than this are counted, not recorded.
    pub min_block_ns: u64,
    /// Chance that a block is recorded (0 < p <= 1); recorded time is
    /// scaled by 1/p.
    pub probability: f64,
    /// Threads that can be blocked at once and still be timed.
    pub max_blocked_threads: u32,
}

impl Eq for OffCpuSettings {}

impl OffCpuSettings {
    /// Slots of the kernel's thread table: `max_blocked_threads` rounded
    /// up to a power of two.
    pub fn thread_slots(&self) -> u32 {
        self.max_blocked_threads
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << 31)
    }

    /// The kernel's sampling threshold: the probability times 2^32.
    pub fn threshold(&self) -> u64 {
        let scaled = (self.probability.clamp(0.0, 1.0) * 4_294_967_296.0).round() as u64;
        scaled.clamp(1, hearth_common::net::OFF_CPU_ALWAYS)
    }
}

/// One decoded network record.
#[derive(Debug)]
pub struct NetRecord<'a> {
    pub info: NetEventInfo,
    pub kind: NetEventKind,
    pub sample: RawSample<'a>,
}

impl<'a> NetRecord<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, SampleDecodeError> {
        if bytes.len() < NET_INFO_BYTES {
            return Err(SampleDecodeError::Short(bytes.len()));
        }
        // SAFETY: the length was checked; NetEventInfo is integers only, so
        // every bit pattern is valid; the read needs no alignment.
        let info = unsafe { bytes.as_ptr().cast::<NetEventInfo>().read_unaligned() };
        let kind =
            NetEventKind::from_u16(info.kind).ok_or(SampleDecodeError::BadKind(info.kind))?;
        let sample = RawSample::decode(&bytes[NET_INFO_BYTES..])?;
        Ok(Self { info, kind, sample })
    }

    /// The remote end, when the event has a socket.
    pub fn remote(&self) -> Option<(IpAddr, u16)> {
        address(self.info.family, &self.info.remote_addr).map(|a| (a, self.info.remote_port))
    }

    /// The stack is this thread's last one of the same kind (not walked).
    pub fn same_stack(&self) -> bool {
        self.info.flags & FLAG_SAME_STACK != 0
    }

    /// The local end, when the event has a socket.
    pub fn local(&self) -> Option<(IpAddr, u16)> {
        address(self.info.family, &self.info.local_addr).map(|a| (a, self.info.local_port))
    }
}

fn address(family: u16, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            // IPv4 peers of dual-stack sockets show as ::ffff:a.b.c.d.
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// Lays out a network record as the kernel does; for tests and replay.
pub fn encode(info: NetEventInfo, header: SampleHeader, kernel: &[u64], user: &[u64]) -> Vec<u8> {
    // SAFETY: NetEventInfo is repr(C) plain data with no implicit padding.
    let info_bytes = unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref(&info).cast::<u8>(), NET_INFO_BYTES)
    };
    let mut record = info_bytes.to_vec();
    record.extend(encode_sample(header, kernel, user));
    record
}

/// Totals of the network programs' counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub events: u64,
    pub ring_full: u64,
    pub owner_unknown: u64,
    pub read_errors: u64,
    /// Blocks of threads in scope written with their time, those the
    /// sampling left out, those shorter than the minimum, and those lost
    /// to another thread's block in the same slot of the thread table.
    pub off_cpu_timed: u64,
    pub off_cpu_sampled_out: u64,
    pub off_cpu_short: u64,
    pub off_cpu_pending_full: u64,
}

impl NetCounters {
    pub(super) fn set(&mut self, counter: NetCounter, value: u64) {
        let slot = match counter {
            NetCounter::Events => &mut self.events,
            NetCounter::RingFull => &mut self.ring_full,
            NetCounter::OwnerUnknown => &mut self.owner_unknown,
            NetCounter::ReadError => &mut self.read_errors,
            NetCounter::OffCpuTimed => &mut self.off_cpu_timed,
            NetCounter::OffCpuSampledOut => &mut self.off_cpu_sampled_out,
            NetCounter::OffCpuShort => &mut self.off_cpu_short,
            NetCounter::OffCpuPendingFull => &mut self.off_cpu_pending_full,
        };
        *slot = value;
    }

    /// Every block of a thread in scope that came back (or was sampled out).
    pub fn off_cpu_blocks(&self) -> u64 {
        self.off_cpu_timed
            + self.off_cpu_sampled_out
            + self.off_cpu_short
            + self.off_cpu_pending_full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_info_the_process_and_the_stack() {
        let mut info = NetEventInfo {
            value: 1500,
            kind: NetEventKind::Send as u16,
            family: AF_INET,
            local_port: 40000,
            remote_port: 8080,
            ..NetEventInfo::default()
        };
        info.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        info.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let header = SampleHeader {
            tgid: 42,
            ..SampleHeader::default()
        };
        let bytes = encode(info, header, &[], &[0x10, 0x20]);
        let record = NetRecord::decode(&bytes).unwrap();
        assert_eq!(record.kind, NetEventKind::Send);
        assert_eq!(record.info.value, 1500);
        assert_eq!(record.sample.header.tgid, 42);
        assert_eq!(record.sample.user_stack().collect::<Vec<_>>(), [0x10, 0x20]);
        assert_eq!(record.remote(), Some(("10.0.0.2".parse().unwrap(), 8080)));
        assert_eq!(record.local(), Some(("10.0.0.1".parse().unwrap(), 40000)));
    }

    #[test]
    fn mapped_ipv4_peers_read_as_ipv4_and_bad_kinds_are_refused() {
        let mut info = NetEventInfo {
            kind: NetEventKind::Receive as u16,
            family: AF_INET6,
            ..NetEventInfo::default()
        };
        info.remote_addr = "::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets();
        let bytes = encode(info, SampleHeader::default(), &[], &[]);
        let record = NetRecord::decode(&bytes).unwrap();
        assert_eq!(
            record.remote().unwrap().0,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );

        info.kind = 99;
        let bytes = encode(info, SampleHeader::default(), &[], &[]);
        assert_eq!(
            NetRecord::decode(&bytes).unwrap_err(),
            SampleDecodeError::BadKind(99)
        );
    }
}
