//! cgroup v2 directories made by a test and removed after it.

use std::path::{Path, PathBuf};

/// The cgroup v2 mount, from /proc/self/mountinfo (hybrid systems mount it
/// at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount = left.split(' ').nth(4)?;
            right.starts_with("cgroup2 ").then(|| PathBuf::from(mount))
        })
        .expect("a cgroup v2 hierarchy is mounted")
}

/// cgroups made for the test; their processes go back to the root and the
/// directories are removed on drop.
pub struct Cgroups {
    mount: PathBuf,
    made: Vec<PathBuf>,
}

impl Cgroups {
    pub fn new() -> Self {
        Self {
            mount: cgroup2_mount(),
            made: Vec::new(),
        }
    }

    pub fn make(&mut self, relative: &str) -> PathBuf {
        let path = self.mount.join(relative);
        std::fs::create_dir_all(&path).unwrap();
        // Every directory made, deepest last, to remove deepest first.
        let mut dir = path.clone();
        let mut new = Vec::new();
        while dir != self.mount && !self.made.contains(&dir) {
            new.push(dir.clone());
            dir = dir.parent().unwrap().to_owned();
        }
        self.made.extend(new.into_iter().rev());
        path
    }

    pub fn put(&self, cgroup: &Path, pid: u32) {
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = std::fs::write(self.mount.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Default for Cgroups {
    fn default() -> Self {
        Self::new()
    }
}
