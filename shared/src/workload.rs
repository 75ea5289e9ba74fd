//! The workload key: one stable name for "the same program" across processes, pods, restarts,
//! hosts and control-plane replicas, built only from the facts an agent reports.
//!
//! A SPIFFE ID names a workload only once somebody wrote a registration entry for it. Before that
//! (the state of every new installation) the platform still has to say what runs in the fleet,
//! count its flows and learn its fingerprints, and that needs a name that does not change with
//! every pod or pid. The key is that name. It is computed the same way everywhere (inventory,
//! events table, bus partitions, correlation baselines), so it lives here, beside the event.
//!
//! The most specific stable facts win, in this order:
//!
//! | kind        | key                                   | from                                          |
//! |-------------|---------------------------------------|-----------------------------------------------|
//! | `k8s`       | `k8s:<namespace>:<owner kind>/<name>` | namespace, and the pod's owning workload      |
//! | `k8s`       | `k8s:<namespace>:sa/<service account>`| when the pod name is unknown                  |
//! | `container` | `container:<image>:<name>`            | image without tag/digest, compose service or container name |
//! | `host`      | `host:<host>:<program>:<user>`        | host name, process name, user (else uid)      |
//!
//! The owning workload is derived from the pod name the way Kubernetes generates it: a
//! Deployment's pods are `<deployment>-<pod-template-hash>-<5 chars>`, a StatefulSet's
//! `<statefulset>-<ordinal>`, and DaemonSet, Job and bare ReplicaSet pods `<owner>-<5 chars>`
//! (kind `workload`, since the name alone cannot tell those apart). A pod with none of these
//! shapes is its own workload (`pod/<name>`). Container names get a compose service
//! (`<project>/<service>` from the compose labels) or their name without a trailing replica
//! number (`web-1`, `web_2` → `web`), so scaled replicas share a key.
//!
//! A host process is named by its process name (`comm`, else the executable's file name), not by
//! its executable path: the agent learns the path from `/proc`, which a short-lived process (a
//! `curl` run) may have left before the lookup, while its kernel tracer still names the process.
//! A key that changed with the attribution path would split one program in two. The path stays
//! a fact and a selector (`unix:path:`) of the workload.
//!
//! Flows with no attributed process (`unattributed`) have no workload key.

use std::borrow::Cow;

use crate::event::{FingerprintEvent, Workload};

/// What kind of workload a key names (its prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    K8s,
    Container,
    Host,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 3] = [
        WorkloadKind::K8s,
        WorkloadKind::Container,
        WorkloadKind::Host,
    ];

    /// The key prefix and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::K8s => "k8s",
            WorkloadKind::Container => "container",
            WorkloadKind::Host => "host",
        }
    }

    /// The kind of a key, from its prefix.
    pub fn of_key(key: &str) -> Option<WorkloadKind> {
        let prefix = key.split(':').next()?;
        WorkloadKind::ALL.into_iter().find(|k| k.as_str() == prefix)
    }
}

/// Docker and CRI label naming the Kubernetes pod of a container.
const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const LABEL_COMPOSE_PROJECT: &str = "com.docker.compose.project";
const LABEL_COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// The workload key of an event, or `None` when no process was attributed.
pub fn workload_key(e: &FingerprintEvent) -> Option<String> {
    key_of(&e.host, &e.workload)
}

