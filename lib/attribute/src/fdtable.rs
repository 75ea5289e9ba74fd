//! What the scanner remembers of one process's descriptor table between passes, so that a pass
//! looks at the few descriptors likely to hold a new socket instead of all of them.
//!
//! Learning what a descriptor number refers to costs one `stat` of `/proc/<pid>/fd/<n>` (~1 µs,
//! mostly the kernel's path walk and permission check), and even listing the numbers costs
//! ~0.4 µs per descriptor. A busy service holds hundreds of sockets and opens new ones all the
//! time, so a pass must not look at them all. The catch is that nothing cheap tells a descriptor
//! that stayed open from one that was closed and reused: the kernel hands out the lowest free
//! number, so a service that closes one connection and opens another keeps the same numbers.
//! The table therefore never *trusts* what it remembers; it only uses it to choose the order of
//! the probes, and a pass stops as soon as every socket it looks for is found:
//!
//! 1. [`Tier::Free`]: numbers never probed, last seen closed or never seen at all ("gaps"),
//!    lowest first — where the kernel puts a new descriptor;
//! 2. [`Tier::Churning`]: numbers whose content has been seen to change (short-lived
//!    connections), oldest content first, since the oldest short-lived socket is the one most
//!    likely to have been closed and its number reused; content seen unchanged for
//!    [`SETTLED_AFTER`] passes settles into the next tier;
//! 3. [`Tier::Stable`]: the rest (listeners, files, long-lived connections), least recently
//!    checked first.
//!
//! Numbers opened far above the others (`dup2` to a high number) are found by a listing
//! ([`FdTable::sync`]), which the caller makes only when the tiers did not find everything: a
//! socket not found after a listing and all three tiers is in no descriptor, exactly as a full
//! scan would conclude, so remembering never costs correctness, only (at worst) the full price.

use std::collections::{BTreeMap, HashMap};

/// Passes after which content seen unchanged stops counting as churning: a number that
/// appeared after the first pass (a pipe, a pidfd, a connection pool's socket) but has held
/// the same thing since is as unlikely to change as the descriptors seen at the start.
const SETTLED_AFTER: u64 = 16;

/// One descriptor number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// What the last probe saw: `None` closed, `Some(0)` anything but a socket, else the
    /// socket's inode.
    seen: Option<u32>,
    /// Pass in which `seen` was first seen here (the age of the content).
    since: u64,
    /// Pass of the last probe; 0 when never probed.
    probed: u64,
    /// Whether the content is known to come and go: seen to change, or the number appeared
    /// after the first pass.
    churns: bool,
}

/// The probe order tiers (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Free,
    Churning,
    Stable,
}

impl Tier {
    pub(crate) const ALL: [Tier; 3] = [Tier::Free, Tier::Churning, Tier::Stable];
}

/// Remembered descriptors of one process.
#[derive(Debug, Default)]
pub(crate) struct FdTable {
    /// Ordered, so that the numbers in between (gaps) can be walked.
    slots: BTreeMap<u32, Slot>,
    /// Socket inode → the number it was last seen at.
    sockets: HashMap<u32, u32>,
    /// Pass of the last listing.
    synced: u64,
    /// Whether the first pass is over (numbers appearing later are churning slots).
    seeded: bool,
}

impl FdTable {
    fn new_slot(&self) -> Slot {
        Slot {
            seen: None,
            since: 0,
            probed: 0,
            churns: self.seeded,
        }
    }

    /// Applies a listing of the open descriptor numbers made in `pass`: numbers no longer open
    /// are forgotten, new ones are added unprobed.
    pub(crate) fn sync(&mut self, open: &[u32], pass: u64) {
        let mut keep: BTreeMap<u32, Slot> = BTreeMap::new();
        for &fd in open {
            let slot = self.slots.remove(&fd).unwrap_or_else(|| self.new_slot());
            keep.insert(fd, slot);
        }
        // What is left is closed.
        for (fd, gone) in std::mem::replace(&mut self.slots, keep) {
            self.unindex(gone.seen, fd);
        }
        self.synced = pass;
    }

    /// Whether a listing was applied in `pass`.
    pub(crate) fn listed_in(&self, pass: u64) -> bool {
        self.synced == pass
    }

    /// Marks the end of a pass: numbers first seen after this one churn.
    pub(crate) fn seed(&mut self) {
        self.seeded = true;
    }

