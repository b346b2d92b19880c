//! Hearth, an eBPF continuous profiler.
//!
//! Samples flow one way through one module per stage:
//! [`probes`] (kernel programs and their ring buffer) →
//! [`aggregate`] (intern and count raw stacks; new stacks' addresses
//! resolved through [`process`] metadata) → [`symbolize`] → [`profile`] →
//! [`export`]. [`pipeline`] strings the stages together; [`record`] is the
//! `hearth record` command built on it, [`cli`] its command line.
//! [`fault`] guards every read of a memory-mapped object file (which its
//! owner may truncate) for [`symbolize`] and [`unwind`].

pub mod aggregate;
pub mod check;
pub mod cli;
pub mod collect;
pub mod config;
pub mod control;
pub mod event;
pub mod export;
pub mod fault;
pub mod network;
pub mod pipeline;
pub mod preflight;
pub mod probes;
pub mod process;
pub mod profile;
pub mod record;
pub mod retention;
pub mod run;
pub mod scope;
pub mod symbolize;
pub mod telemetry;
pub mod units;
pub mod unwind;

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
