//! The kernel calls the eBPF path needs — `bpf(2)`, `perf_event_open(2)` and two `ioctl`s — with
//! the only `unsafe` code of the crate. Every call takes typed, owned arguments: a caller can
//! never hand the kernel a pointer or a size the kernel would write past, because the buffers
//! are sized here from the map's own key and value sizes.
//!
//! Layouts are those of `union bpf_attr` and `struct perf_event_attr` in the kernel's UAPI
//! headers, written field by field into zeroed byte images (unknown trailing fields must be
//! zero, which the kernel checks).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// `BPF_MAP_TYPE_LRU_HASH`: a hash map that evicts its least recently used entries when full,
/// so a flood of connections can never fill it.
pub const MAP_LRU_HASH: u32 = 9;
/// `BPF_MAP_TYPE_QUEUE`: a FIFO without keys; read by popping, so draining costs one call per
/// record, however large the queue.
pub const MAP_QUEUE: u32 = 22;
/// `BPF_PROG_TYPE_TRACEPOINT`.
pub const PROG_TRACEPOINT: u32 = 5;

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IOW('$', 8, __u32)` and `_IO('$', 0)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get64(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn name16(b: &mut [u8], off: usize, name: &str) {
    let n = name.len().min(15);
    b[off..off + n].copy_from_slice(&name.as_bytes()[..n]);
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `bpf(cmd, attr, sizeof attr)`. Private: each caller below builds `attr` so that every pointer
/// in it is valid for the duration of the call and every buffer is as large as the kernel will
/// write.
fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> libc::c_long {
    // SAFETY: `attr` is a live, writable buffer of `attr.len()` bytes; the pointers inside it
    // are upheld by the callers (see above).
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

/// An eBPF map, with the value size the kernel was told at creation (so reads cannot be given
/// a buffer too small).
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    value_size: usize,
}

impl Map {
    pub fn create(
        kind: u32,
        key_size: u32,
        value_size: u32,
        entries: u32,
        name: &str,
    ) -> io::Result<Map> {
        let mut a = [0u8; 72];
        put32(&mut a, 0, kind);
        put32(&mut a, 4, key_size);
        put32(&mut a, 8, value_size);
        put32(&mut a, 12, entries);
        name16(&mut a, 28, name);
        let fd = owned(bpf(BPF_MAP_CREATE, &mut a))?;
        Ok(Map {
            fd,
            value_size: value_size as usize,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Takes the oldest value of a queue map into `value` (which must be `value_size` bytes).
    /// `false` when the queue is empty.
    pub fn pop(&self, value: &mut [u8]) -> io::Result<bool> {
        if value.len() != self.value_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "value buffer size",
            ));
        }
        let mut a = [0u8; 32];
        put32(&mut a, 0, self.fd.as_raw_fd() as u32);
        put64(&mut a, 16, value.as_mut_ptr() as u64);
        if bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut a) == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(false),
            _ => Err(e),
        }
    }
}

/// A loaded eBPF program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Loads `insns` (`struct bpf_insn`s, one `u64` each in host layout). On a refusal the
    /// error carries the end of the verifier's log, which says why.
    pub fn load(kind: u32, insns: &[u64], license: &CStr, name: &str) -> io::Result<Program> {
        let attempt = |log: &mut [u8]| {
            let mut a = [0u8; 128];
            put32(&mut a, 0, kind);
            put32(&mut a, 4, insns.len() as u32);
            put64(&mut a, 8, insns.as_ptr() as u64);
            put64(&mut a, 16, license.as_ptr() as u64);
            if !log.is_empty() {
                put32(&mut a, 24, 1);
                put32(&mut a, 28, log.len() as u32);
                put64(&mut a, 32, log.as_mut_ptr() as u64);
            }
            name16(&mut a, 48, name);
            owned(bpf(BPF_PROG_LOAD, &mut a))
        };
        match attempt(&mut []) {
            Ok(fd) => Ok(Program { fd }),
            Err(first) => {
                let mut log = vec![0u8; 1 << 16];
                match attempt(&mut log) {
                    Ok(fd) => Ok(Program { fd }),
                    Err(_) => {
                        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                        let text = String::from_utf8_lossy(&log[..end]);
                        let tail: Vec<&str> = text.lines().rev().take(6).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        Err(io::Error::new(
                            first.kind(),
                            format!("{first}; verifier: {}", tail.join(" | ")),
                        ))
                    }
                }
            }
        }
    }

    /// Times the program ran and the nanoseconds it spent, when the kernel counts them
    /// (`sysctl kernel.bpf_stats_enabled=1`; zero otherwise).
    pub fn run_stats(&self) -> io::Result<(u64, u64)> {
        // struct bpf_prog_info: run_time_ns at 192, run_cnt at 200 (since Linux 5.1).
        let mut info = [0u8; 256];
        let mut a = [0u8; 16];
        put32(&mut a, 0, self.fd.as_raw_fd() as u32);
        put32(&mut a, 4, info.len() as u32);
        put64(&mut a, 8, info.as_mut_ptr() as u64);
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((get64(&info, 200), get64(&info, 192)))
    }

    /// Runs this program on every hit of tracepoint `id`: a tracepoint's programs run on all
    /// CPUs, whichever CPU the perf event is opened on. The program stays attached while the
    /// returned descriptor is open.
    pub fn attach_tracepoint(&self, id: u64, cpu: u32) -> io::Result<OwnedFd> {
        // struct perf_event_attr, first version (64 bytes): type, size, config, sample_period,
        // sample_type, read_format, flags (all zero: enabled), wakeup_events.
        let mut a = [0u8; 64];
        put32(&mut a, 0, PERF_TYPE_TRACEPOINT);
        put32(&mut a, 4, 64);
        put64(&mut a, 8, id);
        put64(&mut a, 16, 1);
        put32(&mut a, 48, 1);
        // SAFETY: `a` is a valid perf_event_attr image of the size it declares; the other
        // arguments are plain integers.
        let fd = owned(unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                a.as_ptr(),
                -1 as libc::c_int,
                cpu as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        })?;
        for (req, arg) in [
            (PERF_EVENT_IOC_SET_BPF, self.fd.as_raw_fd()),
            (PERF_EVENT_IOC_ENABLE, 0),
        ] {
            // SAFETY: both requests take an integer argument, not a pointer.
            if unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(fd)
    }
}
