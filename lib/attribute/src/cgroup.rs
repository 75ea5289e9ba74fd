//! Container and pod identity from a cgroup path.
//!
//! Container runtimes name the cgroup of each container after its id, and the kubelet nests
//! containers under a cgroup named after the pod UID. The shapes differ by runtime and by
//! cgroup driver (cgroupfs or systemd), so each known shape is matched here:
//!
//! | runtime | cgroupfs driver | systemd driver |
//! |---|---|---|
//! | docker | `/docker/<id>` | `/system.slice/docker-<id>.scope` |
//! | containerd (CRI) | `/kubepods/<qos>/pod<uid>/<id>` | `…/cri-containerd-<id>.scope` |
//! | CRI-O | `/kubepods/<qos>/pod<uid>/crio-<id>` | `…/crio-<id>.scope` |
//! | podman | `/libpod_parent/libpod-<id>` | `/machine.slice/libpod-<id>.scope` |
//!
//! Pod UIDs appear as `pod<uid>` with dashes (cgroupfs) or underscores (systemd slices,
//! `kubepods-besteffort-pod<uid>.slice`); they are returned with dashes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The container a process runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Full container id (64 lowercase hex characters).
    pub id: String,
    /// `docker`, `containerd`, `cri-o`, `podman`, or `unknown` for a bare id under kubepods.
    pub runtime: &'static str,
}

/// The cgroup path of a process from the text of `/proc/<pid>/cgroup`, choosing among the
/// hierarchies (hosts may mount cgroup v1 controllers next to the v2 unified tree): a path that
/// names a container wins, then the v2 path unless it is the root, then the first non-root v1
/// path, then `/`.
pub fn path_from_proc(text: &str) -> Option<String> {
    let mut v2 = None;
    let mut v1 = None;
    let mut any = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if container_of(path).is_some() {
            return Some(path.to_owned());
        }
        any.get_or_insert(path);
        if path != "/" {
            if id == "0" {
                v2 = Some(path);
            } else if v1.is_none() {
                v1 = Some(path);
            }
        }
    }
    v2.or(v1).or(any).map(str::to_owned)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The container named by the deepest segment of `path` that looks like one.
pub fn container_of(path: &str) -> Option<Container> {
    const PREFIXES: [(&str, &str); 5] = [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
        ("containerd-", "containerd"),
    ];
    for (i, seg) in path.rsplit('/').enumerate() {
        let bare = seg.strip_suffix(".scope").unwrap_or(seg);
        for (prefix, runtime) in PREFIXES {
            if let Some(id) = bare.strip_prefix(prefix)
                && is_container_id(id)
            {
                return Some(Container {
                    id: id.to_owned(),
                    runtime,
                });
            }
        }
        if is_container_id(bare) {
            // `/docker/<id>` names its runtime in the parent segment.
            let parent = path.rsplit('/').nth(i + 1).unwrap_or("");
            let runtime = if parent == "docker" {
                "docker"
            } else {
                "unknown"
            };
            return Some(Container {
                id: bare.to_owned(),
                runtime,
            });
        }
    }
    None
}

/// The Kubernetes pod UID in `path`, with dashes.
pub fn pod_uid_of(path: &str) -> Option<String> {
    if !path.contains("kubepods") {
        return None;
    }
    for seg in path.split('/') {
        let seg = seg.strip_suffix(".slice").unwrap_or(seg);
        // systemd: kubepods-burstable-pod<uid_with_underscores>; cgroupfs: pod<uid>
        let Some(pos) = seg.rfind("pod") else {
            continue;
        };
        let uid = seg[pos + 3..].replace('_', "-");
        if hais_shared::selector::is_uuid(&uid) {
            return Some(uid);
        }
    }
    None
}

/// Cgroup (v2) paths by cgroup id, the inode number of the cgroup's directory: the eBPF
/// tracer records a connecting process's cgroup id, and a process that has exited since still
/// has its container's cgroup, which names the container and pod.
#[derive(Debug)]
pub struct CgroupIds {
    /// Where the cgroup v2 tree is mounted; `None` on hosts without one.
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    /// When the tree was last walked: an unknown id walks it again at most once a second.
    walked: Option<Instant>,
}

/// Most cgroup directories indexed (a host has hundreds to a few thousand).
const MAX_CGROUPS: usize = 100_000;

