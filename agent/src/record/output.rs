//! The output file: proven writable before recording starts, written
//! atomically at the end, so a bad path never costs a recording.

use std::{
    fs,
    io::{self, BufWriter, Write},
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
    temp: NamedTempFile,
}

impl OutputFile {
    /// Creates a temporary file beside `path`, which proves the directory writable.
    pub fn prepare(path: &Path) -> Result<Self, OutputError> {
        if path.is_dir() {
            return Err(OutputError::IsDirectory {
                path: path.to_owned(),
            });
        }
        let unwritable = |source| OutputError::Unwritable {
            path: path.to_owned(),
            source,
        };
        // An existing read-only file would only fail at the final rename's target check.
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().readonly()
        {
            return Err(unwritable(io::Error::from(io::ErrorKind::PermissionDenied)));
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
            temp,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes through `write`, then moves the file into place.
    pub fn commit(
        self,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), OutputError> {
        let path = self.path;
        let unwritable = |source| OutputError::Unwritable {
            path: path.clone(),
            source,
        };
        let mut temp = self.temp;
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
