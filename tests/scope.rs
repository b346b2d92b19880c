//! Containers and scoping on a real cgroup v2 hierarchy: a fixture placed
//! in a cgroup named the way the kubelet and containerd name theirs gets
//! that container id and pod UID, and with `scope.cgroups` set, a fixture
//! outside the scope is never sampled: the kernel drops its samples, so
//! every sample the agent reads belongs to the one inside.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use hearth_tests::{
    Running, agent::*, build_two_leaves_c, cgroups::Cgroups, patience, require_root, stderr,
};

#[test]
fn kubelet_cgroups_name_the_container_and_scoping_drops_the_rest_in_the_kernel() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut cgroups = Cgroups::new();
    let n = std::process::id();
    let pod_uid = format!("0f8b8a1e-2c3d-4e5f-8a9b-{n:012x}");
    let container_id = format!("{:064x}", u64::from(n) * 7919);
    let pod_slice = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        pod_uid.replace('-', "_")
    );
    let inside_cgroup = cgroups.make(&format!("{pod_slice}/cri-containerd-{container_id}.scope"));
    let outside_cgroup = cgroups.make(&format!("hearth-test-outside-{n}.slice"));

    // The receiver first: under emulation Python takes a while to start,
    // and the fixtures must outlive it and the agent's start.
    let receiver = OtlpReceiver::start("grpc", 0, &dir.path().join("requests.jsonl"));
    let fixture = build_two_leaves_c(dir.path());
    let seconds = patience(Duration::from_secs(30)).as_secs().to_string();
    let inside = Running::spawn(&fixture, &[&seconds]);
    let outside = Running::spawn(&fixture, &[&seconds]);
    cgroups.put(&inside_cgroup, inside.pid());
    cgroups.put(&outside_cgroup, outside.pid());

    let mut agent = start_exporting_agent(
        &receiver,
        &dir.path().join("ctl.sock"),
        &["-F", "99"],
        &[("HEARTH_SCOPE__CGROUPS", &pod_slice)],
    );
    receiver.wait_for_agent(&mut agent, 3, Duration::from_secs(20));
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));
    let (inside_pid, outside_pid) = (inside.pid(), outside.pid());
    drop((inside, outside));

    let mut pids_seen = std::collections::BTreeSet::new();
    let (mut inside_samples, mut all_samples) = (0, 0);
    for resource in receiver
        .requests()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap().clone())
    {
        let attributes = &resource["attributes"];
        let pid = attributes["process.pid"].as_u64().unwrap() as u32;
        pids_seen.insert(pid);
        let samples: u64 = resource["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["samples"].as_array().unwrap().clone())
            .map(|s| s["value"].as_u64().unwrap())
            .sum();
        all_samples += samples;
        if pid == inside_pid {
            inside_samples += samples;
            assert_eq!(
                attributes["container.id"],
                container_id.as_str(),
                "{attributes}"
            );
            assert_eq!(attributes["k8s.pod.uid"], pod_uid.as_str(), "{attributes}");
        }
    }
    assert!(inside_samples > 0, "the scoped fixture was sampled");
    assert!(
        !pids_seen.contains(&outside_pid),
        "the fixture outside the scope must not be sampled: {pids_seen:?}"
    );
    assert_eq!(
        pids_seen.into_iter().collect::<Vec<_>>(),
        [inside_pid],
        "only the scoped cgroup reaches the agent"
    );
    assert_eq!(all_samples, inside_samples);
}

/// OTLP resources per process id, from the receiver's requests.
fn resources_by_pid(receiver: &OtlpReceiver) -> std::collections::BTreeMap<u64, serde_json::Value> {
    receiver
        .requests()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap().clone())
        .filter_map(|r| {
            Some((
                r["attributes"]["process.pid"].as_u64()?,
                r["attributes"].clone(),
            ))
        })
        .collect()
}

/// One pod as the v1 API writes it, running one container.
fn pod_json(
    (namespace, name): (&str, &str),
    uid: &str,
    node: &str,
    (container, id): (&str, &str),
    labels: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid,
            "resourceVersion": "4711", "labels": labels
        },
        "spec": {"nodeName": node, "containers": [{"name": container, "image": "shop/api:1.2"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": container, "containerID": format!("containerd://{id}"),
                "image": "shop/api:1.2", "imageID": "", "ready": true,
                "restartCount": 0, "started": true, "state": {"running": {}}
            }]
        }
    })
}

