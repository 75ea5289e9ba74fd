//! Facts that need more than `/proc/<pid>`: the executable's hash, a Docker container's labels,
//! and a Kubernetes pod's namespace and service account.
//!
//! All are read from files on the node (no container-runtime or Kubernetes API calls, so the
//! agent needs no credentials for them) and cached, because they are the same for every flow of
//! a process, container or pod.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};

/// Largest executable hashed (bigger ones are skipped rather than stall attribution).
pub const MAX_HASHED_EXE: u64 = 512 * 1024 * 1024;

/// A pod's Kubernetes identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub service_account: Option<String>,
    /// The pod's name (the token's `kubernetes.io.pod.name` claim): it names the owning
    /// workload (`hais_shared::workload::pod_owner`).
    pub pod_name: Option<String>,
}

/// What a Docker container's `config.v2.json` says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    pub labels: Vec<(String, String)>,
    /// `Config.Image`: the reference it was started from.
    pub image: Option<String>,
    /// `Name` without the leading `/`.
    pub name: Option<String>,
}

/// Caches of per-file and per-container facts.
#[derive(Debug)]
pub struct Metadata {
    /// (device, inode, size, mtime) → SHA-256 hex: a changed file gets a new key.
    hashes: HashMap<(u64, u64, u64, i64), Option<String>>,
    containers: HashMap<String, DockerConfig>,
    pods: HashMap<String, Option<PodInfo>>,
    docker_root: PathBuf,
    kubelet_root: PathBuf,
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new("/var/lib/docker", "/var/lib/kubelet")
    }
}

impl Metadata {
    pub fn new(docker_root: impl Into<PathBuf>, kubelet_root: impl Into<PathBuf>) -> Self {
        Metadata {
            hashes: HashMap::new(),
            containers: HashMap::new(),
            pods: HashMap::new(),
            docker_root: docker_root.into(),
            kubelet_root: kubelet_root.into(),
        }
    }

    /// Fills in the facts of `p` that come from files beyond `/proc/<pid>`.
    pub fn enrich(&mut self, p: &mut crate::ProcessInfo) {
        p.exe_sha256 = self.exe_sha256(Path::new(&format!("/proc/{}/exe", p.pid)));
        if let Some(c) = &p.container
            && c.runtime == "docker"
        {
            let cfg = self.docker_config(&c.id);
            p.container_labels = cfg.labels;
            p.container_image = cfg.image;
            p.container_name = cfg.name;
        }
        if let Some(uid) = &p.pod_uid {
            p.pod = self.pod_info(uid);
        }
    }

