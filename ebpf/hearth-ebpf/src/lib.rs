//! Exists so the agent can name this crate as a build dependency, which makes
//! cargo rebuild the agent when the kernel programs change.
#![no_std]
