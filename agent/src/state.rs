//! The agent's state directory (default `/var/lib/hais-agent`, mode 0700).
//!
//! One place for everything an agent must keep across restarts and nobody else may read:
//!
//! | file | what |
//! |---|---|
//! | `svid.pem`, `svid.key`, `bundle.pem` | the X.509-SVID, its key and the trust bundle ([`hais_svid::Svid::save`], mode 0600) |
//! | `server` | the control plane's `HOST:PORT` given at enrollment, so `run` needs no `--server` |
//! | `spool/` | events waiting for the uplink ([`crate::uplink::spool`]) |
//! | `agent.sock` | the running agent's status socket (`hais-agent status`) |
//! | `lock` | held (`flock`) by the running agent, so two agents never share a spool |

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hais_svid::{Bundle, Svid, SvidError};
use thiserror::Error;

/// Where the state lives unless configured otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hais-agent";

const SERVER_FILE: &str = "server";
const SOCKET_FILE: &str = "agent.sock";
const LOCK_FILE: &str = "lock";
const SPOOL_DIR: &str = "spool";

/// Why the state directory can't be used. Messages name the path and say what to do.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: another hais-agent is running with this state directory")]
    Locked { path: String },
    #[error(
        "identity in {dir} is unusable ({source}); enroll again with `hais-agent enroll --force`"
    )]
    Identity {
        dir: String,
        #[source]
        source: SvidError,
    },
}

impl StateError {
    /// sysexits.h: 75 (EX_TEMPFAIL) for a running agent, 77 (EX_NOPERM) for a permission
    /// problem, 78 (EX_CONFIG) for a broken identity, 74 (EX_IOERR) otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StateError::Locked { .. } => 75,
            StateError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => 77,
            StateError::Io { .. } => 74,
            StateError::Identity { .. } => 78,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A state directory (not necessarily existing yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    path: PathBuf,
}

/// The running agent's hold on its state directory; released when dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.path.join(SPOOL_DIR)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.path.join(SOCKET_FILE)
    }

    /// Creates the directory (mode 0700) if needed. An existing directory open to others is
    /// tightened, since it holds a private key.
    pub fn ensure(&self) -> Result<(), StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(io_err(&self.path))?;
        let meta = fs::metadata(&self.path).map_err(io_err(&self.path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700))
                .map_err(io_err(&self.path))?;
        }
        Ok(())
    }

    /// True when an SVID has been stored here.
    pub fn is_enrolled(&self) -> bool {
        self.path.join("svid.pem").exists()
    }

    /// The stored identity, `None` when not enrolled.
    pub fn load_identity(&self) -> Result<Option<(Svid, Bundle)>, StateError> {
        if !self.is_enrolled() {
            return Ok(None);
        }
        Svid::load(&self.path)
            .map(Some)
            .map_err(|source| StateError::Identity {
                dir: self.path.display().to_string(),
                source,
            })
    }

    /// Remembers the control plane's address given at enrollment.
    pub fn save_server(&self, server: &str) -> Result<(), StateError> {
        let path = self.path.join(SERVER_FILE);
        fs::write(&path, format!("{server}\n")).map_err(io_err(&path))
    }

    /// The address saved at enrollment, if any.
    pub fn load_server(&self) -> Option<String> {
        fs::read_to_string(self.path.join(SERVER_FILE))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Takes the directory's lock, failing at once when another agent holds it.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let path = self.path.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(StateError::Locked {
                path: self.path.display().to_string(),
            }),
            Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_creates_a_private_directory_and_tightens_an_open_one() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path().join("state"));
        s.ensure().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(s.path()), 0o700);
        fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
        s.ensure().unwrap();
        assert_eq!(mode(s.path()), 0o700);
    }

    #[test]
    fn server_address_round_trips_and_identity_is_absent() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        assert_eq!(s.load_server(), None);
        s.save_server("cp.example:3001").unwrap();
        assert_eq!(s.load_server().as_deref(), Some("cp.example:3001"));
        assert!(!s.is_enrolled());
        assert!(s.load_identity().unwrap().is_none());
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let first = s.lock().unwrap();
        let e = s.lock().unwrap_err();
        assert_eq!(e.exit_code(), 75);
        drop(first);
        s.lock().unwrap();
    }
}