/// A PodList as `GET /api/v1/pods` returns it (the v1 wire format; written
/// for these tests, since no cluster is reachable from the build machine
/// to record one; `kubernetes-validate` checks it against the v1 schema).
fn pod_list(items: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "4712"},
        "items": items
    })
}

/// Serves `pods` as the Kubernetes API; returns the server, its URL and
/// the file its requests are logged to.
fn serve_pods(dir: &Path, pods: &serde_json::Value) -> (hearth_tests::Running, String, PathBuf) {
    let file = dir.join("pods.json");
    std::fs::write(&file, pods.to_string()).unwrap();
    // The CLI cannot name a list (no metadata.name); its library can check it.
    let output = Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys, kubernetes_validate as kv\n\
             kv.validate(json.load(open(sys.argv[1])), kv.latest_version(), strict=True)",
        )
        .arg(&file)
        .output()
        .expect("run python3 with kubernetes-validate (`cargo xtask setup` installs it)");
    assert!(
        output.status.success(),
        "the PodList matches the v1 schema: {}",
        stderr(&output)
    );
    let log = dir.join("api.jsonl");
    let (api, port) = start_receiver(
        "kube_api.py",
        &[
            "--pods",
            file.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ],
    );
    (api, format!("http://127.0.0.1:{port}"), log)
}

#[test]
fn pods_are_named_from_the_kubernetes_api_and_profiling_goes_on_without_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut cgroups = Cgroups::new();
    let n = std::process::id();
    let pod_uid = format!("7c1e2d3f-4a5b-4c6d-8e9f-{n:012x}");
    let container_id = format!("{:064x}", u64::from(n) * 104_729);
    let cgroup = cgroups.make(&format!(
        "kubepods.slice/kubepods-pod{}.slice/cri-containerd-{container_id}.scope",
        pod_uid.replace('-', "_")
    ));
    let fixture = Running::spawn(&build_two_leaves_c(dir.path()), &["40"]);
    cgroups.put(&cgroup, fixture.pid());
    let pid = u64::from(fixture.pid());

    let checkout = serde_json::json!({"app": "checkout"});
    let pods = pod_list(vec![
        pod_json(
            ("shop", "checkout-7d9f"),
            &pod_uid,
            "node-a",
            ("api", &container_id),
            checkout.clone(),
        ),
        pod_json(
            ("shop", "other-1"),
            "00000000-0000-4000-8000-000000000001",
            "node-b",
            ("web", &"ab".repeat(32)),
            checkout,
        ),
    ]);
    let (_api, api_url, api_log) = serve_pods(dir.path(), &pods);

    let run = |api_server: &str, name: &str, during: &dyn Fn(&Path)| {
        let receiver =
            OtlpReceiver::start("grpc", 0, &dir.path().join(format!("otlp-{name}.jsonl")));
        let agent = start_exporting_agent(
            &receiver,
            &dir.path().join(format!("{name}.sock")),
            &[],
            &[
                ("HEARTH_KUBERNETES__API_SERVER", api_server),
                ("HEARTH_NODE_NAME", "node-a"),
            ],
        );
        receiver.wait_for(3, Duration::from_secs(20));
        during(&dir.path().join(format!("{name}.sock")));
        let output = terminate(agent, Duration::from_secs(20));
        assert!(output.status.success(), "agent: {}", stderr(&output));
        (resources_by_pid(&receiver), stderr(&output))
    };

    // On call: a capture of the pod by its name.
    let capture = dir.path().join("pod.folded");
    let by_name = |socket: &Path| {
        let ctl = |pod: &str, out: &Path| {
            std::process::Command::new(hearth_tests::hearth_bin())
                .arg("ctl")
                .arg("--socket")
                .arg(socket)
                .args(["capture", "--duration", "2s", "--pod", pod, "--output"])
                .arg(out)
                .output()
                .unwrap()
        };
        let found = ctl("shop/checkout-7d9f", &capture);
        assert!(found.status.success(), "{}", stderr(&found));
        let missing = ctl("shop/nope", &dir.path().join("none.folded"));
        assert!(
            stderr(&missing).contains("no pod shop/nope on this node"),
            "{}",
            stderr(&missing)
        );
    };
    let (resources, _) = run(&api_url, "api", &by_name);
    let stacks = hearth_tests::read_folded(&capture);
    assert!(
        !stacks.is_empty() && stacks.iter().all(|(frames, _)| frames[0] == "two_leaves"),
        "the pod's process only: {stacks:?}"
    );
    let attributes = resources.get(&pid).expect("the fixture's resource");
    assert_eq!(attributes["k8s.pod.name"], "checkout-7d9f", "{attributes}");
    assert_eq!(attributes["k8s.namespace.name"], "shop");
    assert_eq!(attributes["k8s.container.name"], "api");
    assert_eq!(attributes["k8s.pod.uid"], pod_uid.as_str());
    assert_eq!(attributes["k8s.node.name"], "node-a");
    assert_eq!(attributes["container.id"], container_id.as_str());
    assert_eq!(
        attributes["service.name"], "api",
        "named after its container"
    );
    let requests = std::fs::read_to_string(&api_log).unwrap();
    assert!(
        requests.contains("spec.nodeName=node-a"),
        "only this node's pods are asked for: {requests}"
    );

    // The API away: profiles still go out, with the container id and pod UID.
    let (resources, log) = run(
        &format!("http://127.0.0.1:{}", free_port()),
        "down",
        &|_| {},
    );
    let attributes = resources.get(&pid).expect("profiled without the API");
    assert_eq!(attributes["container.id"], container_id.as_str());
    assert_eq!(attributes["k8s.pod.uid"], pod_uid.as_str());
    assert!(attributes.get("k8s.pod.name").is_none(), "{attributes}");
    assert!(log.contains("Kubernetes API unreachable"), "{log}");
}

