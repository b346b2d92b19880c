//! The deployment material is checked by independent tools and by the
//! agent itself: the Kubernetes manifests validate against the API schemas
//! (PyPI `kubernetes-validate`, strict), the configuration the ConfigMap
//! carries — with the environment the DaemonSet sets — and the documented
//! example file are accepted by `hearth run`, and the compose files parse.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use hearth_tests::{hearth_bin, stderr};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs a Python snippet (with PyYAML) and returns its standard output.
fn python(script: &str, args: &[&Path]) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3 (install the test tools: `cargo xtask setup`)");
    assert!(output.status.success(), "python: {}", stderr(&output));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let files = manifests();
    let kinds = python(
        "import sys, yaml\n\
         for f in sys.argv[1:]:\n\
         \x20   for doc in yaml.safe_load_all(open(f)):\n\
         \x20       print(doc['kind'])",
        &files.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    );
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
    ] {
        assert!(kinds.lines().any(|k| k == kind), "no {kind} in {kinds}");
    }
    let output = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("run kubernetes-validate (PyPI; `cargo xtask setup` installs it)");
    assert!(
        output.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
}

#[test]
fn the_daemonset_asks_for_capabilities_not_privilege() {
    let daemonset = deploy_dir().join("kubernetes/daemonset.yaml");
    let facts = python(
        "import sys, yaml\n\
         d = yaml.safe_load(open(sys.argv[1]))\n\
         spec = d['spec']['template']['spec']\n\
         c = spec['containers'][0]\n\
         sc = c['securityContext']\n\
         print('hostPID', spec.get('hostPID'))\n\
         print('privileged', sc.get('privileged'))\n\
         print('readOnlyRootFilesystem', sc.get('readOnlyRootFilesystem'))\n\
         print('add', ','.join(sc['capabilities']['add']))\n\
         print('drop', ','.join(sc['capabilities']['drop']))\n\
         print('probes', c['livenessProbe']['httpGet']['path'], c['readinessProbe']['httpGet']['path'])\n\
         print('limits', 'limits' in c['resources'] and 'requests' in c['resources'])\n\
         print('tolerations', spec['tolerations'][0]['operator'])",
        &[&daemonset],
    );
    for expected in [
        "hostPID True",
        "privileged False",
        "readOnlyRootFilesystem True",
        "drop ALL",
        "probes /healthz /readyz",
        "limits True",
        "tolerations Exists",
    ] {
        assert!(facts.contains(expected), "{expected} in\n{facts}");
    }
    let add = facts.lines().find(|l| l.starts_with("add ")).unwrap();
    assert!(add.contains("BPF") && add.contains("PERFMON"), "{add}");
}

/// `hearth run --print-config` accepts `config` with `env` set.
fn accepted(config: &Path, env: &[(&str, &str)]) -> String {
    let output = Command::new(hearth_bin())
        .args(["run", "--config"])
        .arg(config)
        .arg("--print-config")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} refused: {}",
        config.display(),
        stderr(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_shipped_configurations_are_accepted_by_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let from_configmap = dir.path().join("hearth.yaml");
    let text = python(
        "import sys, yaml\n\
         print(yaml.safe_load(open(sys.argv[1]))['data']['hearth.yaml'])",
        &[&deploy_dir().join("kubernetes/configmap.yaml")],
    );
    std::fs::write(&from_configmap, text).unwrap();
    // The environment the DaemonSet gives the agent.
    let effective = accepted(&from_configmap, &[("HEARTH_NODE_NAME", "node-1")]);
    assert!(effective.contains("node_name: node-1"), "{effective}");
    assert!(effective.contains("kubepods.slice"), "{effective}");

    let example = accepted(&deploy_dir().join("hearth.yaml"), &[]);
    assert!(example.contains("mode: always"), "{example}");

    let compose = deploy_dir().join("docker-compose/docker-compose.yaml");
    let services = python(
        "import sys, yaml\n\
         print(' '.join(sorted(yaml.safe_load(open(sys.argv[1]))['services'])))",
        &[&compose],
    );
    assert_eq!(services.trim(), "grafana hearth pyroscope");
}

/// The capability set of this process (`CapBnd`), as capability names.
fn bounding_capabilities() -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    // The numbers of the capabilities the DaemonSet may name.
    let numbers = [
        ("DAC_READ_SEARCH", 2),
        ("SYS_PTRACE", 19),
        ("SYS_RESOURCE", 24),
        ("PERFMON", 38),
        ("BPF", 39),
    ];
    numbers
        .iter()
        .filter(|(_, bit)| mask & (1 << bit) != 0)
        .map(|(name, _)| name.to_string())
        .collect()
}

#[test]
fn the_agent_profiles_with_the_daemonsets_capabilities_alone() {
    hearth_tests::require_root();
    let wanted = python(
        "import sys, yaml\n\
         d = yaml.safe_load(open(sys.argv[1]))\n\
         print(' '.join(d['spec']['template']['spec']['containers'][0]['securityContext']['capabilities']['add']))",
        &[&deploy_dir().join("kubernetes/daemonset.yaml")],
    );
    // Those this machine can grant at all (a VM or container may lack some).
    let available = bounding_capabilities();
    let granted: Vec<&str> = wanted
        .split_whitespace()
        .filter(|c| available.iter().any(|a| a == c))
        .collect();
    assert!(granted.contains(&"BPF") && granted.contains(&"PERFMON"));
    let set = format!(
        "-all,{}",
        granted
            .iter()
            .map(|c| format!("+{}", c.to_ascii_lowercase()))
            .collect::<Vec<_>>()
            .join(",")
    );

    let dir = tempfile::tempdir().unwrap();
    let target =
        hearth_tests::Running::spawn(&hearth_tests::build_two_leaves_c(dir.path()), &["10"]);
    let out = dir.path().join("caps.folded");
    let output = Command::new("setpriv")
        .args(["--bounding-set", &set, "--inh-caps", &set, "--"])
        .arg(hearth_bin())
        .args([
            "record",
            "--duration",
            "2s",
            "--pid",
            &target.pid().to_string(),
            "--output",
        ])
        .arg(&out)
        .output()
        .expect("run setpriv (util-linux)");
    assert!(
        output.status.success(),
        "with only {granted:?}: {}",
        stderr(&output)
    );
    let stacks = hearth_tests::read_folded(&out);
    assert!(
        stacks
            .iter()
            .any(|(frames, _)| frames.last().is_some_and(|f| f == "leaf_a")),
        "named frames with only {granted:?}: {stacks:?}"
    );
}
