//! Processes from `/proc`: who holds a socket inode, and what that process is.
//!
//! Finding the holder of an inode means probing `/proc/<pid>/fd/*` links, about a microsecond
//! per descriptor. Processes that held sockets recently are likely to hold the next ones too (a
//! service making or accepting calls), so they are *tracked*: their `/proc/<pid>/fd` directory
//! stays open and what each descriptor held is remembered ([`FdTable`]), so a pass probes the
//! descriptors likely to be new first and stops when every socket it looks for is found.
//!
//! A socket the likely descriptors of tracked processes do not hold often belongs to a process
//! created since the last pass (a cron job, a `curl`). Listing `/proc` to find those costs a
//! `getdents` entry per process on the host; instead the scanner reads the last pid the kernel
//! handed out (the last field of `/proc/loadavg`, a few bytes) and looks only at the pids
//! handed out since it last looked (64 at most). Only sockets neither these nor the
//! tracked processes hold need a scan of every process, newest pid first.
//!
//! An open `/proc/<pid>/fd` directory belongs to the process it was opened for, not to the pid:
//! once that process is gone, reading it fails even if the pid has been given to another
//! process. Tracked processes are also keyed by start time, which a full scan checks before
//! skipping a pid it already tracks.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Dir, Mode, OFlags};
use rustix::process::{Pid, PidfdFlags};

mod tracked;

use self::tracked::Tracked;
use crate::fdtable::{FdTable, Tier};
use crate::{MAX_CMDLINE, ProcessInfo, cgroup};

/// How many recent socket owners (and their parents) are tracked. Each holds one open
/// directory descriptor and the remembered table of its descriptors.
const TRACKED: usize = 32;

/// Most pids handed out since the last pass that are looked at before the tracked processes
/// are searched in full. More than this between two passes (a fork storm, or threads, which
/// take pids too) leaves the older ones to the full scan.
const NEW_PIDS: usize = 64;

/// A new pid with more descriptors than this is not searched among the new ones: new
/// processes hold few, and a new *thread* of a large process (threads take pids and show
/// their process's descriptors) would cost a probe per descriptor. Left to the full scan.
const NEW_PID_MAX_FDS: usize = 256;

/// A parent holding more descriptors than this is not checked for holding its child's socket
/// (see [`ProcScanner::holders`]). Shells, supervisors and pre-forking servers' masters hold
/// far fewer.
const WALK_MAX_FDS: usize = 64;

/// How many young processes (seen new, holding nothing sought yet) are kept, and for how
/// long: a new process usually opens its connection within moments of starting.
const YOUNG: usize = 16;
const YOUNG_FOR: Duration = Duration::from_secs(2);

/// The kernel hands pids out cyclically and starts again above this after `pid_max`.
const RESERVED_PIDS: u32 = 300;

/// The process holding a socket, identified beyond its pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Holder {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22): tells a reused pid
    /// from the process that had it before.
    pub start: u64,
}

/// Cost and hit counters (for the benchmark and the agent's statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// `/proc/<pid>/fd` directories listed.
    pub fd_dirs_read: u64,
    /// Descriptors probed (one `stat` each): the main cost.
    pub fd_probes: u64,
    /// Sockets whose owner was found among the tracked processes.
    pub hot_hits: u64,
    /// Sockets whose owner was found among the processes created since the last pass.
    pub new_pid_hits: u64,
    /// Passes that needed a scan of every process.
    pub full_scans: u64,
}

