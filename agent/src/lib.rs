//! Hearth, an eBPF continuous profiler.
//!
//! Data flows one way, one module per stage:
//! - [`collect`]: kernel programs sample stacks and network events into
//!   ring buffers; the [`collect::Collector`] owns them and feeds the rest.
//! - [`enrich`]: process metadata (mappings, containers, pods) resolves
//!   addresses; unwind tables are compiled for the kernel's stack walker.
//! - [`aggregate`]: samples and network events interned and counted.
//! - [`symbolize`]: unique addresses named (functions, files, lines).
//! - [`profile`]: counted stacks laid out as one profile per event.
//! - [`deliver`]: encoders, backend clients and bounded retention.
//! - [`control`]: the on-call API (`hearth ctl`) that switches it all on.
//!
//! [`pipeline`] strings aggregate → profile together; [`record`] and
//! [`run`] are the two commands driving the collector, [`check`] reports
//! what a kernel serves, [`cli`] and [`config`] are their settings, and
//! [`telemetry`] the agent's own metrics. [`fault`] guards every read of a
//! memory-mapped object file (which its owner may truncate).

pub mod aggregate;
pub mod check;
pub mod cli;
pub mod collect;
pub mod config;
pub mod control;
pub mod deliver;
pub mod enrich;
pub mod event;
pub mod fault;
pub mod pipeline;
pub mod profile;
pub mod record;
pub mod run;
pub mod symbolize;
pub mod telemetry;
pub mod units;

/// An error and its causes on one line (`outer: cause: root cause`).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// pprof's `profile.proto` messages, generated at build time from `proto/`.
#[allow(clippy::all, missing_docs)]
pub mod pprof_proto {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}