/// The workload key of the facts `w` observed on `host`.
pub fn key_of(host: &str, w: &Workload) -> Option<String> {
    if w.unattributed.is_some() && w.pid.is_none() {
        return None;
    }
    let label = |k: &str| w.container_labels.get(k).map(String::as_str);
    let namespace = w.k8s_namespace.as_deref().or(label(LABEL_POD_NAMESPACE));
    if let Some(ns) = namespace {
        let pod = w.k8s_pod_name.as_deref().or(label(LABEL_POD_NAME));
        let owner = match (pod, &w.k8s_service_account) {
            (Some(pod), _) => pod_owner(pod),
            (None, Some(sa)) => format!("sa/{sa}"),
            (None, None) => "sa/default".to_owned(),
        };
        return Some(format!("k8s:{ns}:{owner}"));
    }
    if w.container.is_some() || w.container_image.is_some() {
        let image = w.container_image.as_deref().map(image_repository);
        let name = match (label(LABEL_COMPOSE_PROJECT), label(LABEL_COMPOSE_SERVICE)) {
            (Some(p), Some(s)) => Some(Cow::Owned(format!("{p}/{s}"))),
            _ => w.container_name.as_deref().map(strip_replica),
        };
        return Some(match (image, name) {
            (Some(i), Some(n)) => format!("container:{i}:{n}"),
            (Some(i), None) => format!("container:{i}:"),
            (None, Some(n)) => format!("container::{n}"),
            // Only an id: unstable across restarts, but still one container.
            (None, None) => format!("container::{}", w.container.as_deref().unwrap_or("")),
        });
    }
    if w.pid.is_none() && w.exe.is_none() {
        return None;
    }
    let program = w
        .process
        .as_deref()
        .or_else(|| w.exe.as_deref().map(|x| x.rsplit('/').next().unwrap_or(x)))
        .unwrap_or("");
    let user = match (&w.user, w.uid) {
        (Some(u), _) => Cow::Borrowed(u.as_str()),
        (None, Some(uid)) => Cow::Owned(uid.to_string()),
        (None, None) => Cow::Borrowed(""),
    };
    Some(format!("host:{host}:{program}:{user}"))
}