/// Reads processes from a proc file system (normally `/proc`).
#[derive(Debug)]
pub struct ProcScanner {
    root: PathBuf,
    /// The proc root, opened on first use; everything under it is opened relative to it.
    root_dir: Option<Arc<OwnedFd>>,
    /// Tracked processes, most recently useful first.
    tracked: Vec<Tracked>,
    pass: u64,
    /// The last pid handed out when new pids were last looked at, and the pid limit (where
    /// allocation wraps); `None` until first read, or when `/proc/loadavg` is unreadable.
    last_pid: Option<u32>,
    pid_max: Option<u32>,
    /// `/proc/loadavg`, kept open.
    loadavg: Option<OwnedFd>,
    /// Processes seen new that held nothing sought then, with when they were first looked at.
    young: Vec<(Instant, Tracked)>,
    users: HashMap<u32, Option<String>>,
    passwd: PathBuf,
    pub counters: Counters,
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
            root_dir: None,
            tracked: Vec::with_capacity(TRACKED),
            pass: 0,
            last_pid: None,
            pid_max: None,
            loadavg: None,
            young: Vec::new(),
            users: HashMap::new(),
            passwd: passwd.into(),
            counters: Counters::default(),
        }
    }

    /// The process holding socket `inode`, if any (see [`Self::holders`]).
    pub fn pid_of_inode(&mut self, inode: u32) -> Option<u32> {
        self.holders(&[inode], |_| {}).get(&inode).map(|h| h.pid)
    }

    /// How many processes are tracked now.
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// The processes holding each of `inodes`. Resolving a batch costs little more than one
    /// inode: descriptors are probed once per pass, each checked against every inode sought.
    ///
    /// The search goes from likely to exhaustive: the tracked processes' likely descriptors,
    /// then the processes created lately, then every descriptor of the tracked processes, then
    /// every process. `drop_closed` is given the inodes the first two steps did not find, to
    /// remove those whose sockets have closed meanwhile, before the exhaustive steps: a socket
    /// closed since it was looked up is held by nobody, and asking the kernel (sock_diag) is
    /// far cheaper than searches that must come up empty.
    ///
    /// A socket inherited across `fork` is held by parent and children alike; the topmost
    /// holder in the ancestry is returned, because that is the process that created the socket
    /// (a shell, not the `head` reading from it; a pre-forking server's master). The walk up
    /// stops below a parent with more than 64 descriptors: proving that it does *not* hold
    /// the socket would mean probing them all, for every child's connection.
    pub fn holders(
        &mut self,
        inodes: &[u32],
        drop_closed: impl FnOnce(&mut HashSet<u32>),
    ) -> HashMap<u32, Holder> {
        self.pass += 1;
        let pass = self.pass;
        let mut want: HashSet<u32> = inodes.iter().copied().filter(|&i| i != 0).collect();
        let mut found: HashMap<u32, Holder> = HashMap::new();
        self.search_tracked(pass, &mut want, &mut found);
        let hot = found.len();
        if !want.is_empty() {
            self.search_new(pass, &mut want, &mut found);
            self.counters.new_pid_hits += (found.len() - hot) as u64;
        }
        if !want.is_empty() {
            drop_closed(&mut want);
        }
        let before = found.len();
        for t in &mut self.tracked {
            if want.is_empty() {
                break;
            }
            t.search_all(pass, &mut want, &mut found, &mut self.counters);
        }
        self.counters.hot_hits += (hot + found.len() - before) as u64;
        if !want.is_empty()
            && let Some(root) = self.root_dir()
        {
            let before = found.len();
            self.search_young(&root, true, pass, &mut want, &mut found);
            self.counters.new_pid_hits += (found.len() - before) as u64;
        }
        if !want.is_empty() {
            self.counters.full_scans += 1;
            self.scan_all(pass, &mut want, &mut found);
        }
        // Walk each holder up to the topmost ancestor that holds the same socket.
        for (&inode, holder) in found.iter_mut() {
            while let Some(parent) = self.parent_holding(*holder, inode, pass) {
                *holder = parent;
            }
        }
        self.forget_exited();
        self.tracked.retain(|t| t.alive);
        for t in &mut self.tracked {
            t.table.seed();
        }
        let owners: HashSet<Holder> = found.values().copied().collect();
        for h in owners {
            if let Some(i) = self.index_of(h) {
                self.touch(i);
            }
        }
        found
    }

    /// Looks for `want` where the tracked processes are likely to hold it: where each socket
    /// was seen before, then the free and churning tiers across all of them (so a free number
    /// anywhere is probed before a remembered one anywhere), each cut short as
    /// [`Tracked::search`] says. Their exhaustive search comes later.
    fn search_tracked(
        &mut self,
        pass: u64,
        want: &mut HashSet<u32>,
        found: &mut HashMap<u32, Holder>,
    ) {
        let stats = &mut self.counters;
        for t in &mut self.tracked {
            t.search_remembered(pass, want, found, stats);
        }
        for tier in [Tier::Free, Tier::Churning] {
            for t in &mut self.tracked {
                if want.is_empty() {
                    break;
                }
                t.search(tier, false, pass, want, found, stats);
            }
        }
    }

    /// Looks for `want` among the processes created lately (see the module documentation):
    /// first those already seen new but holding nothing sought then (a `curl` looks up a name
    /// before it connects), then the pids handed out since the last look, oldest first. Those
    /// found holding a socket are tracked; those holding nothing sought stay "young" a while.
    fn search_new(&mut self, pass: u64, want: &mut HashSet<u32>, found: &mut HashMap<u32, Holder>) {
        let Some(root) = self.root_dir() else { return };
        self.young
            .retain(|(at, t)| t.alive && at.elapsed() < YOUNG_FOR);
        self.search_young(&root, false, pass, want, found);
        let Some(now) = self.read_last_pid(&root) else {
            return;
        };
        let pid_max = *self
            .pid_max
            .get_or_insert_with(|| read_pid_max(&root).unwrap_or(u32::MAX));
        let Some(since) = self.last_pid.replace(now) else {
            return;
        };
        for pid in new_pids(since, now, pid_max, NEW_PIDS).into_iter().rev() {
            if want.is_empty() {
                // The rest are looked at next time.
                self.last_pid = Some(pid.wrapping_sub(1).max(1));
                break;
            }
            if self.tracked.iter().any(|t| t.holder.pid == pid) {
                continue;
            }
            let Some((_, mut t)) = self.open(&root, pid) else {
                continue;
            };
            if t.table.len() > NEW_PID_MAX_FDS {
                continue;
            }
            let mut here = HashMap::new();
            t.search_all(pass, want, &mut here, &mut self.counters);
            if here.is_empty() {
                if self.young.len() >= YOUNG {
                    self.young.remove(0);
                }
                self.young.push((Instant::now(), t));
            } else {
                self.settle(&root, t, here, want, found);
            }
        }
    }

    /// Looks for `want` among the young processes: where a new descriptor would be, unless
    /// `thorough` (then everywhere). Those found holding a socket are tracked.
    fn search_young(
        &mut self,
        root: &OwnedFd,
        thorough: bool,
        pass: u64,
        want: &mut HashSet<u32>,
        found: &mut HashMap<u32, Holder>,
    ) {
        let mut i = 0;
        while i < self.young.len() && !want.is_empty() {
            let mut here = HashMap::new();
            let t = &mut self.young[i].1;
            if thorough {
                t.search_all(pass, want, &mut here, &mut self.counters);
            } else {
                for tier in [Tier::Free, Tier::Churning] {
                    t.search(tier, false, pass, want, &mut here, &mut self.counters);
                }
            }
            if here.is_empty() {
                i += 1;
            } else {
                let (_, t) = self.young.remove(i);
                self.settle(root, t, here, want, found);
            }
        }
    }

    /// Records the process `t`, just found holding the sockets `here`, as their holder and
    /// tracks it. A thread takes a pid too and shows its process's descriptors: the holder is
    /// then the process (its thread group), tracked under its own pid. If it has gone meanwhile
    /// the sockets are sought on like any not found.
    fn settle(
        &mut self,
        root: &OwnedFd,
        mut t: Tracked,
        here: HashMap<u32, Holder>,
        want: &mut HashSet<u32>,
        found: &mut HashMap<u32, Holder>,
    ) {
        let pid = t.holder.pid;
        let name = pid.to_string();
        let holder = match read_tgid(root, &name) {
            Some(tgid) if tgid != pid => self.track(tgid).map(|i| self.tracked[i].holder),
            Some(_) => read_stat(root, &name).map(|(ppid, start)| {
                t.holder.start = start;
                t.ppid = ppid;
                let h = t.holder;
                self.adopt(t);
                h
            }),
            None => None,
        };
        match holder {
            Some(h) => found.extend(here.into_keys().map(|ino| (ino, h))),
            None => want.extend(here.into_keys()),
        }
    }

    /// The last pid handed out, from `/proc/loadavg`, kept open (reading an open proc file
    /// again costs a quarter of opening it).
    fn read_last_pid(&mut self, root: &OwnedFd) -> Option<u32> {
        if self.loadavg.is_none() {
            let flags = OFlags::RDONLY | OFlags::CLOEXEC;
            self.loadavg = rustix::fs::openat(root, "loadavg", flags, Mode::empty()).ok();
        }
        let mut buf = [0u8; 128];
        let n = rustix::io::pread(self.loadavg.as_ref()?, &mut buf, 0).ok()?;
        parse_last_pid(std::str::from_utf8(&buf[..n]).ok()?)
    }

    /// Probes every process not tracked (or tracked under a pid now used by another process),
    /// newest pid first, until `want` is empty. Processes found holding a socket are tracked.
    fn scan_all(&mut self, pass: u64, want: &mut HashSet<u32>, found: &mut HashMap<u32, Holder>) {
        let Some(root) = self.root_dir() else { return };
        let mut pids: Vec<u32> = match Dir::read_from(&root) {
            Ok(mut d) => std::iter::from_fn(|| d.read())
                .filter_map(|e| e.ok()?.file_name().to_str().ok()?.parse().ok())
                .collect(),
            Err(_) => return,
        };
        pids.sort_unstable_by(|a, b| b.cmp(a));
        for pid in pids {
            if want.is_empty() {
                break;
            }
            if let Some(i) = self.tracked.iter().position(|t| t.holder.pid == pid) {
                // Searched in full already, unless the pid now belongs to another process.
                let now = read_stat(&root, &pid.to_string()).map(|(_, start)| start);
                if now == Some(self.tracked[i].holder.start) {
                    continue;
                }
                self.tracked.remove(i);
            }
            let Some((base, mut t)) = self.open(&root, pid) else {
                continue;
            };
            let mut here = HashMap::new();
            t.search_all(pass, want, &mut here, &mut self.counters);
            // Its start time is read only now, from the same `/proc/<pid>` directory: most
            // processes scanned hold nothing sought.
            if !here.is_empty()
                && let Some((ppid, start)) = read_stat(&base, "")
            {
                t.holder.start = start;
                t.ppid = ppid;
                found.extend(here.into_keys().map(|ino| (ino, t.holder)));
                self.adopt(t);
            }
        }
    }

    /// Marks the tracked processes that have exited (their pidfds poll readable) as gone.
    /// Without this a process that exited would stay tracked, each pass probing it in vain,
    /// until it fell off the end of the list.
    fn forget_exited(&mut self) {
        let (idx, mut fds): (Vec<usize>, Vec<PollFd<'_>>) = self
            .tracked
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i, PollFd::new(t.pidfd.as_ref()?, PollFlags::IN))))
            .unzip();
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if fds.is_empty() || rustix::event::poll(&mut fds, Some(&now)).unwrap_or(0) == 0 {
            return;
        }
        let exited: Vec<usize> = idx
            .into_iter()
            .zip(&fds)
            .filter(|(_, p)| !p.revents().is_empty())
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        for i in exited {
            self.tracked[i].alive = false;
        }
    }

    /// Opens `pid`'s `/proc/<pid>` directory and, through it, its descriptor directory (so both
    /// are of one process), and lists it. The start time and parent are left for the caller to
    /// read through the returned directory.
    fn open(&mut self, root: &OwnedFd, pid: u32) -> Option<(OwnedFd, Tracked)> {
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let base = rustix::fs::openat(root, pid.to_string(), dir_flags, Mode::empty()).ok()?;
        let fd_dir = rustix::fs::openat(&base, "fd", dir_flags, Mode::empty()).ok()?;
        let mut t = Tracked {
            holder: Holder { pid, start: 0 },
            ppid: 0,
            fds: Dir::new(fd_dir).ok()?,
            table: FdTable::default(),
            alive: true,
            pidfd: None,
            complete_at: None,
        };
        // Taken before the listing: if the listing works, the pid was still this process's
        // when the pidfd was opened, so the pidfd is of this process too.
        t.pidfd = Pid::from_raw(pid as i32)
            .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok());
        t.list(self.pass, &mut self.counters).then_some((base, t))
    }

    /// The tracked process `pid`, tracking it if needed.
    fn track(&mut self, pid: u32) -> Option<usize> {
        if let Some(i) = self.tracked.iter().position(|t| t.holder.pid == pid) {
            if self.tracked[i].alive {
                return Some(i);
            }
            self.tracked.remove(i);
        }
        let root = self.root_dir()?;
        let (base, mut t) = self.open(&root, pid)?;
        (t.ppid, t.holder.start) = read_stat(&base, "")?;
        self.adopt(t);
        Some(0)
    }

    /// The parent of `child` when it holds `inode` too.
    fn parent_holding(&mut self, child: Holder, inode: u32, pass: u64) -> Option<Holder> {
        let ppid = self.tracked[self.index_of(child)?].ppid;
        if ppid <= 1 {
            return None;
        }
        let i = self.track(ppid)?;
        let parent = &mut self.tracked[i];
        // A parent is older than its child; a younger process has reused the pid.
        if !parent.alive || parent.holder.start > child.start {
            return None;
        }
        // "No" costs a probe of every descriptor not probed in this pass; a busy parent (a
        // service that spawns helpers) would pay that for every child's socket, so the walk
        // stops below it.
        if parent.table.len() > WALK_MAX_FDS && !parent.table.complete(pass) {
            return None;
        }
        parent
            .passed_down(inode, child.start, pass, &mut self.counters)
            .then_some(parent.holder)
    }

    fn index_of(&self, h: Holder) -> Option<usize> {
        self.tracked.iter().position(|t| t.holder == h)
    }

    /// Puts a newly tracked process first, forgetting the least recently useful beyond
    /// [`TRACKED`].
    fn adopt(&mut self, t: Tracked) {
        self.young.retain(|(_, y)| y.holder.pid != t.holder.pid);
        self.tracked.truncate(TRACKED - 1);
        self.tracked.insert(0, t);
    }

    fn touch(&mut self, i: usize) {
        let t = self.tracked.remove(i);
        self.tracked.insert(0, t);
    }

    /// The proc root, shared (not duplicated: a `dup` per call would be a syscall on every
    /// pass that looks beyond the tracked processes).
    fn root_dir(&mut self) -> Option<Arc<OwnedFd>> {
        if self.root_dir.is_none() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            self.root_dir = rustix::fs::open(&self.root, flags, Mode::empty())
                .ok()
                .map(Arc::new);
        }
        self.root_dir.clone()
    }

    /// Parent pid and start time (clock ticks since boot) from `/proc/<pid>/stat`, which is much
    /// cheaper for the kernel to produce than `status`. The start time tells a reused pid from
    /// the process that had it before.
    pub fn stat(&mut self, pid: u32) -> Option<(u32, u64)> {
        read_stat(&self.root_dir()?, &pid.to_string())
    }

    /// Facts about `pid`, or `None` if it is gone. Every file is read through one open
    /// `/proc/<pid>` directory, so all the facts are of one process.
    pub fn process_info(&mut self, pid: u32) -> Option<ProcessInfo> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let base =
            rustix::fs::openat(self.root_dir()?, pid.to_string(), flags, Mode::empty()).ok()?;
        let name = read_text(&base, "comm")?.trim_end().to_owned();
        let status = read_text(&base, "status")?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
        let exe = rustix::fs::readlinkat(&base, "exe", Vec::new())
            .ok()
            .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned());
        let cmdline = read_bytes(&base, "cmdline")
            .map(|b| cmdline_text(&b))
            .unwrap_or_default();
        let cgroup = read_text(&base, "cgroup").and_then(|t| cgroup::path_from_proc(&t));
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

