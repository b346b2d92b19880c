//! Memory-mapped files that shrink while they are read.
//!
//! The symbolizer (blazesym) and the unwind-table compiler read object
//! files through `mmap`: every library of every process, files that their
//! owners can truncate at any moment. Reading a mapped page past the new
//! end of a file raises `SIGBUS`, which would kill the agent. Copying every
//! object into memory the agent owns would avoid that, at the price of
//! reading (and holding) hundreds of megabytes per busy node for files the
//! page cache already shares; so instead the agent *guards* its mappings:
//!
//! - a `SIGBUS` handler, for `BUS_ADRERR` only (an access to a file page that
//!   no longer exists), maps an anonymous zero page over the faulting page,
//!   counts the fault and lets the read go on — reading zeros, which the
//!   parsers must survive like any hostile input;
//! - every read of a mapped object runs inside [`watch`], which says
//!   whether a fault happened meanwhile, so the caller throws that result
//!   away (and the parsed copy with it) instead of trusting zeros.
//!
//! Any other `SIGBUS` (a hardware error, an agent bug) gets the default
//! action, as before.

use std::sync::{
    Once,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

/// Faults turned into zero pages since the agent started.
static FAULTS: AtomicU64 = AtomicU64::new(0);
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == libc::BUS_ADRERR && address != 0 {
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        let start = address & !(page - 1);
        // SAFETY: replaces one page of a file mapping that can no longer be
        // read with zeros; mmap is async-signal-safe (a plain system call).
        let mapped = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            FAULTS.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    // Not a shrunken file: the default action, when the access repeats.
    // SAFETY: resetting a signal's disposition is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

/// Installs the handler (once per process).
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE_SIZE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: a zeroed sigaction with a valid handler and flags.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                tracing::warn!(
                    err = %std::io::Error::last_os_error(),
                    "cannot guard against files that shrink while mapped"
                );
            }
        }
    });
}

/// Faults absorbed so far (for metrics).
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// Runs `read` and says whether a mapped file shrank under it (then its
/// result must not be trusted). Installs the guard if needed.
pub fn watch<T>(read: impl FnOnce() -> T) -> (T, bool) {
    install();
    let before = faults();
    let value = read();
    (value, faults() != before)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_file_truncated_under_its_mapping_reads_as_zeros_and_is_reported() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![0xab; 64 * 1024]).unwrap();
        // SAFETY: the test truncates the file on purpose; the guard catches it.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        assert_eq!(map[60_000], 0xab);
        file.set_len(4096).unwrap();
        let (sum, faulted) = watch(|| map.iter().map(|&b| b as u64).sum::<u64>());
        assert!(faulted);
        // The first page kept its bytes, the rest read as zeros, and no page
        // was read twice: the same page cannot fault twice.
        assert_eq!(sum, 0xab * 4096);
        let (_, again) = watch(|| map[60_000]);
        assert!(!again, "a replaced page does not fault again");
    }
}