/// Kubernetes' alphabet for generated name suffixes (no vowels, no look-alikes).
fn generated(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// `<kind>/<name>` of the workload owning pod `pod`, from the shape of its generated name.
pub fn pod_owner(pod: &str) -> String {
    let mut parts = pod.rsplitn(3, '-');
    let (last, mid, base) = (parts.next(), parts.next(), parts.next());
    match (last, mid, base) {
        (Some(l), Some(m), Some(b)) if generated(l, 5, 5) && generated(m, 5, 10) => {
            format!("deployment/{b}")
        }
        (Some(l), Some(m), b) if generated(l, 5, 5) => {
            let base = match b {
                Some(b) => format!("{b}-{m}"),
                None => m.to_owned(),
            };
            format!("workload/{base}")
        }
        (Some(l), Some(m), b) if !l.is_empty() && l.bytes().all(|c| c.is_ascii_digit()) => {
            let base = match b {
                Some(b) => format!("{b}-{m}"),
                None => m.to_owned(),
            };
            format!("statefulset/{base}")
        }
        _ => format!("pod/{pod}"),
    }
}

/// An image reference without its tag or digest (`registry:5000/app:1.2@sha256:…` →
/// `registry:5000/app`), so an upgrade keeps the key.
pub fn image_repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        // A colon after the last slash is a tag; one before it is a registry port.
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// A container name without a trailing replica number (`web-1`, `app_3` → `web`, `app`).
fn strip_replica(name: &str) -> Cow<'_, str> {
    let name = name.trim_start_matches('/');
    match name.rfind(['-', '_']) {
        Some(i)
            if i > 0 && name[i + 1..].bytes().all(|b| b.is_ascii_digit()) && i + 1 < name.len() =>
        {
            Cow::Borrowed(&name[..i])
        }
        _ => Cow::Borrowed(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_facts() -> Workload {
        Workload {
            pid: Some(42),
            uid: Some(1000),
            process: Some("curl".into()),
            ..Workload::default()
        }
    }

    #[test]
    fn host_processes_are_host_program_and_user() {
        let mut w = proc_facts();
        w.exe = Some("/usr/bin/curl".into());
        w.user = Some("alice".into());
        assert_eq!(key_of("web-1", &w).unwrap(), "host:web-1:curl:alice");
        w.user = None;
        assert_eq!(key_of("web-1", &w).unwrap(), "host:web-1:curl:1000");
        // Another pid of the same program, known only to the kernel tracer (no path): same key.
        w.pid = Some(43);
        w.exe = None;
        assert_eq!(key_of("web-1", &w).unwrap(), "host:web-1:curl:1000");
        // No process name: the executable's file name.
        w.process = None;
        w.exe = Some("/opt/bin/agentd".into());
        assert_eq!(key_of("web-1", &w).unwrap(), "host:web-1:agentd:1000");
    }

    #[test]
    fn unattributed_flows_have_no_key() {
        let w = Workload {
            unattributed: Some("not-local".into()),
            ..Workload::default()
        };
        assert_eq!(key_of("h", &w), None);
        assert_eq!(key_of("h", &Workload::default()), None);
        // Process gone but uid known: still no program to name.
        let w = Workload {
            uid: Some(0),
            unattributed: Some("process-gone".into()),
            ..Workload::default()
        };
        assert_eq!(key_of("h", &w), None);
    }

    #[test]
    fn kubernetes_pods_are_named_by_their_owner() {
        assert_eq!(pod_owner("web-7d4b9c8f6d-x2x9q"), "deployment/web");
        assert_eq!(
            pod_owner("payments-api-5c9b7d6f48-k7t2z"),
            "deployment/payments-api"
        );
        assert_eq!(pod_owner("db-0"), "statefulset/db");
        assert_eq!(pod_owner("kafka-broker-12"), "statefulset/kafka-broker");
        assert_eq!(pod_owner("fluent-bit-x7k2p"), "workload/fluent-bit");
        assert_eq!(pod_owner("debug"), "pod/debug");
        assert_eq!(pod_owner("my-pod"), "pod/my-pod");
        let mut w = proc_facts();
        w.k8s_namespace = Some("shop".into());
        w.k8s_service_account = Some("api".into());
        w.pod = Some("8d3e5c2a-1b4f-4e6a-9c7d-0e1f2a3b4c5d".into());
        assert_eq!(key_of("node-1", &w).unwrap(), "k8s:shop:sa/api");
        w.k8s_pod_name = Some("web-7d4b9c8f6d-x2x9q".into());
        let a = key_of("node-1", &w).unwrap();
        // Another replica on another node.
        w.k8s_pod_name = Some("web-7d4b9c8f6d-q8z4m".into());
        w.pod = Some("0d3e5c2a-1b4f-4e6a-9c7d-0e1f2a3b4c5e".into());
        assert_eq!(key_of("node-2", &w).unwrap(), a);
        assert_eq!(a, "k8s:shop:deployment/web");
    }

    #[test]
    fn kubernetes_from_cri_labels_when_the_agent_sent_only_labels() {
        let mut w = proc_facts();
        w.container = Some("c0ffee".into());
        w.container_labels = [
            (LABEL_POD_NAMESPACE.to_owned(), "shop".to_owned()),
            (LABEL_POD_NAME.to_owned(), "db-2".to_owned()),
        ]
        .into();
        assert_eq!(key_of("n", &w).unwrap(), "k8s:shop:statefulset/db");
    }

    #[test]
    fn containers_are_image_and_service() {
        let mut w = proc_facts();
        w.container = Some("a".repeat(64));
        w.container_image = Some("registry.local:5000/shop/web:1.4.2".into());
        w.container_name = Some("/shop-web-1".into());
        assert_eq!(
            key_of("h", &w).unwrap(),
            "container:registry.local:5000/shop/web:shop-web"
        );
        w.container_labels = [
            (LABEL_COMPOSE_PROJECT.to_owned(), "shop".to_owned()),
            (LABEL_COMPOSE_SERVICE.to_owned(), "web".to_owned()),
        ]
        .into();
        assert_eq!(
            key_of("h", &w).unwrap(),
            "container:registry.local:5000/shop/web:shop/web"
        );
        // An upgrade (new tag, new container id) keeps the key.
        w.container_image = Some("registry.local:5000/shop/web@sha256:abcd".into());
        w.container = Some("b".repeat(64));
        assert_eq!(
            key_of("h2", &w).unwrap(),
            "container:registry.local:5000/shop/web:shop/web"
        );
    }

    #[test]
    fn image_and_name_normalisation() {
        assert_eq!(image_repository("nginx"), "nginx");
        assert_eq!(image_repository("nginx:1.25"), "nginx");
        assert_eq!(image_repository("localhost:5000/app"), "localhost:5000/app");
        assert_eq!(
            image_repository("localhost:5000/app:v2@sha256:00"),
            "localhost:5000/app"
        );
        assert_eq!(strip_replica("/web_3"), "web");
        assert_eq!(strip_replica("web-"), "web-");
        assert_eq!(strip_replica("-1"), "-1");
        assert_eq!(strip_replica("db"), "db");
    }

    #[test]
    fn kinds_come_from_the_prefix() {
        assert_eq!(WorkloadKind::of_key("k8s:a:b"), Some(WorkloadKind::K8s));
        assert_eq!(
            WorkloadKind::of_key("host:h:/x:u"),
            Some(WorkloadKind::Host)
        );
        assert_eq!(WorkloadKind::of_key("spiffe://x"), None);
    }
}