/// Parent pid and start time from the text of a `/proc/<pid>/stat` file.
fn parse_stat(text: &str) -> Option<(u32, u64)> {
    // The command name is in parentheses and may itself hold spaces and parentheses.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let mut f = rest.split(' ');
    let ppid = f.nth(1)?.parse().ok()?;
    let start = f.nth(17)?.parse().ok()?;
    Some((ppid, start))
}

/// [`parse_stat`] of `<dir>/<path>/stat` (`path` empty: `dir` is the process's directory).
fn read_stat(dir: &impl AsFd, path: &str) -> Option<(u32, u64)> {
    let name = if path.is_empty() {
        "stat".to_owned()
    } else {
        format!("{path}/stat")
    };
    parse_stat(&read_text(dir, &name)?)
}

/// The text of the file `name` under `dir` (see [`read_bytes`]).
fn read_text(dir: &impl AsFd, name: &str) -> Option<String> {
    String::from_utf8(read_bytes(dir, name)?).ok()
}

/// The contents of the small file `name` under `dir`, read whole with page-sized reads. Proc
/// files report no size, so std's readers would stat them and then start with 32-byte reads;
/// this takes two `read`s for a typical file.
fn read_bytes(dir: &impl AsFd, name: &str) -> Option<Vec<u8>> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).ok()?;
    let mut out = Vec::with_capacity(4096);
    fs::File::from(fd).read_to_end(&mut out).ok()?;
    Some(out)
}

