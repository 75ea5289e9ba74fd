//! Processes from `/proc`: who holds a socket inode, and what that process is.
//!
//! Finding the holder of an inode means reading `/proc/<pid>/fd/*` links, which costs about a
//! microsecond per descriptor. Processes that opened sockets recently are likely to open the next
//! ones too (a service making outbound calls), so they are searched first ("hot" pids) before a
//! full scan, which goes newest pid first because a new socket's owner is often a new process.

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// Processes whose fd directory was read (cost accounting for the benchmark).
    pub fd_dirs_read: u64,
    /// Sockets whose owner was found among the recently seen owners.
    pub hot_hits: u64,
    /// Batches that needed a scan of every process.
    pub full_scans: u64,
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
            hot_hits: 0,
            full_scans: 0,
        }
    }

    /// The process holding socket `inode`, if any (see [`Self::pids_of_inodes`]).
    pub fn pid_of_inode(&mut self, inode: u32) -> Option<u32> {
        self.pids_of_inodes(&[inode]).get(&inode).copied()
    }

    /// The processes holding each of `inodes`. Resolving a batch costs about as much as one
    /// inode, since every inode is looked for in each process's descriptors while they are
    /// read: reading a busy process's descriptors is the expensive part, and at high flow
    /// rates the attributor hands over several flows at once.
    ///
    /// A socket inherited across `fork` is held by parent and children alike; the topmost
    /// holder in the ancestry is returned, because that is the process that created the socket
    /// (a shell, not the `head` reading from it; a pre-forking server's master).
    pub fn pids_of_inodes(&mut self, inodes: &[u32]) -> HashMap<u32, u32> {
        let mut want: HashSet<u32> = inodes.iter().copied().filter(|&i| i != 0).collect();
        let mut found: HashMap<u32, u32> = HashMap::new();
        let hot: Vec<u32> = self.hot.iter().copied().collect();
        for pid in hot {
            if want.is_empty() {
                break;
            }
            self.collect(pid, &mut want, &mut found);
        }
        self.hot_hits += found.len() as u64;
        if !want.is_empty() {
            self.full_scans += 1;
            let mut pids: Vec<u32> = fs::read_dir(&self.root)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            // Newest first: a new socket's owner is often a new process.
            pids.sort_unstable_by(|a, b| b.cmp(a));
            for pid in pids {
                if want.is_empty() {
                    break;
                }
                if !self.hot.contains(&pid) {
                    self.collect(pid, &mut want, &mut found);
                }
            }
        }
        // Walk each holder up to the topmost ancestor that holds the same socket.
        let mut checked: HashMap<u32, HashSet<u32>> = HashMap::new();
        for (inode, pid) in found.iter_mut() {
            while let Some(ppid) = self.parent_of(*pid) {
                if ppid <= 1 {
                    break;
                }
                let held = checked
                    .entry(ppid)
                    .or_insert_with(|| self.socket_inodes(ppid).into_iter().collect());
                if !held.contains(inode) {
                    break;
                }
                *pid = ppid;
            }
        }
        let owners: HashSet<u32> = found.values().copied().collect();
        for pid in owners {
            self.touch(pid);
        }
        found
    }

    /// Moves the inodes of `want` that `pid` holds into `found`.
    fn collect(&mut self, pid: u32, want: &mut HashSet<u32>, found: &mut HashMap<u32, u32>) {
        for ino in self.socket_inodes(pid) {
            if want.remove(&ino) {
                found.insert(ino, pid);
            }
        }
    }

    fn touch(&mut self, pid: u32) {
        self.hot.retain(|&p| p != pid);
        if self.hot.len() == HOT_PIDS {
            self.hot.pop_back();
        }
        self.hot.push_front(pid);
    }

    /// Inodes of every socket `pid` holds (empty when it is gone or not ours to read).
    fn socket_inodes(&mut self, pid: u32) -> Vec<u32> {
        let dir = self.root.join(pid.to_string()).join("fd");
        let flags = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::CLOEXEC;
        let Ok(dirfd) = rustix::fs::open(&dir, flags, rustix::fs::Mode::empty()) else {
            self.hot.retain(|&p| p != pid);
            return Vec::new();
        };
        self.fd_dirs_read += 1;
        let mut out = Vec::new();
        if let Ok(mut d) = rustix::fs::Dir::read_from(&dirfd) {
            while let Some(Ok(e)) = d.read() {
                let Some(fd) = e
                    .file_name()
                    .to_str()
                    .ok()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let ino = link_inode(&dirfd, fd);
                if ino != 0 {
                    out.push(ino);
                }
            }
        }
        out
    }

    fn parent_of(&self, pid: u32) -> Option<u32> {
        self.stat(pid).map(|(ppid, _)| ppid)
    }

    /// Parent pid and start time (clock ticks since boot) from `/proc/<pid>/stat`, which is much
    /// cheaper for the kernel to produce than `status`. The start time tells a reused pid from
    /// the process that had it before.
    pub fn stat(&self, pid: u32) -> Option<(u32, u64)> {
        let text = fs::read_to_string(self.root.join(pid.to_string()).join("stat")).ok()?;
        // The command name is in parentheses and may itself hold spaces and parentheses.
        let rest = text.get(text.rfind(')')? + 2..)?;
        let mut f = rest.split(' ');
        let ppid = f.nth(1)?.parse().ok()?;
        let start = f.nth(17)?.parse().ok()?;
        Some((ppid, start))
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

/// The socket inode descriptor `fd` refers to, or 0 for anything else. `stat` through the
/// `/proc/<pid>/fd/<n>` link reaches the socket's own inode without formatting the link text
/// (`socket:[N]`) that `readlink` would build, which is measurably cheaper per descriptor.
fn link_inode(dirfd: &impl rustix::fd::AsFd, fd: u32) -> u32 {
    match rustix::fs::statat(dirfd, fd.to_string().as_str(), rustix::fs::AtFlags::empty()) {
        Ok(st)
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket =>
        {
            u32::try_from(st.st_ino).unwrap_or(0)
        }
        _ => 0,
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
    fn stat_gives_parent_and_start_time() {
        let p = ProcScanner::default();
        let (ppid, start) = p.stat(std::process::id()).unwrap();
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let want: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(ppid, want);
        assert!(start > 0);
        assert_eq!(p.stat(u32::MAX), None);
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