    /// The numbers of `tier` not yet probed in `pass`, in the order they should be probed. For
    /// [`Tier::Free`] the caller also walks the gaps ([`Self::next_gap`]), lowest first.
    pub(crate) fn candidates(&self, tier: Tier, pass: u64) -> Vec<u32> {
        let mut out: Vec<(u64, u32)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.probed != pass && Self::tier_of(s) == tier)
            .map(|(&fd, s)| {
                let key = match tier {
                    Tier::Free => 0,
                    Tier::Churning => s.since,
                    Tier::Stable => s.probed,
                };
                (key, fd)
            })
            .collect();
        out.sort_unstable();
        out.into_iter().map(|(_, fd)| fd).collect()
    }

    fn tier_of(s: &Slot) -> Tier {
        if s.probed == 0 || s.seen.is_none() {
            Tier::Free
        } else if s.churns {
            Tier::Churning
        } else {
            Tier::Stable
        }
    }

    /// The lowest number from `from` on that the table knows nothing about.
    pub(crate) fn next_gap(&self, from: u32) -> u32 {
        let mut n = from;
        for &fd in self.slots.range(from..).map(|(fd, _)| fd) {
            if fd != n {
                break;
            }
            n = n.saturating_add(1);
        }
        n
    }

    /// Records what descriptor `fd` referred to in `pass`: `None` closed, `Some(0)` not a
    /// socket, else the socket's inode. A closed number the table did not know is not kept
    /// (probing gaps would otherwise grow it by a number per pass). Returns whether the number
    /// had been probed before and held the same then.
    pub(crate) fn record(&mut self, fd: u32, seen: Option<u32>, pass: u64) -> bool {
        if seen.is_none() && !self.slots.contains_key(&fd) {
            return false;
        }
        let fresh = self.new_slot();
        let slot = self.slots.entry(fd).or_insert(fresh);
        let old = slot.seen;
        let unchanged = slot.probed != 0 && old == seen;
        if !unchanged {
            if slot.probed != 0 {
                slot.churns = true;
            }
            slot.seen = seen;
            slot.since = pass;
        } else if pass - slot.since >= SETTLED_AFTER {
            slot.churns = false;
        }
        slot.probed = pass;
        if old != seen {
            self.unindex(old, fd);
        }
        if let Some(ino @ 1..) = seen {
            self.sockets.insert(ino, fd);
        }
        unchanged
    }

    fn unindex(&mut self, seen: Option<u32>, fd: u32) {
        if let Some(ino @ 1..) = seen
            && self.sockets.get(&ino) == Some(&fd)
        {
            self.sockets.remove(&ino);
        }
    }

    /// The number socket `inode` was last seen at. A hint only: the descriptor may have been
    /// closed or reused since, so the caller probes it before believing it.
    pub(crate) fn fd_of(&self, inode: u32) -> Option<u32> {
        self.sockets.get(&inode).copied()
    }

    /// Whether `fd` was probed in `pass` (its remembered content is then current).
    pub(crate) fn probed_in(&self, fd: u32, pass: u64) -> bool {
        self.slots.get(&fd).is_some_and(|s| s.probed == pass)
    }

    /// Whether the table was listed and every open descriptor probed in `pass`, so that
    /// [`Self::fd_of`] is exact.
    pub(crate) fn complete(&self, pass: u64) -> bool {
        self.synced == pass && self.slots.values().all(|s| s.probed == pass)
    }

    /// How many numbers are believed open: listed or seen open, and not seen closed since.
    pub(crate) fn believed_open(&self) -> usize {
        self.slots
            .values()
            .filter(|s| s.probed == 0 || s.seen.is_some())
            .count()
    }

    /// Descriptor numbers remembered (after a listing: those open).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(t: &FdTable, pass: u64) -> Vec<Vec<u32>> {
        Tier::ALL.iter().map(|&x| t.candidates(x, pass)).collect()
    }

    /// A first pass over descriptors `fds`, each holding socket `100 + fd`.
    fn seeded(fds: &[u32]) -> FdTable {
        let mut t = FdTable::default();
        t.sync(fds, 1);
        for &fd in fds {
            t.record(fd, Some(100 + fd), 1);
        }
        t.seed();
        t
    }

    #[test]
    fn free_numbers_come_first_then_churning_oldest_first_then_stable() {
        let mut t = FdTable::default();
        t.sync(&[0, 1, 2, 5, 6], 1);
        assert_eq!(all(&t, 1), vec![vec![0, 1, 2, 5, 6], vec![], vec![]]);
        assert_eq!(t.next_gap(0), 3);
        assert_eq!(t.next_gap(4), 4);
        assert_eq!(t.next_gap(5), 7);
        for fd in [0, 1, 2, 5, 6] {
            t.record(fd, Some(100 + fd), 1);
        }
        t.seed();
        assert_eq!(
            all(&t, 1),
            vec![Vec::<u32>::new(); 3],
            "all probed this pass"
        );
        assert!(t.complete(1));
        // Pass 2 (no listing): fd 6 holds another socket (reused), fd 5 is unchanged.
        t.record(6, Some(206), 2);
        t.record(5, Some(105), 2);
        assert!(!t.complete(2));
        // Pass 3: fd 5 closed, fd 2 reused by another socket, fd 7 opened above the rest.
        t.record(5, None, 3);
        t.record(2, Some(302), 3);
        t.record(7, Some(307), 3);
        // Pass 4: the closed number first, then churning slots by age of content (6 since
        // pass 2, then 2 and 7 since pass 3), then stable ones by last probe.
        assert_eq!(all(&t, 4), vec![vec![5], vec![6, 2, 7], vec![0, 1]]);
        assert_eq!(t.next_gap(5), 8);
        assert!(!t.complete(4));
    }

    #[test]
    fn a_reused_number_with_another_inode_moves_the_socket_index() {
        let mut t = seeded(&[3]);
        assert_eq!(t.fd_of(103), Some(3));
        // Same number, other socket: the old inode is forgotten, the new one indexed.
        t.record(3, Some(22), 2);
        assert_eq!(t.fd_of(103), None);
        assert_eq!(t.fd_of(22), Some(3));
        // The number now holds a file: no socket is indexed at it.
        t.record(3, Some(0), 3);
        assert_eq!(t.fd_of(22), None);
        assert!(t.probed_in(3, 3) && !t.probed_in(3, 2));
        assert_eq!(all(&t, 4), vec![vec![], vec![3], vec![]], "it churns now");
    }

    #[test]
    fn closed_numbers_stay_free_until_a_listing_forgets_them() {
        let mut t = seeded(&[4, 5]);
        t.record(4, None, 2);
        assert_eq!(t.fd_of(104), None, "closed descriptor's socket forgotten");
        assert_eq!(all(&t, 3), vec![vec![4], vec![], vec![5]]);
        // A listing drops it; when the number returns it is unprobed and churns.
        t.sync(&[5], 3);
        assert_eq!(t.len(), 1);
        t.sync(&[4, 5], 4);
        assert_eq!(all(&t, 4), vec![vec![4], vec![], vec![5]]);
        t.record(4, Some(66), 4);
        assert_eq!(all(&t, 5), vec![vec![], vec![4], vec![5]]);
    }

    #[test]
    fn numbers_believed_open_are_listed_or_seen_open() {
        let mut t = seeded(&[0, 1, 2]);
        assert_eq!(t.believed_open(), 3);
        t.record(1, None, 2);
        assert_eq!(t.believed_open(), 2, "seen closed");
        t.sync(&[0, 2, 7], 3);
        assert_eq!(t.believed_open(), 3, "7 listed, not probed yet");
        t.record(3, None, 3);
        assert_eq!(t.believed_open(), 3, "an unknown closed number is not kept");
    }

    #[test]
    fn closed_gaps_do_not_grow_the_table() {
        let mut t = seeded(&[0, 1, 9]);
        assert_eq!(t.next_gap(0), 2);
        t.record(2, None, 2);
        t.record(3, None, 3);
        assert_eq!(t.len(), 3);
        assert_eq!(t.next_gap(0), 2);
        t.record(2, Some(9), 4);
        assert_eq!(t.next_gap(0), 3);
        assert_eq!(t.next_gap(9), 10);
        assert_eq!(t.fd_of(9), Some(2));
    }

    #[test]
    fn a_socket_moved_to_another_number_keeps_the_newest_place() {
        let mut t = seeded(&[3, 4]);
        // dup2(3, 4); close(3): the socket is now at 4 only.
        t.record(3, None, 2);
        t.record(4, Some(103), 2);
        assert_eq!(t.fd_of(103), Some(4));
        // A listing that drops another number keeps the index.
        t.sync(&[4], 3);
        assert_eq!(t.fd_of(103), Some(4));
    }
}