#[test]
fn pods_are_scoped_by_namespace_and_labels_in_the_kernel() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut cgroups = Cgroups::new();
    let n = std::process::id();
    let fixture = build_two_leaves_c(dir.path());
    // Three pods on this node: the one in scope, one in the namespace
    // without the label, one with the label in another namespace.
    let cases = [
        ("shop", "checkout-1", "checkout", 1u64),
        ("shop", "cart-1", "cart", 2),
        ("staging", "checkout-2", "checkout", 3),
    ];
    let mut items = Vec::new();
    let mut running = Vec::new();
    for (namespace, name, app, k) in cases {
        let uid = format!("5d4c3b2a-1f0e-4d9c-8b7a-{:012x}", u64::from(n) * 10 + k);
        let id = format!("{:064x}", (u64::from(n) * 10 + k) * 7919);
        let cgroup = cgroups.make(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        ));
        let process = Running::spawn(&fixture, &["40"]);
        cgroups.put(&cgroup, process.pid());
        items.push(pod_json(
            (namespace, name),
            &uid,
            "node-a",
            ("api", &id),
            serde_json::json!({"app": app, "tier": "web"}),
        ));
        running.push((name, process));
    }
    let (_api, api_url, _) = serve_pods(dir.path(), &pod_list(items));

    let receiver = OtlpReceiver::start("grpc", 0, &dir.path().join("requests.jsonl"));
    let agent = start_exporting_agent(
        &receiver,
        &dir.path().join("ctl.sock"),
        &["-F", "99"],
        &[
            ("HEARTH_KUBERNETES__API_SERVER", &api_url),
            ("HEARTH_NODE_NAME", "node-a"),
            ("HEARTH_SCOPE__NAMESPACES", "shop"),
            ("HEARTH_SCOPE__POD_SELECTOR", "app in (checkout),tier=web"),
        ],
    );
    // The allow list is filled once the API has answered (rescanned every
    // few seconds): wait for profiles, then for a few more.
    let deadline = std::time::Instant::now() + patience(Duration::from_secs(30));
    while resources_by_pid(&receiver).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no profile arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = receiver.requests().len();
    receiver.wait_for(seen + 3, Duration::from_secs(20));
    let output = terminate(agent, Duration::from_secs(20));
    assert!(output.status.success(), "agent: {}", stderr(&output));

    let pods: std::collections::BTreeSet<String> = resources_by_pid(&receiver)
        .values()
        .map(|a| a["k8s.pod.name"].as_str().unwrap_or("-").to_owned())
        .collect();
    assert_eq!(
        pods.into_iter().collect::<Vec<_>>(),
        ["checkout-1"],
        "only the pod in namespace shop with app=checkout is sampled"
    );
    let in_scope = running[0].1.pid();
    assert!(resources_by_pid(&receiver).contains_key(&u64::from(in_scope)));
}
