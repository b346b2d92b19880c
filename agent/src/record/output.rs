//! The output file: proven writable before recording starts, written at
//! the end, so a bad path never costs a recording.
//!
//! A new path or an existing regular file is written atomically (a
//! temporary file beside it, renamed into place). Anything else that
//! already exists at the path — a device such as `/dev/stdout` or
//! `/dev/full`, a FIFO, a symbolic link — is opened and written in place,
//! never replaced: the agent runs privileged and must not turn another
//! user's device or link into a file of its own. Opening follows links as
//! the kernel allows (so `fs.protected_symlinks` still guards links planted
//! in shared directories).

use std::{
    fs,
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use tempfile::NamedTempFile;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}: it is a directory; give a file name with --output")]
    IsDirectory { path: PathBuf },
    #[error("cannot write {path}: {source}; choose another --output")]
    Unwritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub struct OutputFile {
    path: PathBuf,
    target: Target,
}

enum Target {
    /// Written to this temporary file, then renamed over `path`.
    Atomic(NamedTempFile),
    /// An existing device, FIFO or link, written through as it is.
    InPlace,
}

impl OutputFile {
    /// Checks `path` can be written: creates a temporary file beside a
    /// regular or new path (which proves the directory writable), or asks
    /// the kernel whether an existing device, FIFO or link is writable.
    pub fn prepare(path: &Path) -> Result<Self, OutputError> {
        let unwritable = |source| OutputError::Unwritable {
            path: path.to_owned(),
            source,
        };
        let existing = match fs::symlink_metadata(path) {
            Ok(meta) => Some(meta.file_type()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(unwritable(err)),
        };
        if path.is_dir() {
            return Err(OutputError::IsDirectory {
                path: path.to_owned(),
            });
        }
        match existing {
            Some(kind) if !kind.is_file() => {
                writable(path).map_err(unwritable)?;
                return Ok(Self {
                    path: path.to_owned(),
                    target: Target::InPlace,
                });
            }
            // An existing read-only file would only fail at the final rename's target check.
            Some(_) => writable(path).map_err(unwritable)?,
            None => {}
        }
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".hearth-")
            .tempfile_in(dir)
            .map_err(unwritable)?;
        Ok(Self {
            path: path.to_owned(),
            target: Target::Atomic(temp),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes through `write`, then moves the file into place (or, for a
    /// device, FIFO or link, writes it where it is). On failure nothing is
    /// left behind but what the target itself kept.
    pub fn commit(
        self,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), OutputError> {
        let path = self.path;
        let unwritable = |source| OutputError::Unwritable {
            path: path.clone(),
            source,
        };
        match self.target {
            Target::Atomic(mut temp) => {
                {
                    let mut out = BufWriter::new(temp.as_file_mut());
                    write(&mut out).map_err(unwritable)?;
                    out.flush().map_err(unwritable)?;
                }
                // Temporary files are created 0600; a profile is an ordinary file.
                let _ = fs::set_permissions(
                    temp.path(),
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                );
                temp.persist(&path).map_err(|err| unwritable(err.error))?;
            }
            Target::InPlace => {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .truncate(is_regular_through_link(&path))
                    .custom_flags(libc::O_NOCTTY)
                    .open(&path)
                    .map_err(unwritable)?;
                let mut out = BufWriter::new(file);
                write(&mut out).map_err(unwritable)?;
                out.flush().map_err(unwritable)?;
            }
        }
        Ok(())
    }
}

/// Whether the calling process may write `path`, as the kernel decides.
fn writable(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: c_path is a valid NUL-terminated string for the call's duration.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // A dangling link: writing would create a file wherever it points.
    if err.kind() == io::ErrorKind::NotFound {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "it is a symbolic link to nothing",
        ));
    }
    Err(err)
}

/// Whether `path` (a link) leads to a regular file, which writing in place
/// must truncate first; devices and FIFOs are never truncated.
fn is_regular_through_link(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.file_type().is_file())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt as _;

    use super::*;

    #[test]
    fn writes_atomically_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.folded");
        let output = OutputFile::prepare(&path).unwrap();
        assert!(!path.exists(), "nothing appears before commit");
        output.commit(|w| w.write_all(b"a;b 1\n")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a;b 1\n");
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "the temporary file is gone");
    }

    #[test]
    fn refuses_directories_and_missing_parents_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let err = OutputFile::prepare(dir.path()).err().unwrap();
        assert!(err.to_string().contains("is a directory"), "{err}");
        let err = OutputFile::prepare(&dir.path().join("no/such/dir/flame.svg"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("choose another --output"), "{err}");
    }

    #[test]
    fn a_fifo_is_written_in_place_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let output = OutputFile::prepare(&fifo).unwrap();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read_to_string(fifo).unwrap())
        };
        output.commit(|w| w.write_all(b"a;b 1\n")).unwrap();
        assert_eq!(reader.join().unwrap(), "a;b 1\n");
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file");
    }

    #[test]
    fn a_link_is_written_through_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.folded");
        fs::write(&real, "old contents that are longer\n").unwrap();
        let link = dir.path().join("link.folded");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        OutputFile::prepare(&link)
            .unwrap()
            .commit(|w| w.write_all(b"new\n"))
            .unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).unwrap(), "new\n");

        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let err = OutputFile::prepare(&dangling).err().unwrap();
        assert!(
            err.to_string().contains("symbolic link to nothing"),
            "{err}"
        );
    }
}
