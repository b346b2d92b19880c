//! Debian's kernel packages, fetched with apt into a cache of our own (its
//! own sources list, package lists and archives, so the machine's apt
//! state is untouched), unpacked into a tree virtme-ng boots: the image at
//! `boot/vmlinuz-VERSION`, its modules at `lib/modules/VERSION` with a
//! `modules.dep` (Debian generates that at install, which never happens here).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::setup::run_command;

/// A kernel of the test list, as Debian packages it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    /// The name `--kernel` takes.
    pub name: &'static str,
    /// Where it comes from, for the report.
    pub release: &'static str,
    /// The image package names of this kernel match this (`grep -E`); the
    /// newest version among them is taken.
    pub package: &'static str,
}

/// Debian 11's 5.10, Debian 12's 6.1 and 6.12, and the newest Debian offers.
pub const KERNELS: [KernelSpec; 4] = [
    KernelSpec {
        name: "5.10",
        release: "Debian 11",
        package: r"^linux-image-5\.10\.0-[0-9]+-amd64$",
    },
    KernelSpec {
        name: "6.1",
        release: "Debian 12",
        package: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    },
    KernelSpec {
        name: "6.12",
        release: "Debian 12 (6.12)",
        package: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
    },
    KernelSpec {
        name: "newest",
        release: "Debian unstable",
        package: r"^linux-image-[0-9]+\.[0-9]+(\.[0-9]+)?(-[0-9]+)?\+deb[0-9]+-amd64$",
    },
];

const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
";

/// Package lists younger than this are used as they are.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A kernel unpacked and ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub spec: KernelSpec,
    /// `uname -r` of the kernel.
    pub version: String,
    pub image: PathBuf,
}

/// The apt cache under `cache`.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    pub fn new(cache: &Path) -> anyhow::Result<Self> {
        let dir = cache.join("apt");
        for sub in ["lists/partial", "archives/partial", "debs"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        std::fs::write(dir.join("sources.list"), SOURCES)?;
        let status = dir.join("status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        Ok(Self { dir })
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::sourcelist={d}/sources.list"),
            "-oDir::Etc::sourceparts=/nonexistent".to_owned(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}"),
            format!("-oDir::State::status={d}/status"),
            "-oAPT::Sandbox::User=root".to_owned(),
            "-q".to_owned(),
        ]
    }

    /// Refreshes the package lists unless they are recent.
    pub fn update(&self) -> anyhow::Result<()> {
        let fresh = std::fs::read_dir(self.dir.join("lists"))
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok())
            // Package lists only: `partial/` and `lock` are made fresh by
            // `Apt::new` on a machine that never fetched a list.
            .filter(|entry| entry.file_name().to_string_lossy().contains("_Packages"))
            .filter_map(|entry| entry.metadata().ok()?.modified().ok())
            .any(|time| {
                SystemTime::now()
                    .duration_since(time)
                    .is_ok_and(|age| age < LISTS_MAX_AGE)
            });
        if fresh {
            return Ok(());
        }
        println!("vm-test: refreshing Debian's package lists (bullseye, bookworm, sid)");
        run_command(Command::new("apt-get").args(self.options()).arg("update"))
            .context("apt-get update with the vm-test sources (deb.debian.org must be reachable)")
    }

    /// The newest package whose name matches `pattern`.
    pub fn newest(&self, pattern: &str) -> anyhow::Result<String> {
        let output = Command::new("apt-cache")
            .args(self.options())
            .args(["search", "--names-only", pattern])
            .output()
            .context("running apt-cache")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let re_names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| !name.ends_with("-dbg") && !name.ends_with("-unsigned"))
            .collect();
        re_names
            .into_iter()
            .max_by(|a, b| compare_versions(a, b))
            .map(str::to_owned)
            .with_context(|| format!("no Debian package matches {pattern}"))
    }

    fn exists(&self, package: &str) -> bool {
        Command::new("apt-cache")
            .args(self.options())
            .args(["show", package])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    }

    /// Downloads `packages` into the cache (apt skips what it has).
    fn download(&self, packages: &[String]) -> anyhow::Result<Vec<PathBuf>> {
        let debs = self.dir.join("debs");
        run_command(
            Command::new("apt-get")
                .args(self.options())
                .arg("download")
                .args(packages)
                .current_dir(&debs),
        )
        .with_context(|| format!("downloading {}", packages.join(" ")))?;
        let mut files = Vec::new();
        for package in packages {
            let prefix = format!("{package}_");
            let found = std::fs::read_dir(&debs)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                })
                .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
            files.push(found);
        }
        Ok(files)
    }
}

