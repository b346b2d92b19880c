//! Enrichment: what the agent learns about the processes behind the
//! samples. [`process`] reads their mappings, containers and pods (for
//! resolving addresses to files and for labels); [`unwind`] compiles their
//! objects' `.eh_frame` into the tables the kernel unwinder walks.

pub mod process;
pub mod unwind;
