//! Workload attribution: which local process (and user, cgroup, container, pod) owns the socket
//! behind a flow the agent sees on the wire.
//!
//! The kernel knows the owner of every socket, but only for as long as the socket exists: a
//! `curl` that makes one request and exits takes that knowledge with it. So attribution runs at
//! the *start* of a flow, on its own thread ([`Attributor`]), and the answer waits in a bounded
//! cache until the flow's event is built. Capture never waits for it.
//!
//! How one flow is resolved:
//! 0. An outbound TCP flow the [`ebpf`] connect tracer saw is answered from its record (who
//!    called `connect()`), the process's facts read from `/proc` while it lives. Everything
//!    else takes the steps below.
//! 1. [`sockdiag`] asks the kernel (netlink `NETLINK_SOCK_DIAG`) for the socket with the flow's
//!    exact addresses, first as the initiator (outbound), then as the responder (inbound). The
//!    answer carries the socket's inode and owner uid. An inbound connection not yet accepted
//!    has no inode; it is then attributed to the listening socket's owner.
//! 2. [`procfs`] finds the process holding that inode among `/proc/<pid>/fd`, from likely to
//!    exhaustive: the descriptors likely to be new in processes that owned sockets recently
//!    (their descriptors are remembered between passes), then the processes created since the
//!    last pass (the last pid handed out is in `/proc/loadavg`), then everything; and reads its
//!    facts. The queries of a batch of flows go to the kernel in one sock_diag round trip.
//! 3. [`cgroup`] turns the process's cgroup path into a container id and a Kubernetes pod UID.

pub mod attributor;
pub mod cgroup;
pub mod ebpf;
mod fdtable;
pub mod metadata;
pub mod procfs;
pub mod sockdiag;

use std::net::SocketAddr;

pub use attributor::{Attributor, AttributorConfig, AttributorStats};

/// Transport of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A flow as the agent saw it: `src` is the endpoint that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Which end of the flow is local.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The local process opened the flow.
    Outbound,
    /// The flow came in to a local listener.
    Inbound,
}

/// What is known about the process behind a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Short name (`/proc/<pid>/comm`).
    pub name: String,
    /// Executable path (`/proc/<pid>/exe`), when readable.
    pub exe: Option<String>,
    /// Command line with arguments separated by spaces, truncated to [`MAX_CMDLINE`] bytes.
    pub cmdline: String,
    /// Real uid of the process.
    pub uid: u32,
    /// User name of `uid`, when `/etc/passwd` has it.
    pub user: Option<String>,
    /// The process's cgroup (v2 unified path, or the v1 hierarchy that names a container).
    pub cgroup: Option<String>,
    pub container: Option<cgroup::Container>,
    /// Kubernetes pod UID, from the cgroup path.
    pub pod_uid: Option<String>,
    /// SHA-256 of the executable (lowercase hex), when readable.
    pub exe_sha256: Option<String>,
    /// Labels of the Docker container, when the process runs in one.
    pub container_labels: Vec<(String, String)>,
    /// Image reference and name of the Docker container.
    pub container_image: Option<String>,
    pub container_name: Option<String>,
    /// Namespace and service account of the Kubernetes pod.
    pub pod: Option<metadata::PodInfo>,
}

/// Longest command line kept, in bytes. Command lines can hold secrets and be megabytes long;
/// the beginning identifies the program.
pub const MAX_CMDLINE: usize = 512;

/// The outcome for one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// The process was found.
    Process {
        direction: Direction,
        process: std::sync::Arc<ProcessInfo>,
    },
    /// The socket was found but no process holds it any more (it exited, or the socket is
    /// owned by the kernel); the socket's uid is still known.
    SocketOnly { direction: Direction, uid: u32 },
    /// Neither end of the flow is a socket of this host (traffic passing through, another
    /// network namespace, or a socket already closed).
    NotLocal,
    /// Attribution was skipped: the request queue was full.
    Dropped,
    /// Not resolved (yet).
    Unknown,
}

impl Attribution {
    /// Short reason for logs and events when no process is known.
    pub fn reason(&self) -> &'static str {
        match self {
            Attribution::Process { .. } => "attributed",
            Attribution::SocketOnly { .. } => "process-gone",
            Attribution::NotLocal => "not-local",
            Attribution::Dropped => "queue-full",
            Attribution::Unknown => "unknown",
        }
    }
}

impl Attribution {
    /// The event form of this attribution: the facts the agent reports (the control plane adds
    /// the SPIFFE ID). `None` when attribution did not run for the flow.
    pub fn to_workload(&self) -> Option<hais_shared::event::Workload> {
        use hais_shared::event::Workload;
        let dir = |d: &Direction| {
            Some(match d {
                Direction::Outbound => "outbound".to_owned(),
                Direction::Inbound => "inbound".to_owned(),
            })
        };
        match self {
            Attribution::Unknown => None,
            Attribution::Process {
                direction,
                process: p,
            } => Some(Workload {
                pid: Some(p.pid),
                process: Some(p.name.clone()).filter(|n| !n.is_empty()),
                uid: Some(p.uid),
                user: p.user.clone(),
                exe: p.exe.clone(),
                exe_sha256: p.exe_sha256.clone(),
                cmdline: Some(p.cmdline.clone()).filter(|c| !c.is_empty()),
                cgroup: p.cgroup.clone(),
                container: p.container.as_ref().map(|c| c.id.clone()),
                container_runtime: p.container.as_ref().map(|c| c.runtime.to_owned()),
                container_labels: p.container_labels.iter().cloned().collect(),
                container_image: p.container_image.clone(),
                container_name: p.container_name.clone(),
                k8s_pod_name: p.pod.as_ref().and_then(|x| x.pod_name.clone()),
                pod: p.pod_uid.clone(),
                k8s_namespace: p.pod.as_ref().map(|x| x.namespace.clone()),
                k8s_service_account: p.pod.as_ref().and_then(|x| x.service_account.clone()),
                direction: dir(direction),
                ..Workload::default()
            }),
            Attribution::SocketOnly { direction, uid } => Some(Workload {
                uid: Some(*uid),
                direction: dir(direction),
                unattributed: Some(self.reason().to_owned()),
                ..Workload::default()
            }),
            Attribution::NotLocal | Attribution::Dropped => Some(Workload {
                unattributed: Some(self.reason().to_owned()),
                ..Workload::default()
            }),
        }
    }
}