    /// SHA-256 (lowercase hex) of the file at `path`, as the process sees it. `path` should be
    /// `/proc/<pid>/exe`, which opens the very file the process runs even if it was replaced or
    /// lives in another mount namespace.
    pub fn exe_sha256(&mut self, path: &Path) -> Option<String> {
        let mut f = fs::File::open(path).ok()?;
        let m = f.metadata().ok()?;
        let key = (m.dev(), m.ino(), m.size(), m.mtime());
        if let Some(h) = self.hashes.get(&key) {
            return h.clone();
        }
        let h = (m.size() <= MAX_HASHED_EXE)
            .then(|| {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match f.read(&mut buf) {
                        Ok(0) => break Some(hex::encode(hasher.finalize())),
                        Ok(n) => hasher.update(&buf[..n]),
                        Err(_) => break None,
                    }
                }
            })
            .flatten();
        self.hashes.insert(key, h.clone());
        h
    }

    /// A Docker container's labels, image and name, from
    /// `<docker root>/containers/<id>/config.v2.json`.
    pub fn docker_config(&mut self, container_id: &str) -> DockerConfig {
        if let Some(c) = self.containers.get(container_id) {
            return c.clone();
        }
        let path = self
            .docker_root
            .join("containers")
            .join(container_id)
            .join("config.v2.json");
        let v = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_default();
        let text = |v: Option<&serde_json::Value>| {
            v.and_then(|v| v.as_str())
                .map(|s| s.trim_start_matches('/').to_owned())
                .filter(|s| !s.is_empty())
        };
        let cfg = DockerConfig {
            labels: v
                .get("Config")
                .and_then(|c| c.get("Labels"))
                .and_then(|l| l.as_object())
                .map(|obj| {
                    obj.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
            image: text(v.get("Config").and_then(|c| c.get("Image"))),
            name: text(v.get("Name")),
        };
        self.containers.insert(container_id.to_owned(), cfg.clone());
        cfg
    }

    /// A pod's namespace and service account, from the service-account token the kubelet
    /// mounts for it (`<kubelet root>/pods/<uid>/volumes/kubernetes.io~projected/*/token`,
    /// or the `namespace` file next to it when the token cannot be read).
    pub fn pod_info(&mut self, pod_uid: &str) -> Option<PodInfo> {
        if let Some(p) = self.pods.get(pod_uid) {
            return p.clone();
        }
        let dir = self
            .kubelet_root
            .join("pods")
            .join(pod_uid)
            .join("volumes")
            .join("kubernetes.io~projected");
        let info = fs::read_dir(&dir).ok().and_then(|entries| {
            entries.filter_map(Result::ok).find_map(|e| {
                let vol = e.path();
                if let Some(p) = fs::read_to_string(vol.join("token"))
                    .ok()
                    .and_then(|t| pod_from_token(&t))
                {
                    return Some(p);
                }
                let ns = fs::read_to_string(vol.join("namespace")).ok()?;
                Some(PodInfo {
                    namespace: ns.trim().to_owned(),
                    service_account: None,
                    pod_name: None,
                })
            })
        });
        self.pods.insert(pod_uid.to_owned(), info.clone());
        info
    }
}

/// Namespace and service account from a Kubernetes service-account JWT's claims (the token's
/// signature is not checked: the file was written by the kubelet on this node, and only the
/// names are used). Reads `sub` = `system:serviceaccount:<ns>:<sa>`.
pub fn pod_from_token(jwt: &str) -> Option<PodInfo> {
    let payload = jwt.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let sub = v.get("sub")?.as_str()?;
    let rest = sub.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    let pod_name = v
        .get("kubernetes.io")
        .and_then(|k| k.get("pod"))
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    Some(PodInfo {
        namespace: ns.to_owned(),
        service_account: Some(sa.to_owned()),
        pod_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hais-meta-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn exe_hash_matches_and_is_cached_by_identity() {
        let d = tmp("hash");
        let f = d.join("bin");
        fs::write(&f, b"abc").unwrap();
        let mut m = Metadata::new(&d, &d);
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(m.exe_sha256(&f).as_deref(), Some(want));
        assert_eq!(m.hashes.len(), 1);
        assert_eq!(m.exe_sha256(&f).as_deref(), Some(want));
        assert_eq!(m.hashes.len(), 1, "second call is a cache hit");
        // The running test binary, through /proc/self/exe.
        assert_eq!(m.exe_sha256(Path::new("/proc/self/exe")).unwrap().len(), 64);
        assert_eq!(m.exe_sha256(&d.join("missing")), None);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn docker_labels_image_and_name_from_config_v2() {
        let d = tmp("docker");
        let id = "c".repeat(64);
        let cdir = d.join("containers").join(&id);
        fs::create_dir_all(&cdir).unwrap();
        fs::write(
            cdir.join("config.v2.json"),
            r#"{"Name":"/shop-web-1","Config":{"Image":"shop/web:1.2","Labels":{"app":"payments","tier":"api","n":1}}}"#,
        )
        .unwrap();
        let mut m = Metadata::new(&d, &d);
        let cfg = m.docker_config(&id);
        assert_eq!(cfg.image.as_deref(), Some("shop/web:1.2"));
        assert_eq!(cfg.name.as_deref(), Some("shop-web-1"));
        let mut l = cfg.labels;
        l.sort();
        assert_eq!(
            l,
            [
                ("app".into(), "payments".into()),
                ("tier".into(), "api".into())
            ]
        );
        assert_eq!(m.docker_config(&"d".repeat(64)), DockerConfig::default());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn pod_namespace_and_service_account_from_the_kubelet_dir() {
        let d = tmp("kubelet");
        let uid = "8d3e5c2a-1b4f-4e6a-9c7d-0e1f2a3b4c5d";
        let vol = d
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~projected/kube-api-access-x1");
        fs::create_dir_all(&vol).unwrap();
        let claims =
            URL_SAFE_NO_PAD.encode(br#"{"sub":"system:serviceaccount:payments:api","aud":["x"],"kubernetes.io":{"namespace":"payments","pod":{"name":"api-7d4b9c8f6d-x2x9q","uid":"8d3e5c2a"}}}"#);
        fs::write(
            vol.join("token"),
            format!("eyJhbGciOiJSUzI1NiJ9.{claims}.sig"),
        )
        .unwrap();
        let mut m = Metadata::new(&d, &d);
        assert_eq!(
            m.pod_info(uid),
            Some(PodInfo {
                namespace: "payments".into(),
                service_account: Some("api".into()),
                pod_name: Some("api-7d4b9c8f6d-x2x9q".into()),
            })
        );
        // Without a readable token, the namespace file still names the namespace.
        fs::remove_file(vol.join("token")).unwrap();
        fs::write(vol.join("namespace"), "payments\n").unwrap();
        let mut m = Metadata::new(&d, &d);
        assert_eq!(m.pod_info(uid).unwrap().service_account, None);
        assert_eq!(m.pod_info("00000000-0000-0000-0000-000000000000"), None);
        assert_eq!(pod_from_token("not.a.jwt"), None);
        fs::remove_dir_all(&d).unwrap();
    }
}
