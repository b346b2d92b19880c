//! Which container (and Kubernetes pod) a process runs in, read from the
//! cgroup path in `/proc/PID/cgroup`. Handles cgroup v1 and v2, the
//! systemd and cgroupfs drivers, and the path styles of containerd, CRI-O,
//! Docker and Podman.

/// A container as its cgroup names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    /// The 64-hex-digit container id.
    pub id: String,
    /// The Kubernetes pod's UID, when the path is a kubelet's.
    pub pod_uid: Option<String>,
}

/// Prefixes runtimes put before the id in a systemd scope name.
const SCOPE_PREFIXES: [&str; 5] = [
    "cri-containerd-",
    "crio-",
    "docker-",
    "libpod-",
    "containerd-",
];

/// The container of a process, from the text of its `/proc/PID/cgroup`.
pub fn container_from_cgroup(cgroup: &str) -> Option<ContainerRef> {
    // Lines are `hierarchy:controllers:path`; v2 has one line `0::path`.
    cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(container_from_path)
}

fn container_from_path(path: &str) -> Option<ContainerRef> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let id = segments.clone().rev().find_map(container_id)?;
    let pod_uid = segments.find_map(pod_uid);
    Some(ContainerRef { id, pod_uid })
}

fn container_id(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    if name.starts_with("crio-conmon-") {
        return None; // CRI-O's monitor process, not the container
    }
    let id = SCOPE_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
pub fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let (_, uid) = name.rsplit_once("pod")?;
    let uid = uid.replace('_', "-");
    let shape = uid.len() == 36 && uid.bytes().filter(|&b| b == b'-').count() == 4;
    (shape && uid.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())).then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const POD: &str = "0f8b8a1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b";

    fn parsed(text: &str) -> Option<ContainerRef> {
        container_from_cgroup(text)
    }

    #[test]
    fn kubelet_paths_give_container_and_pod() {
        let pod_systemd = POD.replace('-', "_");
        let cases = [
            // containerd, systemd driver, cgroup v2
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_systemd}.slice/cri-containerd-{ID}.scope"
            ),
            // CRI-O, systemd driver
            format!("0::/kubepods.slice/kubepods-pod{pod_systemd}.slice/crio-{ID}.scope"),
            // containerd, cgroupfs driver, cgroup v1 (several hierarchies)
            format!(
                "12:pids:/kubepods/besteffort/pod{POD}/{ID}\n11:cpu,cpuacct:/kubepods/besteffort/pod{POD}/{ID}"
            ),
        ];
        for text in cases {
            let container = parsed(&text).unwrap_or_else(|| panic!("nothing in {text}"));
            assert_eq!(container.id, ID, "{text}");
            assert_eq!(container.pod_uid.as_deref(), Some(POD), "{text}");
        }
    }

    #[test]
    fn docker_and_podman_paths_give_the_container() {
        for text in [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("4:memory:/docker/{ID}"),
            format!("0::/machine.slice/libpod-{ID}.scope/container"),
        ] {
            let container = parsed(&text).unwrap_or_else(|| panic!("nothing in {text}"));
            assert_eq!(container.id, ID);
            assert_eq!(container.pod_uid, None);
        }
    }

    #[test]
    fn host_processes_and_monitors_have_no_container() {
        assert_eq!(parsed("0::/user.slice/user-0.slice/session-3.scope"), None);
        assert_eq!(parsed("0::/system.slice/sshd.service"), None);
        assert_eq!(
            parsed(&format!("0::/system.slice/crio-conmon-{ID}.scope")),
            None
        );
        assert_eq!(parsed(""), None);
    }
}
