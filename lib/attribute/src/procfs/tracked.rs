//! One tracked process: its open `/proc/<pid>/fd` directory, what each descriptor held when
//! last probed ([`FdTable`]), and the searches over it, from the descriptors likely to hold a
//! new socket to all of them. [`super::ProcScanner`] decides which processes to search and in
//! what order.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Dir, FileType};

use super::{Counters, Holder};
use crate::fdtable::{FdTable, Tier};

/// See [`Tracked::search`]: ten descriptors in a row unchanged end a tier's cheap search.
const UNCHANGED_RUN: usize = 10;

/// A process whose descriptor table is followed between passes.
#[derive(Debug)]
pub(super) struct Tracked {
    pub(super) holder: Holder,
    pub(super) ppid: u32,
    /// `/proc/<pid>/fd`, kept open: probes go relative to it, and it stops working when this
    /// very process is gone (even if its pid is reused).
    pub(super) fds: Dir,
    pub(super) table: FdTable,
    /// Cleared when a listing fails or comes back empty: the process is gone (or a zombie) and
    /// is dropped at the end of the pass.
    pub(super) alive: bool,
    /// A pidfd of the process, which polls readable once it has exited: one `poll` per pass
    /// finds every tracked process that is gone. `None` on kernels without `pidfd_open` (before
    /// 5.3); such a process is then dropped when a listing of it fails.
    pub(super) pidfd: Option<OwnedFd>,
    /// When (clock ticks since boot) every descriptor was last probed in one pass.
    pub(super) complete_at: Option<u64>,
}

impl Tracked {
    /// Lists the descriptor numbers (once per pass). `false` when the process is gone.
    pub(super) fn list(&mut self, pass: u64, stats: &mut Counters) -> bool {
        if !self.alive || self.table.listed_in(pass) {
            return self.alive;
        }
        self.fds.rewind();
        stats.fd_dirs_read += 1;
        match read_fd_numbers(&mut self.fds) {
            Some(open) if !open.is_empty() => self.table.sync(&open, pass),
            _ => self.alive = false,
        }
        self.alive
    }

    /// What descriptor `fd` refers to now (see [`FdTable::record`]), remembered for later, and
    /// whether that is what it was last seen holding.
    fn probe(&mut self, fd: u32, pass: u64, stats: &mut Counters) -> (Option<u32>, bool) {
        stats.fd_probes += 1;
        let seen = link_inode(&self.fds, fd);
        let unchanged = self.table.record(fd, seen, pass);
        (seen, unchanged)
    }

    /// Probes `fd`, moving its inode into `found` if `want` has it.
    fn check(
        &mut self,
        fd: u32,
        pass: u64,
        want: &mut HashSet<u32>,
        found: &mut HashMap<u32, Holder>,
        stats: &mut Counters,
    ) -> (Option<u32>, bool) {
        let (seen, unchanged) = self.probe(fd, pass, stats);
        if let Some(ino) = seen
            && want.remove(&ino)
        {
            found.insert(ino, self.holder);
        }
        (seen, unchanged)
    }

    /// Probes where each socket of `want` was seen before (one probe each).
    pub(super) fn search_remembered(
        &mut self,
        pass: u64,
        want: &mut HashSet<u32>,
        found: &mut HashMap<u32, Holder>,
        stats: &mut Counters,
    ) {
        let seen: Vec<u32> = want.iter().filter_map(|&i| self.table.fd_of(i)).collect();
        for fd in seen {
            if !self.table.probed_in(fd, pass) {
                self.check(fd, pass, want, found, stats);
            }
        }
    }

    /// Probes the descriptors of `tier` in order, stopping when `want` is empty. Unless
    /// `thorough`, it also stops after [`UNCHANGED_RUN`] descriptors in a row found holding
    /// what they held before: the tiers are in order of likely change, so past such a run
    /// the rest are likely unchanged too (in [`Tier::Churning`], younger connections still
    /// open) and the search is better spent elsewhere first.
    pub(super) fn search(
        &mut self,
        tier: Tier,
        thorough: bool,
        pass: u64,
        want: &mut HashSet<u32>,
        found: &mut HashMap<u32, Holder>,
        stats: &mut Counters,
    ) {
        if tier == Tier::Free {
            return self.search_free(thorough, pass, want, found, stats);
        }
        let mut run = 0;
        for fd in self.table.candidates(tier, pass) {
            if want.is_empty() || (!thorough && run >= UNCHANGED_RUN) {
                return;
            }
            let (_, unchanged) = self.check(fd, pass, want, found, stats);
            run = if unchanged { run + 1 } else { 0 };
        }
    }

    /// Whether the process may hold descriptors at numbers not believed open: it holds more
    /// than the table believes (the size the kernel reports for `/proc/<pid>/fd` is the number
    /// of open descriptors, since Linux 6.2; one `fstat`, a tenth of a probe). An idle process
    /// then costs no probe. Where the size is not reported, always "maybe".
    pub(super) fn may_have_more(&self) -> bool {
        let Ok(fd) = self.fds.fd() else { return true };
        match rustix::fs::fstat(fd) {
            Ok(st) if st.st_size > 0 => st.st_size as usize > self.table.believed_open(),
            _ => true,
        }
    }

