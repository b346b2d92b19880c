//! Pod names, namespaces and container names from the Kubernetes API,
//! for the pods of this node only (`spec.nodeName`), kept current by a
//! watch. Profiling never waits for it: while the API is unreachable,
//! processes keep their container id and pod UID, and the watch retries.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, RwLock},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};

/// What the API says about one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Container id (64 hex digits, runtime prefix removed) → container name.
    pub containers: HashMap<String, String>,
}

/// This node's pods by UID, shared between the watch and the exporters.
#[derive(Clone, Debug, Default)]
pub struct PodIndex(Arc<RwLock<HashMap<String, PodInfo>>>);

impl PodIndex {
    pub fn get(&self, uid: &str) -> Option<PodInfo> {
        self.0.read().expect("pod index lock").get(uid).cloned()
    }

    /// The UID of the pod `namespace/name`.
    pub fn find(&self, namespace: &str, name: &str) -> Option<String> {
        let pods = self.0.read().expect("pod index lock");
        pods.iter()
            .find(|(_, p)| p.namespace == namespace && p.name == name)
            .map(|(uid, _)| uid.clone())
    }

    /// UIDs of the pods `choose` keeps.
    pub fn uids_where(&self, choose: impl Fn(&PodInfo) -> bool) -> HashSet<String> {
        let pods = self.0.read().expect("pod index lock");
        pods.iter()
            .filter(|(_, p)| choose(p))
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.read().expect("pod index lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apply(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let info = pod_info(pod);
        self.0.write().expect("pod index lock").insert(uid, info);
    }

    fn delete(&self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.0.write().expect("pod index lock").remove(uid);
        }
    }

    fn clear(&self) {
        self.0.write().expect("pod index lock").clear();
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`.
fn container_id(status_id: &str) -> Option<String> {
    let id = status_id.rsplit_once("://").map_or(status_id, |(_, id)| id);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

fn pod_info(pod: &Pod) -> PodInfo {
    let statuses = pod.status.iter().flat_map(|status| {
        let regular = status.container_statuses.iter().flatten();
        let init = status.init_container_statuses.iter().flatten();
        regular.chain(init)
    });
    PodInfo {
        name: pod.metadata.name.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        containers: statuses
            .filter_map(|s| Some((container_id(s.container_id.as_deref()?)?, s.name.clone())))
            .collect(),
    }
}

/// Where the API server is: the given URL (no credentials), else the
/// in-cluster service account, else nothing.
pub async fn client(api_server: Option<&url::Url>) -> anyhow::Result<Option<Client>> {
    let config = match api_server {
        Some(url) => kube::Config::new(url.as_str().parse()?),
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => kube::Config::incluster()?,
        None => return Ok(None),
    };
    Ok(Some(Client::try_from(config)?))
}

/// Watches the pods of `node` into `index` until the task is dropped,
/// retrying with backoff whenever the API is away.
pub async fn watch(client: Client, node: String, index: PodIndex) {
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(pods, config).default_backoff().boxed();
    let mut failing = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => index.clear(),
            Ok(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) => index.apply(&pod),
            Ok(watcher::Event::Delete(pod)) => index.delete(&pod),
            Ok(watcher::Event::InitDone) => {
                if failing {
                    tracing::info!("Kubernetes API reachable again");
                    failing = false;
                }
                tracing::info!(pods = index.len(), node, "watching this node's pods");
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(
                        %err,
                        "Kubernetes API unreachable: profiles carry container ids and pod \
                         UIDs only until it answers; retrying"
                    );
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_lose_their_runtime_prefix() {
        let id = "4f1b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
        assert_eq!(
            container_id(&format!("containerd://{id}")).as_deref(),
            Some(id)
        );
        assert_eq!(container_id(&format!("cri-o://{id}")).as_deref(), Some(id));
        assert_eq!(container_id("containerd://short"), None);
    }
}
