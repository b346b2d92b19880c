//! Bounded retention: what is kept while backends are away, and for how
//! long. Every bound drops the oldest data first, and every drop is
//! counted and reported — nothing is lost silently.

mod history;
mod queue;
mod spool;

pub use history::{History, HistoryEntry};
pub use queue::{Dropped, ExportQueue, QueueLimits, QueuedPayload};
pub use spool::{Spool, SpoolError};
