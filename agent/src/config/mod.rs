//! `hearth run`'s configuration: a YAML file, `HEARTH_…` environment
//! variables and command-line flags, merged in that order (later wins) and
//! checked as a whole. Every limit the agent enforces is a value here, with
//! its default, documented once in `deploy/hearth.yaml`.

mod load;
mod scalar;
mod types;

pub use load::{ConfigError, ConfigFlag, ConfigSources, load};
pub use types::*;