/// The last pid handed out in this pid namespace: the last field of `/proc/loadavg`
/// (`0.00 0.01 0.05 1/123 4567`).
fn parse_last_pid(loadavg: &str) -> Option<u32> {
    loadavg.split_whitespace().nth(4)?.parse().ok()
}

/// `/proc/sys/kernel/pid_max`: pids are below it.
fn read_pid_max(root: &impl AsFd) -> Option<u32> {
    read_text(root, "sys/kernel/pid_max")?.trim().parse().ok()
}

/// The thread group (process) of task `name` (a pid) under the proc root `root`.
fn read_tgid(root: &impl AsFd, name: &str) -> Option<u32> {
    read_text(root, &format!("{name}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// The pids handed out after `since` up to `now`, newest first, at most `limit`. Pids are
/// allocated cyclically: after `pid_max - 1` the next is above [`RESERVED_PIDS`].
fn new_pids(since: u32, now: u32, pid_max: u32, limit: usize) -> Vec<u32> {
    let wrapped = since > now;
    let mut out = Vec::new();
    let mut pid = now;
    while pid != since && out.len() < limit {
        if pid == 0 || pid >= pid_max {
            break;
        }
        out.push(pid);
        pid = if wrapped && pid <= RESERVED_PIDS {
            pid_max - 1
        } else {
            pid - 1
        };
    }
    out
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
    use super::tracked::boot_ticks;
    use super::*;

    #[test]
    fn new_pids_are_those_handed_out_since_newest_first() {
        assert_eq!(new_pids(100, 104, 32768, 64), vec![104, 103, 102, 101]);
        assert_eq!(new_pids(100, 100, 32768, 64), Vec::<u32>::new());
        assert_eq!(new_pids(100, 104, 32768, 2), vec![104, 103], "newest kept");
        // Allocation wrapped after pid_max - 1 and went on above the reserved pids.
        assert_eq!(
            new_pids(32765, 301, 32768, 64),
            vec![301, 300, 32767, 32766]
        );
        assert_eq!(new_pids(32767, 300, 32768, 64), vec![300]);
        // Nonsense (pid_max lowered meanwhile) stays bounded.
        assert_eq!(new_pids(5, 40000, 32768, 64), Vec::<u32>::new());
        assert_eq!(new_pids(40000, 310, 32768, 64).len(), 64);
    }

    #[test]
    fn loadavg_and_status_are_read() {
        assert_eq!(parse_last_pid("0.00 0.01 0.05 1/123 4567\n"), Some(4567));
        assert_eq!(parse_last_pid("0.00 0.01"), None);
        let mut p = ProcScanner::default();
        let root = p.root_dir().unwrap();
        let before = p.read_last_pid(&root).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let after = p.read_last_pid(&root).unwrap();
        let max = read_pid_max(&root).unwrap();
        assert!(max > RESERVED_PIDS && pid < max);
        assert!(
            new_pids(before, after, max, usize::MAX).contains(&pid),
            "{pid} handed out between {before} and {after}"
        );
        let me = std::process::id();
        assert_eq!(read_tgid(&root, &me.to_string()), Some(me));
        // A thread's own directory names its process.
        let tid = std::thread::spawn(|| {
            // `/proc/thread-self` links to `<pid>/task/<tid>`.
            let link = fs::read_link("/proc/thread-self").unwrap();
            let tid: u32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
            (
                tid,
                read_tgid(
                    &ProcScanner::default().root_dir().unwrap(),
                    &tid.to_string(),
                ),
            )
        })
        .join()
        .unwrap();
        assert_ne!(tid.0, me);
        assert_eq!(tid.1, Some(me));
    }

    #[test]
    fn boot_ticks_are_the_clock_of_start_times() {
        let (_, start) = ProcScanner::default().stat(std::process::id()).unwrap();
        let now = boot_ticks();
        assert!(start <= now, "{start} > {now}");
        // This test process started moments ago, not hours.
        assert!(now - start < 100 * 3600, "{start} vs {now}");
    }

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
        let mut p = ProcScanner::default();
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
        // Second lookup finds it where it was seen: one probe of this process, then the check
        // that its parent does not hold it too (each of its descriptors and the number above
        // them), no scan.
        let before = p.counters;
        assert_eq!(p.pid_of_inode(owner.inode), Some(std::process::id()));
        assert_eq!(p.counters.full_scans, before.full_scans);
        assert_eq!(p.counters.hot_hits, before.hot_hits + 1);
        let parent_fds = fs::read_dir(format!("/proc/{}/fd", std::os::unix::process::parent_id()))
            .map_or(0, |d| d.count()) as u64;
        assert!(
            p.counters.fd_probes <= before.fd_probes + 5 + parent_fds,
            "{:?} vs {before:?}",
            p.counters
        );
        assert_eq!(p.pid_of_inode(1), None);
    }

    /// A shell child holding one connection to `l` (bash's `/dev/tcp`), and that socket's inode.
    fn child_with_socket(l: &std::net::TcpListener) -> (std::process::Child, u32) {
        let a = l.local_addr().unwrap();
        let child = std::process::Command::new("bash")
            .args([
                "-c",
                &format!("exec 3<>/dev/tcp/{}/{}; exec sleep 30", a.ip(), a.port()),
            ])
            .spawn()
            .unwrap();
        let (conn, peer) = l.accept().unwrap();
        drop(conn);
        let mut sd = crate::sockdiag::SockDiag::open().unwrap();
        let owner = sd
            .find(crate::Proto::Tcp, peer, a)
            .unwrap()
            .expect("client socket");
        (child, owner.inode)
    }

    #[test]
    fn a_process_created_since_the_last_pass_is_found_without_a_scan() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut p = ProcScanner::default();
        // A first pass that misses everywhere notes the last pid handed out.
        assert!(p.holders(&[1], HashSet::clear).is_empty());
        let before = p.counters;
        let (mut child, inode) = child_with_socket(&l);
        let h = p.holders(&[inode], |_| {})[&inode];
        assert_eq!(h.pid, child.id());
        assert_eq!(p.counters.new_pid_hits, before.new_pid_hits + 1);
        assert_eq!(p.counters.full_scans, before.full_scans, "{:?}", p.counters);
        // Now tracked: found where it was seen.
        let again = p.counters;
        assert_eq!(p.holders(&[inode], |_| {})[&inode], h);
        assert_eq!(p.counters.hot_hits, again.hot_hits + 1);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_new_descriptor_is_noticed_by_the_count_alone() {
        // The descriptor count is process-wide: other test threads opening and closing files
        // between the quiet check and the assertion made this flaky. Run it alone in a child.
        if !in_a_child_alone("procfs::tests::a_new_descriptor_is_noticed_by_the_count_alone") {
            return;
        }
        let mut p = ProcScanner::default();
        let root = p.root_dir().unwrap();
        let (_, mut t) = p.open(&root, std::process::id()).unwrap();
        // Probe everything (nothing holds inode 1), so the table knows every descriptor. Other
        // test threads open and close files meanwhile: retry until a quiet moment.
        let quiet = (0..50).any(|pass| {
            let mut want = HashSet::from([1]);
            t.list(100 + pass, &mut p.counters);
            t.search_all(100 + pass, &mut want, &mut HashMap::new(), &mut p.counters);
            !t.may_have_more()
        });
        if rustix::fs::fstat(t.fds.fd().unwrap()).unwrap().st_size == 0 {
            return; // Linux before 6.2 reports no count: nothing to check.
        }
        assert!(quiet, "a fully probed table accounts for every descriptor");
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(t.may_have_more(), "one more descriptor than believed open");
        drop(s);
    }

    /// Tests that watch process-wide state (the descriptor count) must not share the process
    /// with other test threads. Returns true in a child process that runs only `test` (with one
    /// thread); in the parent, runs that child, asserts it passed, and returns false.
    fn in_a_child_alone(test: &str) -> bool {
        const CHILD: &str = "HAIS_TEST_ALONE_CHILD";
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .expect("re-running the test binary");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran the test: {text}");
        false
    }

    #[test]
    fn an_exited_process_is_dropped_and_a_changed_start_time_is_not_trusted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut child, inode) = child_with_socket(&l);
        let pid = child.id();
        let mut p = ProcScanner::default();
        let h = p.holders(&[inode], |_| {})[&inode];
        assert_eq!(h.pid, pid);
        assert_eq!(Some(h.start), p.stat(pid).map(|(_, s)| s));
        // Make the entry stand for another process that had the same pid (its directory is
        // this test's own, which does not hold the socket, and its start time differs): the
        // full scan must not skip the pid as already searched, and re-tracks it correctly.
        let i = p.tracked.iter().position(|t| t.holder.pid == pid).unwrap();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let other = rustix::fs::open("/proc/self/fd", flags, Mode::empty()).unwrap();
        p.tracked[i].fds = Dir::new(other).unwrap();
        p.tracked[i].holder.start += 1;
        p.tracked[i].table = FdTable::default();
        let again = p.holders(&[inode], |_| {});
        assert_eq!(
            again.get(&inode),
            Some(&h),
            "found by the scan, with the real start"
        );
        assert_eq!(p.tracked.iter().filter(|t| t.holder.pid == pid).count(), 1);
        // Once it has exited and been reaped, its socket is held by nobody and the entry goes.
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(p.holders(&[inode], HashSet::clear).get(&inode), None);
        assert!(p.tracked.iter().all(|t| t.holder.pid != pid));
    }
}