/// Orders package names by the numbers in them (`6.12.9` < `6.12.10`).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn numbers(name: &str) -> Vec<u64> {
        name.split(|c: char| !c.is_ascii_digit())
            .filter(|part| !part.is_empty())
            .filter_map(|part| part.parse().ok())
            .collect()
    }
    numbers(a).cmp(&numbers(b)).then_with(|| a.cmp(b))
}

/// Fetches and unpacks `spec` under `cache/kernels`, unless already there.
pub fn prepare(apt: &Apt, cache: &Path, spec: KernelSpec) -> anyhow::Result<Kernel> {
    let image_package = apt.newest(spec.package)?;
    let version = image_package
        .strip_prefix("linux-image-")
        .context("image package name")?
        .to_owned();
    let tree = cache.join("kernels").join(&version);
    let image = tree.join("boot").join(format!("vmlinuz-{version}"));
    let ready = tree.join(".ready");
    if ready.exists() && image.exists() {
        return Ok(Kernel {
            spec,
            version,
            image,
        });
    }
    println!("vm-test: fetching {image_package} ({})", spec.release);
    // Newer Debian kernels split the image and modules into packages of
    // their own that the image package depends on.
    let mut packages = vec![image_package.clone()];
    for part in ["linux-binary", "linux-modules"] {
        let name = format!("{part}-{version}");
        if apt.exists(&name) {
            packages.push(name);
        }
    }
    let debs = apt.download(&packages)?;
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree)?;
    for deb in &debs {
        run_command(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))
            .with_context(|| format!("unpacking {}", deb.display()))?;
    }
    arrange(&tree, &version)?;
    std::fs::write(&ready, &version)?;
    Ok(Kernel {
        spec,
        version,
        image,
    })
}

/// Puts the image and the modules where virtme-ng looks for them, and
/// writes the modules' dependency lists.
fn arrange(tree: &Path, version: &str) -> anyhow::Result<()> {
    let modules = tree.join("lib/modules").join(version);
    let merged_usr = tree.join("usr/lib/modules").join(version);
    if !modules.exists() && merged_usr.exists() {
        std::fs::create_dir_all(tree.join("lib/modules"))?;
        std::fs::rename(&merged_usr, &modules)?;
    }
    if !modules.exists() {
        bail!("the kernel packages of {version} hold no modules directory");
    }
    let image = tree.join("boot").join(format!("vmlinuz-{version}"));
    if !image.exists() {
        let inside = modules.join("vmlinuz");
        if !inside.exists() {
            bail!("the kernel packages of {version} hold no vmlinuz");
        }
        std::fs::create_dir_all(tree.join("boot"))?;
        std::fs::rename(&inside, &image)?;
    }
    run_command(
        Command::new("depmod")
            .arg("-a")
            .arg("-b")
            .arg(tree)
            .arg(version),
    )
    .with_context(|| format!("depmod for {version} (Debian's kmod package)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_their_numbers() {
        let mut names = [
            "linux-image-6.12.10+deb12-amd64",
            "linux-image-7.2.13+deb14-amd64",
            "linux-image-6.12.9+deb12-amd64",
        ];
        names.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            names,
            [
                "linux-image-6.12.9+deb12-amd64",
                "linux-image-6.12.10+deb12-amd64",
                "linux-image-7.2.13+deb14-amd64"
            ]
        );
    }
}
