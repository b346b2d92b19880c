//! What `hearth record` profiles besides the whole machine: running
//! processes given by PID, or a command it starts.

use std::{
    ffi::OsString,
    io,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

use tokio::io::unix::AsyncFd;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with PID {0} is running; check the PID with `ps -p {0}`")]
    NoSuchProcess(u32),
    #[error("cannot run {command:?}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
}

/// Fails for a PID with no running process behind it.
pub fn check_running(pid: u32) -> Result<(), TargetError> {
    if Path::new(&format!("/proc/{pid}/stat")).exists() {
        Ok(())
    } else {
        Err(TargetError::NoSuchProcess(pid))
    }
}

/// Resolves once every process in `pids` has exited; never, if a pidfd
/// cannot be had (kernels before 5.3).
pub async fn all_exited(pids: &[u32]) {
    let mut watches = Vec::new();
    for &pid in pids {
        match pidfd(pid) {
            Ok(fd) => watches.push(fd),
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {} // already gone
            Err(err) => {
                tracing::debug!(pid, %err, "cannot watch for exit");
                return std::future::pending().await;
            }
        }
    }
    for watch in watches {
        // A pidfd turns readable when its process exits.
        let _ = watch.readable().await;
    }
}

fn pidfd(pid: u32) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd moves into the AsyncFd and is closed only when it drops.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
}

/// Starts `command` with inherited stdio.
pub fn spawn(command: &[OsString]) -> Result<tokio::process::Child, TargetError> {
    let (program, args) = command.split_first().expect("clap requires a command");
    tokio::process::Command::new(program)
        .args(args)
        .spawn()
        .map_err(|source| TargetError::Spawn {
            command: program.to_string_lossy().into_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pid_is_named_in_the_error() {
        let err = check_running(0x7fff_fff0).unwrap_err();
        assert!(err.to_string().contains("ps -p"), "{err}");
        check_running(std::process::id()).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn notices_when_watched_processes_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id();
        let reaper = std::thread::spawn(move || child.wait());
        tokio::time::timeout(std::time::Duration::from_secs(10), all_exited(&[pid]))
            .await
            .expect("exit noticed");
        reaper.join().unwrap().unwrap();
    }

    #[test]
    fn an_unknown_command_says_so() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let err = spawn(&["/no/such/program".into()]).unwrap_err();
        assert!(err.to_string().contains("/no/such/program"), "{err}");
    }
}
