//! Scoping: which cgroups may be profiled. The chosen cgroup v2 subtrees,
//! and the cgroups of the chosen pods (found by the pod UID the kubelet
//! writes into their names), are walked and their ids (a cgroup v2
//! directory's inode number is the id `bpf_get_current_cgroup_id` returns)
//! become the kernel's allow list, so a process outside them is never
//! sampled and costs nothing. The walk is repeated as the agent runs, so
//! cgroups made later (new pods) join.

pub mod selector;

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::enrich::process::pod_uid;

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on most
/// systems, `/sys/fs/cgroup/unified` on hybrid ones), from
/// `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_of(&text)
}

fn mount_of(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mountpoint options... - fstype source superopts`
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The allow list: ids of every cgroup in the chosen subtrees.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AllowedCgroups {
    pub ids: Vec<u64>,
    /// Subtrees that do not exist (yet).
    pub missing: Vec<PathBuf>,
    /// More cgroups than `limit` were found; the rest are not allowed.
    pub truncated: bool,
}

/// Walks `roots` (paths inside the cgroup v2 mount `mount`, with or
/// without a leading `/`) and the cgroups of the pods in `pods` (by UID),
/// and collects at most `limit` cgroup ids.
pub fn allowed_cgroups(
    mount: &Path,
    roots: &[PathBuf],
    pods: &HashSet<String>,
    limit: usize,
) -> AllowedCgroups {
    let mut allowed = AllowedCgroups::default();
    let mut root_dirs = Vec::new();
    for root in roots {
        let path = mount.join(root.strip_prefix("/").unwrap_or(root));
        if path.is_dir() {
            root_dirs.push(path);
        } else {
            allowed.missing.push(root.clone());
        }
    }
    // (directory, whether it is in scope). Pods can be anywhere, so with
    // pods to find the whole hierarchy is walked; otherwise only the roots.
    let mut pending: Vec<(PathBuf, bool)> = if pods.is_empty() {
        root_dirs.iter().map(|d| (d.clone(), true)).collect()
    } else {
        vec![(mount.to_owned(), false)]
    };
    while let Some((dir, parent_inside)) = pending.pop() {
        let inside = parent_inside
            || root_dirs.contains(&dir)
            || dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(pod_uid)
                .is_some_and(|uid| pods.contains(&uid));
        if inside {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue; // removed while walking
            };
            if allowed.ids.len() >= limit {
                allowed.truncated = true;
                break;
            }
            allowed.ids.push(meta.ino());
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| (e.path(), inside)),
            );
        }
    }
    allowed.ids.sort_unstable();
    allowed.ids.dedup();
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_unified_and_hybrid_systems() {
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(mount_of(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "30 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      35 25 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_of(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_of("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
    }

    #[test]
    fn walks_subtrees_reports_missing_ones_and_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["a/b/c", "a/d", "e"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let ino = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().ino();
        let roots = [PathBuf::from("/a"), PathBuf::from("missing")];
        let none = HashSet::new();
        let allowed = allowed_cgroups(dir.path(), &roots, &none, 100);
        let mut expected = vec![ino("a"), ino("a/b"), ino("a/b/c"), ino("a/d")];
        expected.sort_unstable();
        assert_eq!(allowed.ids, expected);
        assert_eq!(allowed.missing, [PathBuf::from("missing")]);
        assert!(!allowed.truncated);
        let small = allowed_cgroups(dir.path(), &roots, &none, 2);
        assert_eq!((small.ids.len(), small.truncated), (2, true));
    }

    #[test]
    fn finds_chosen_pods_by_uid_in_systemd_and_cgroupfs_names() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            "0f8b8a1e-2c3d-4e5f-8a9b-000000000001",
            "0f8b8a1e-2c3d-4e5f-8a9b-000000000002",
            "0f8b8a1e-2c3d-4e5f-8a9b-000000000003",
        );
        let systemd = |uid: &str| {
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                uid.replace('-', "_")
            )
        };
        let dirs = [
            format!("{}/cri-containerd-1.scope", systemd(a)),
            format!("{}/cri-containerd-2.scope", systemd(b)),
            format!("kubepods/besteffort/pod{c}/ctr"),
            "system.slice/sshd.service".to_owned(),
        ];
        for sub in &dirs {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let ino = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().ino();
        let pods: HashSet<String> = [a.to_owned(), c.to_owned()].into();
        let roots = [PathBuf::from("system.slice/sshd.service")];
        let allowed = allowed_cgroups(dir.path(), &roots, &pods, 100);
        let mut expected = vec![
            ino(&systemd(a)),
            ino(&dirs[0]),
            ino(&format!("kubepods/besteffort/pod{c}")),
            ino(&dirs[2]),
            ino(&dirs[3]),
        ];
        expected.sort_unstable();
        assert_eq!(allowed.ids, expected, "pod b and the slices above are out");
    }
}
