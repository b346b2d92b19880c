//! Checks made before touching the kernel, so a missing privilege gets a
//! sentence that says what to do instead of a raw EPERM.

use std::io;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "Hearth needs root, or the capabilities CAP_BPF and CAP_PERFMON, to load its eBPF \
         programs (missing: {missing}). Run it with sudo, or grant them once with \
         `sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_sys_resource+ep {exe}`"
    )]
    Missing { missing: String, exe: String },
    #[error("cannot read this process's capabilities from /proc/self/status")]
    Unreadable(#[source] io::Error),
}

/// Effective capability set of this process.
fn effective_capabilities() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff line"))?;
    u64::from_str_radix(hex.trim(), 16)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// Fails unless this process may load BPF programs and open perf events.
/// Warns when other processes' memory maps will be unreadable.
pub fn check_privileges() -> Result<(), PrivilegeError> {
    let caps = effective_capabilities().map_err(PrivilegeError::Unreadable)?;
    if !has(caps, CAP_SYS_ADMIN) {
        let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
            .into_iter()
            .filter(|&(cap, _)| !has(caps, cap))
            .map(|(_, name)| name)
            .collect();
        if !missing.is_empty() {
            let exe = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "hearth".into());
            return Err(PrivilegeError::Missing {
                missing: missing.join(", "),
                exe,
            });
        }
    }
    if !has(caps, CAP_SYS_PTRACE) {
        tracing::warn!(
            "without CAP_SYS_PTRACE, other users' processes cannot be symbolized; \
             their frames will show as [unknown]"
        );
    }
    Ok(())
}

/// Lifts the limits that get in the way of a profiler: locked memory for
/// BPF maps on kernels before 5.11, and open files for held-open binaries.
pub fn raise_resource_limits() {
    // SAFETY: getrlimit/setrlimit only read and write the structs passed.
    unsafe {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) != 0 {
            tracing::debug!("could not lift RLIMIT_MEMLOCK; fine on kernels >= 5.11");
        }
        let mut files = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0 && files.rlim_cur < files.rlim_max
        {
            files.rlim_cur = files.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &files);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_capabilities() {
        // Any process can read its own status; the value depends on who runs the test.
        effective_capabilities().unwrap();
    }

    #[test]
    fn missing_capabilities_message_says_how_to_fix() {
        let err = PrivilegeError::Missing {
            missing: "CAP_BPF, CAP_PERFMON".into(),
            exe: "/usr/bin/hearth".into(),
        };
        let text = err.to_string();
        assert!(text.contains("sudo") && text.contains("setcap"), "{text}");
        assert!(text.contains("CAP_BPF, CAP_PERFMON"), "{text}");
    }
}
