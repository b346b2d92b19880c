//! Reads the sample ring buffer when the kernel signals data, via tokio's
//! `AsyncFd` on the ring's epoll-able file descriptor.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

pub struct SampleRing {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl SampleRing {
    pub(super) fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring owns its map fd, which stays open and unchanged
        // until the AsyncFd (and the ring inside it) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| err.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Waits until the kernel signals new records.
    ///
    /// Readiness is cleared before the caller drains, so a record committed
    /// while draining raises it again instead of being missed.
    pub async fn wait(&mut self) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands every record now in the ring to `each`; returns how many.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8])) -> usize {
        let ring = self.fd.get_mut();
        let mut records = 0;
        while let Some(item) = ring.next() {
            each(&item);
            records += 1;
        }
        records
    }
}
