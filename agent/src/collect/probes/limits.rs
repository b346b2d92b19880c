//! Sizes and rates the kernel has to be able to take: the sample ring's
//! size and the sampling frequency, checked before anything is loaded.

use super::page_size;
use crate::units::{ByteSize, ByteSizeError};

/// The sample ring's size: chosen from the machine and the rate, or given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RingBufferSize {
    /// Room for about [`AUTO_RING_SECONDS`] of samples from every CPU.
    #[default]
    Auto,
    Fixed(ByteSize),
}

/// Seconds of samples an `auto` ring holds: enough to ride out a slow
/// window build (symbolizing a large binary for the first time).
pub const AUTO_RING_SECONDS: u64 = 2;
/// A typical record: header plus about 32 frames.
const TYPICAL_RECORD_BYTES: u64 = 320;

/// A ring-buffer size the kernel cannot take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingSizeError {
    #[error("{0}, or auto")]
    NotASize(#[from] ByteSizeError),
    #[error("must be a power of two from one page ({page}) to 1GiB, not {size}")]
    OutOfRange { page: ByteSize, size: ByteSize },
}

impl std::str::FromStr for RingBufferSize {
    type Err = RingSizeError;

    fn from_str(text: &str) -> Result<Self, RingSizeError> {
        if text.trim().eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        let size: ByteSize = text.parse()?;
        check_ring_buffer_size(size)?;
        Ok(Self::Fixed(size))
    }
}

impl std::fmt::Display for RingBufferSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(size) => size.fmt(f),
        }
    }
}

impl RingBufferSize {
    /// Bytes for `cpus` CPUs sampled at `frequency_hz`.
    pub fn bytes(self, cpus: u64, frequency_hz: u64) -> u32 {
        match self {
            Self::Fixed(size) => size.0 as u32,
            Self::Auto => {
                let wanted = cpus * frequency_hz * TYPICAL_RECORD_BYTES * AUTO_RING_SECONDS;
                wanted.next_power_of_two().clamp(256 << 10, 64 << 20) as u32
            }
        }
    }
}

/// Checks a ring-buffer size: a power of two from one page to 1GiB.
/// Returns the size in bytes, or what is wrong with it.
pub fn check_ring_buffer_size(size: ByteSize) -> Result<u32, RingSizeError> {
    let page = ByteSize(page_size() as u64);
    if size.0.is_power_of_two() && size >= page && size <= ByteSize(1 << 30) {
        Ok(size.0 as u32)
    } else {
        Err(RingSizeError::OutOfRange { page, size })
    }
}

/// Checks a sampling rate against the kernel's ceiling
/// (`kernel.perf_event_max_sample_rate`).
pub fn check_frequency(frequency_hz: u64) -> Result<(), FrequencyError> {
    let max = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match max {
        Some(max) if frequency_hz > max => Err(FrequencyError {
            hz: frequency_hz,
            max,
        }),
        _ => Ok(()),
    }
}

/// A sampling rate above the kernel's ceiling.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{hz} Hz is above this kernel's limit of {max} Hz \
     (sysctl kernel.perf_event_max_sample_rate); choose a lower rate"
)]
pub struct FrequencyError {
    pub hz: u64,
    pub max: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_ring_scales_with_cpus_and_rate_within_bounds() {
        assert_eq!(RingBufferSize::Auto.bytes(2, 19), 256 << 10);
        // 64 CPUs x 99 Hz x 320 B x 2 s = 4.06 MB.
        assert_eq!(RingBufferSize::Auto.bytes(64, 99), 4 << 20);
        assert_eq!(RingBufferSize::Auto.bytes(1024, 10_000), 64 << 20);
        assert_eq!("auto".parse(), Ok(RingBufferSize::Auto));
        assert_eq!("1MiB".parse(), Ok(RingBufferSize::Fixed(ByteSize(1 << 20))));
        assert!(
            "3MiB"
                .parse::<RingBufferSize>()
                .unwrap_err()
                .to_string()
                .contains("power of two")
        );
        assert!(
            "lots"
                .parse::<RingBufferSize>()
                .unwrap_err()
                .to_string()
                .contains("or auto")
        );
    }
}
