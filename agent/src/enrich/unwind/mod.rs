//! Unwind tables for the kernel's stack walker: which objects of which
//! processes have one, compiled (by the `hearth-unwind` crate, `.eh_frame`
//! in, rows out) from mapped files read under a fault guard, and placed in
//! the kernel's row store ([`UnwindRegistry`]).
//!
//! A malformed, oversized or shrinking object is an error for that object
//! alone: its frames are walked with frame pointers.

mod alloc;
mod load;
mod registry;

pub use hearth_unwind::{CompileError, SectionAddresses, UnwindTable, compile, compile_elf};
pub use load::ObjectKey;

/// Default `unwind.shard_rows`: 4 MiB of rows a shard, room for libc
/// (about 28,000 rows) many times over, or one very large binary.
pub const DEFAULT_SHARD_ROWS: u32 = 1 << 19;
/// Default `unwind.max_rows`: 32 MiB of rows when all eight shards are
/// made; a node that needs less never makes them.
pub const DEFAULT_MAX_ROWS: u32 = 1 << 22;
/// Default `unwind.max_rows_per_object` (a table must fit in one shard).
pub const DEFAULT_MAX_ROWS_PER_OBJECT: u32 = 1 << 19;
/// Longest wait between re-reads of a process whose samples keep finding
/// addresses outside its known mappings.
pub const MAX_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);
/// Default `unwind.max_processes`.
pub const DEFAULT_MAX_PROCESSES: u32 = 4096;
pub use registry::{UnwindLimits, UnwindRegistry, UnwindStats};

/// Why an object got no table.
#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("cannot read the object file: {0}")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("the object file shrank while it was read")]
    Shrunk,
}
