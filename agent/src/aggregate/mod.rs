//! Aggregation: CPU samples interned by their raw identity and counted
//! ([`stacks`]), network events summed per stack and peer ([`network`]).

pub mod network;
mod stacks;

pub use stacks::*;
