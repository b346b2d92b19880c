//! What a profile measures: CPU time, one kind of network event, or time
//! off the CPU. Each is its own profile with its own sample type and unit.

use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// CPU time, sampled at a frequency.
    #[default]
    Cpu,
    /// Bytes sent on IPv4/IPv6 sockets, by the sending stack.
    TxBytes,
    /// Bytes received on IPv4/IPv6 sockets, by the receiving stack.
    RxBytes,
    /// TCP segments retransmitted, by the owning process and peer.
    Retransmits,
    /// TCP resets sent and received.
    Resets,
    /// Time from SYN to the end of the handshake, by the connecting stack.
    ConnectLatency,
    /// Packets dropped, by drop reason.
    Drops,
    /// Time threads spent blocked, by the stack they blocked at.
    OffCpu,
}

impl Event {
    pub const ALL: [Event; 8] = [
        Event::Cpu,
        Event::TxBytes,
        Event::RxBytes,
        Event::Retransmits,
        Event::Resets,
        Event::ConnectLatency,
        Event::Drops,
        Event::OffCpu,
    ];

    /// The name users give (`--event tx-bytes`) and files carry.
    pub fn name(self) -> &'static str {
        match self {
            Event::Cpu => "cpu",
            Event::TxBytes => "tx-bytes",
            Event::RxBytes => "rx-bytes",
            Event::Retransmits => "retransmits",
            Event::Resets => "resets",
            Event::ConnectLatency => "connect-latency",
            Event::Drops => "drops",
            Event::OffCpu => "off-cpu",
        }
    }

    /// Sample type and unit of the profile's values, as pprof and OTLP
    /// write them. CPU profiles count samples (pprof writes CPU time).
    pub fn sample_type(self) -> (&'static str, &'static str) {
        match self {
            Event::Cpu => ("samples", "count"),
            Event::TxBytes => ("tx_bytes", "bytes"),
            Event::RxBytes => ("rx_bytes", "bytes"),
            Event::Retransmits => ("retransmits", "count"),
            Event::Resets => ("resets", "count"),
            Event::ConnectLatency => ("connect_latency", "nanoseconds"),
            Event::Drops => ("drops", "count"),
            Event::OffCpu => ("off_cpu", "nanoseconds"),
        }
    }

    /// What one unit of a value is called in a flamegraph ("samples", "bytes").
    pub fn unit_label(self) -> &'static str {
        match self {
            Event::Cpu => "samples",
            Event::TxBytes | Event::RxBytes => "bytes",
            Event::Retransmits => "segments",
            Event::Resets => "resets",
            Event::ConnectLatency | Event::OffCpu => "ns",
            Event::Drops => "packets",
        }
    }

    /// Written by the event programs to the event ring (every event but
    /// CPU samples, which have a ring of their own).
    pub fn is_ring_event(self) -> bool {
        self != Event::Cpu
    }

    /// The Pyroscope series name (`__name__`).
    pub fn series_name(self) -> &'static str {
        match self {
            Event::Cpu => "process_cpu",
            Event::TxBytes => "network_tx_bytes",
            Event::RxBytes => "network_rx_bytes",
            Event::Retransmits => "network_retransmits",
            Event::Resets => "network_resets",
            Event::ConnectLatency => "network_connect_latency",
            Event::Drops => "network_drops",
            Event::OffCpu => "off_cpu",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown event `{0}`; choose from {names}", names = Event::names())]
pub struct UnknownEvent(pub String);

impl Event {
    /// Every event's name, separated by commas.
    fn names() -> String {
        let names: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
        names.join(", ")
    }
}

impl FromStr for Event {
    type Err = UnknownEvent;

    fn from_str(text: &str) -> Result<Self, UnknownEvent> {
        Event::ALL
            .into_iter()
            .find(|event| event.name() == text.trim())
            .ok_or_else(|| UnknownEvent(text.to_owned()))
    }
}

impl serde::Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for event in Event::ALL {
            assert_eq!(event.name().parse::<Event>(), Ok(event));
        }
        let err = "tx_bytes".parse::<Event>().unwrap_err().to_string();
        assert!(
            err.contains("tx-bytes") && err.contains("connect-latency"),
            "{err}"
        );
    }
}