    /// [`Tier::Free`]: the numbers not known open (unprobed, seen closed, or gaps the table
    /// knows nothing about), lowest first, as the kernel allocates them. Unless `thorough`, it
    /// stops at the first one found closed: while the lowest free number is still free, new
    /// descriptors are unlikely to be above it. When `thorough`, it probes every remembered
    /// one and stops only at a closed gap (numbers far above are left to a listing).
    fn search_free(
        &mut self,
        thorough: bool,
        pass: u64,
        want: &mut HashSet<u32>,
        found: &mut HashMap<u32, Holder>,
        stats: &mut Counters,
    ) {
        if !thorough && !self.may_have_more() {
            return;
        }
        let mut known = self
            .table
            .candidates(Tier::Free, pass)
            .into_iter()
            .peekable();
        let mut gap = Some(self.table.next_gap(0));
        while !want.is_empty() {
            let (fd, is_gap) = match (known.peek().copied(), gap) {
                (Some(k), Some(g)) if g < k => (g, true),
                (Some(k), _) => (known.next().unwrap_or(k), false),
                (None, Some(g)) => (g, true),
                (None, None) => return,
            };
            let open = self.check(fd, pass, want, found, stats).0.is_some();
            if is_gap {
                gap = open.then(|| self.table.next_gap(fd.saturating_add(1)));
            }
            if !open && !thorough {
                return;
            }
        }
    }

    /// Looks everywhere not probed in this pass: a listing (for numbers far above the others)
    /// and every tier. After this, the process holds none of what is left in `want`.
    pub(super) fn search_all(
        &mut self,
        pass: u64,
        want: &mut HashSet<u32>,
        found: &mut HashMap<u32, Holder>,
        stats: &mut Counters,
    ) {
        for tier in Tier::ALL {
            self.search(tier, true, pass, want, found, stats);
        }
        // A process that is gone (or a zombie) lists nothing and is dropped; its probes all
        // failed like those of closed descriptors, a cost paid once.
        if !want.is_empty() && self.list(pass, stats) {
            for tier in Tier::ALL {
                self.search(tier, true, pass, want, found, stats);
            }
        }
    }

    /// Whether this process holds socket `inode`, which its child started at `child_start`
    /// (clock ticks since boot) holds: whether the child inherited it from here. "Yes" often
    /// takes one probe; "no" takes a probe of every descriptor, unless this process's
    /// descriptors were all seen after the child started and the socket was not among them
    /// (had it been passed down at the fork, it would have been here then).
    pub(super) fn passed_down(
        &mut self,
        inode: u32,
        child_start: u64,
        pass: u64,
        stats: &mut Counters,
    ) -> bool {
        if self.table.complete(pass) {
            return self.table.fd_of(inode).is_some();
        }
        if self.table.fd_of(inode).is_none()
            && self.complete_at.is_some_and(|at| at > child_start + 1)
        {
            return false;
        }
        let mut want = HashSet::from([inode]);
        let mut found = HashMap::new();
        self.search_remembered(pass, &mut want, &mut found, stats);
        if want.is_empty() {
            return true;
        }
        self.search_all(pass, &mut want, &mut found, stats);
        if self.table.complete(pass) {
            self.complete_at = Some(boot_ticks());
        }
        want.is_empty()
    }
}

/// Now, in the clock ticks since boot (`USER_HZ`, 100 on Linux) that process start times are
/// given in.
pub(super) fn boot_ticks() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64) * 100 + (t.tv_nsec as u64) / 10_000_000
}

/// The descriptor numbers listed by an open `/proc/<pid>/fd` directory (rewound by the
/// caller); `None` when it can no longer be read because the process is gone.
fn read_fd_numbers(dir: &mut Dir) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    while let Some(e) = dir.read() {
        let e = e.ok()?;
        if let Some(fd) = e.file_name().to_str().ok().and_then(|n| n.parse().ok()) {
            out.push(fd);
        }
    }
    Some(out)
}

/// What descriptor `fd` of an open `/proc/<pid>/fd` directory refers to: `None` when it is
/// not open (or the process is gone), `Some(0)` for anything but a socket, else the socket's
/// inode. `stat` through the link reaches the socket's own inode without formatting the link
/// text (`socket:[N]`) that `readlink` would build, which is measurably cheaper per descriptor.
fn link_inode(dir: &Dir, fd: u32) -> Option<u32> {
    let mut buf = [0u8; 12];
    let st = rustix::fs::statat(dir.fd().ok()?, fd_name(fd, &mut buf), AtFlags::empty()).ok()?;
    Some(if FileType::from_raw_mode(st.st_mode) == FileType::Socket {
        u32::try_from(st.st_ino).unwrap_or(0)
    } else {
        0
    })
}

/// `fd` in decimal as a C string in `buf`, without allocating (one is built per probe).
fn fd_name(mut fd: u32, buf: &mut [u8; 12]) -> &CStr {
    let mut i = buf.len() - 1; // buf[11] stays the terminating NUL
    loop {
        i -= 1;
        buf[i] = b'0' + (fd % 10) as u8;
        fd /= 10;
        if fd == 0 {
            break;
        }
    }
    CStr::from_bytes_with_nul(&buf[i..]).unwrap_or_default()
}
