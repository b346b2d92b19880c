//! Hearth's kernel programs.
//!
//! Entry points are thin wrappers around `try_*` functions; everything that
//! can fail is counted in `COUNTERS` rather than silently dropped.
#![no_std]
#![no_main]

mod cpu;
mod events;
mod net;
mod offcpu;
mod ring;
mod task;
mod unwind;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program with a reachable panic, so this never runs.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