impl Default for CgroupIds {
    fn default() -> Self {
        let root = std::fs::read_to_string("/proc/self/mounts")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
                })
            });
        CgroupIds::new(root)
    }
}

impl CgroupIds {
    pub fn new(root: Option<PathBuf>) -> CgroupIds {
        CgroupIds {
            root,
            paths: HashMap::new(),
            walked: None,
        }
    }

    /// The path (as in `/proc/<pid>/cgroup`, from the tree's root) of cgroup `id`.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        if self
            .walked
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.walk();
        self.paths.get(&id).cloned()
    }

    fn walk(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.walked = Some(Instant::now());
        self.paths.clear();
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut todo = vec![(root, String::from("/"))];
        while let Some((dir, rel)) = todo.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            self.paths.insert(meta.ino(), rel.clone());
            if self.paths.len() >= MAX_CGROUPS {
                return;
            }
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    todo.push((e.path(), child));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e9c1a2b7d8e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";
    const POD: &str = "8d3e5c2a-1b4f-4e6a-9c7d-0e1f2a3b4c5d";

    #[test]
    fn every_runtime_and_driver_shape() {
        let pod_us = POD.replace('-', "_");
        let cases = [
            (format!("/docker/{ID}"), "docker", None),
            (format!("/system.slice/docker-{ID}.scope"), "docker", None),
            (
                format!("/kubepods/burstable/pod{POD}/{ID}"),
                "unknown",
                Some(POD),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_us}.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
                Some(POD),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_us}.slice/crio-{ID}.scope"
                ),
                "cri-o",
                Some(POD),
            ),
            (
                format!("/kubepods/besteffort/pod{POD}/crio-{ID}"),
                "cri-o",
                Some(POD),
            ),
            (format!("/machine.slice/libpod-{ID}.scope"), "podman", None),
        ];
        for (path, runtime, pod) in cases {
            let c = container_of(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(c.id, ID, "{path}");
            assert_eq!(c.runtime, runtime, "{path}");
            assert_eq!(pod_uid_of(&path).as_deref(), pod, "{path}");
        }
    }

    #[test]
    fn host_processes_have_no_container() {
        for p in [
            "/user.slice/user-1000.slice/session-2.scope",
            "/system.slice/sshd.service",
            "/",
            "/docker/not-an-id",
            &format!("/docker/{}", &ID[..63]),
        ] {
            assert_eq!(container_of(p), None, "{p}");
            assert_eq!(pod_uid_of(p), None, "{p}");
        }
    }

    #[test]
    fn proc_cgroup_text_prefers_containers_then_v2_then_v1() {
        assert_eq!(
            path_from_proc("0::/system.slice/x.service\n").as_deref(),
            Some("/system.slice/x.service")
        );
        // Hybrid host: v2 at the root, the real placement in a v1 controller.
        assert_eq!(
            path_from_proc("4:memory:/process_api/abc\n1:cpu:/\n0::/\n").as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(path_from_proc("1:cpu:/\n0::/\n").as_deref(), Some("/"));
        let v1 = format!("12:cpuset:/\n11:memory:/docker/{ID}\n1:name=systemd:/init.scope\n");
        assert_eq!(path_from_proc(&v1), Some(format!("/docker/{ID}")));
        assert_eq!(
            path_from_proc("4:cpu:/a\n3:memory:/b\n").as_deref(),
            Some("/a")
        );
        assert_eq!(path_from_proc(""), None);
        assert_eq!(path_from_proc("garbage"), None);
    }

    #[test]
    fn cgroup_ids_name_their_directories() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("hais-cgroup-ids-{}", std::process::id()));
        std::fs::create_dir_all(root.join("system.slice/docker-abc.scope")).unwrap();
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        let mut ids = CgroupIds::new(Some(root.clone()));
        let leaf = ino("system.slice/docker-abc.scope");
        assert_eq!(
            ids.path(leaf).as_deref(),
            Some("/system.slice/docker-abc.scope")
        );
        assert_eq!(ids.path(ino("")).as_deref(), Some("/"));
        // A cgroup created since the last walk is found once the once-a-second limit allows.
        std::fs::create_dir(root.join("new")).unwrap();
        assert_eq!(ids.path(ino("new")), None);
        ids.walked = None;
        assert_eq!(ids.path(ino("new")).as_deref(), Some("/new"));
        assert_eq!(CgroupIds::new(None).path(1), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
