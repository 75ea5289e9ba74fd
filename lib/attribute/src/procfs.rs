//! Processes from `/proc`: who holds a socket inode, and what that process is.
//!
//! Finding the holder of an inode means reading `/proc/<pid>/fd/*` links, which costs about a
//! microsecond per descriptor. Processes that opened sockets recently are likely to open the next
//! ones too (a service making outbound calls), so they are searched first ("hot" pids) before a
//! full scan, which goes newest pid first because a new socket's owner is often a new process.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::{MAX_CMDLINE, ProcessInfo, cgroup};

/// How many recently seen socket owners are searched before a full scan.
const HOT_PIDS: usize = 32;

/// Reads processes from a proc file system (normally `/proc`).
#[derive(Debug)]
pub struct ProcScanner {
    root: PathBuf,
    hot: VecDeque<u32>,
    users: HashMap<u32, Option<String>>,
    passwd: PathBuf,
    /// Processes whose fd directory was read (for the benchmark's cost accounting).
    pub fd_dirs_read: u64,
}

impl Default for ProcScanner {
    fn default() -> Self {
        Self::new("/proc", "/etc/passwd")
    }
}

impl ProcScanner {
    pub fn new(root: impl Into<PathBuf>, passwd: impl Into<PathBuf>) -> Self {
        ProcScanner {
            root: root.into(),
            hot: VecDeque::with_capacity(HOT_PIDS),
            users: HashMap::new(),
            passwd: passwd.into(),
            fd_dirs_read: 0,
        }
    }

    /// The process holding socket `inode`, if any. A socket inherited across `fork` is held by
    /// parent and children alike; the topmost holder in the ancestry is returned, because that
    /// is the process that created the socket (a shell, not the `head` reading from it; a
    /// pre-forking server's master).
    pub fn pid_of_inode(&mut self, inode: u32) -> Option<u32> {
        let target = format!("socket:[{inode}]");
        let target = OsStr::new(&target);
        let mut found = self.find_holder(target)?;
        while let Some(ppid) = self.parent_of(found) {
            if ppid <= 1 || !self.holds(ppid, target) {
                break;
            }
            found = ppid;
        }
        self.touch(found);
        Some(found)
    }

    fn find_holder(&mut self, target: &OsStr) -> Option<u32> {
        let hot: Vec<u32> = self.hot.iter().copied().collect();
        if let Some(pid) = hot.into_iter().find(|&pid| self.holds(pid, target)) {
            return Some(pid);
        }
        let mut pids: Vec<u32> = fs::read_dir(&self.root)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable_by(|a, b| b.cmp(a));
        pids.into_iter()
            .find(|&pid| !self.hot.contains(&pid) && self.holds(pid, target))
    }

    fn parent_of(&self, pid: u32) -> Option<u32> {
        let status = fs::read_to_string(self.root.join(pid.to_string()).join("status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
    }

    fn touch(&mut self, pid: u32) {
        self.hot.retain(|&p| p != pid);
        if self.hot.len() == HOT_PIDS {
            self.hot.pop_back();
        }
        self.hot.push_front(pid);
    }

    fn holds(&mut self, pid: u32, target: &OsStr) -> bool {
        let dir = self.root.join(pid.to_string()).join("fd");
        let Ok(entries) = fs::read_dir(&dir) else {
            // Gone, or not ours to read: drop it from the hot list.
            self.hot.retain(|&p| p != pid);
            return false;
        };
        self.fd_dirs_read += 1;
        entries
            .filter_map(Result::ok)
            .any(|e| fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == target))
    }

    /// Facts about `pid`, or `None` if it is gone.
    pub fn process_info(&mut self, pid: u32) -> Option<ProcessInfo> {
        let base = self.root.join(pid.to_string());
        let name = fs::read_to_string(base.join("comm"))
            .ok()?
            .trim_end()
            .to_owned();
        let status = fs::read_to_string(base.join("status")).ok()?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
        let exe = fs::read_link(base.join("exe"))
            .ok()
            .map(|p| String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned());
        let cmdline = fs::read(base.join("cmdline"))
            .map(|b| cmdline_text(&b))
            .unwrap_or_default();
        let cgroup = fs::read_to_string(base.join("cgroup"))
            .ok()
            .and_then(|t| cgroup::path_from_proc(&t));
        let container = cgroup.as_deref().and_then(cgroup::container_of);
        let pod_uid = cgroup.as_deref().and_then(cgroup::pod_uid_of);
        let user = self.user_name(uid);
        Some(ProcessInfo {
            pid,
            name,
            exe,
            cmdline,
            uid,
            user,
            cgroup,
            container,
            pod_uid,
            ..ProcessInfo::default()
        })
    }

    /// The name of `uid` from the passwd file, cached (a miss rereads the file once).
    pub fn user_name(&mut self, uid: u32) -> Option<String> {
        if let Some(u) = self.users.get(&uid) {
            return u.clone();
        }
        let text = fs::read_to_string(&self.passwd).unwrap_or_default();
        for line in text.lines() {
            let mut f = line.split(':');
            if let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next())
                && let Ok(id) = id.parse::<u32>()
            {
                self.users.insert(id, Some(name.to_owned()));
            }
        }
        self.users.entry(uid).or_insert(None).clone()
    }
}

/// `/proc/<pid>/cmdline` (NUL-separated) as one line, truncated to [`MAX_CMDLINE`] bytes on a
/// character boundary.
pub fn cmdline_text(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    let joined: Vec<u8> = raw.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
    let mut s = String::from_utf8_lossy(&joined).into_owned();
    if s.len() > MAX_CMDLINE {
        let mut cut = MAX_CMDLINE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_is_joined_and_truncated() {
        assert_eq!(cmdline_text(b"curl\0-s\0http://x/\0"), "curl -s http://x/");
        assert_eq!(cmdline_text(b""), "");
        let long = "é".repeat(MAX_CMDLINE);
        let t = cmdline_text(long.as_bytes());
        assert!(t.len() <= MAX_CMDLINE && t.len() >= MAX_CMDLINE - 1);
    }

    #[test]
    fn reads_this_process() {
        let mut p = ProcScanner::default();
        let me = p.process_info(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(!me.name.is_empty());
        assert_eq!(
            me.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .and_then(|e| e.to_str().map(str::to_owned))
                .as_deref()
        );
        assert!(me.cgroup.is_some());
        assert_eq!(p.user_name(0).as_deref(), Some("root"));
        assert_eq!(p.user_name(4_000_000_000), None);
    }

    #[test]
    fn finds_the_holder_of_a_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sd = crate::sockdiag::SockDiag::open().unwrap();
        let local = l.local_addr().unwrap();
        let owner = sd
            .find(
                crate::Proto::Tcp,
                local,
                crate::sockdiag::wildcard_for(local),
            )
            .unwrap()
            .expect("listener found");
        assert_ne!(owner.inode, 0);
        let mut p = ProcScanner::default();
        assert_eq!(p.pid_of_inode(owner.inode), Some(std::process::id()));
        // Second lookup hits the hot list first: this process, then its parent's check, no scan.
        let before = p.fd_dirs_read;
        assert_eq!(p.pid_of_inode(owner.inode), Some(std::process::id()));
        assert!(
            p.fd_dirs_read <= before + 2,
            "{} > {before} + 2",
            p.fd_dirs_read
        );
        assert_eq!(p.pid_of_inode(1), None);
    }
}
