//! A throw-away PostgreSQL primary with a streaming standby, on loopback, for the read-replica
//! tests: `initdb` in a temporary directory, `pg_basebackup -R` of it, both started on free
//! ports with their sockets in that directory. Dropping the [`Cluster`] stops both servers and
//! removes the directory, also when the test panics.
//!
//! The binaries come from `HAIS_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else
//! `PATH`. As root (PostgreSQL refuses to run as root) the servers run as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::free_port;

/// A running primary and standby.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    /// Data directories of the servers started so far, stopped in reverse order on drop.
    started: Vec<PathBuf>,
    pub primary_port: u16,
    pub standby_port: u16,
}

/// Where the PostgreSQL server binaries are, if anywhere.
pub fn bin_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("HAIS_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    /// Starts the pair; `None` (with a message) only when the PostgreSQL binaries are absent.
    pub fn start() -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            eprintln!(
                "SKIPPED: no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup); \
                 install them or set HAIS_PG_BIN"
            );
            return None;
        };
        let dir =
            std::env::temp_dir().join(format!("hais-replica-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Cluster {
            dir,
            bin,
            as_postgres: is_root(),
            started: Vec::new(),
            primary_port: free_port(),
            standby_port: free_port(),
        };
        if c.as_postgres {
            c.run("chown", &["postgres:", c.dir.to_str().unwrap()], false);
        }
        let primary = c.dir.join("primary");
        let standby = c.dir.join("standby");
        c.pg(
            "initdb",
            &[
                "-D",
                primary.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        c.append(
            &primary.join("postgresql.conf"),
            &format!(
                "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\nfsync = off\n",
                c.primary_port,
                c.dir.display()
            ),
        );
        c.append(
            &primary.join("pg_hba.conf"),
            "host replication all 127.0.0.1/32 trust\n",
        );
        c.pg_ctl_start(&primary);
        c.pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &c.primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                standby.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        // The copied configuration names the primary's port: the last setting wins.
        c.append(
            &standby.join("postgresql.conf"),
            &format!("port = {}\n", c.standby_port),
        );
        c.pg_ctl_start(&standby);
        Some(c)
    }

    pub fn primary_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.primary_port
        )
    }

    pub fn standby_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.standby_port
        )
    }

    fn pg_ctl_start(&mut self, data: &Path) {
        let log = data.with_extension("log");
        self.pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "120",
                "start",
            ],
        );
        self.started.push(data.to_owned());
    }

    /// Appends to a configuration file of a server (root may write the `postgres` user's).
    fn append(&self, file: &Path, text: &str) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Runs a PostgreSQL binary, as `postgres` when root; panics with its output on failure.
    fn pg(&self, tool: &str, args: &[&str]) {
        let path = self.bin.join(tool);
        let path = path.to_str().unwrap().to_owned();
        self.run(&path, args, self.as_postgres);
    }

    fn run(&self, program: &str, args: &[&str], as_postgres: bool) {
        let out = if as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--", program])
                .args(args)
                .current_dir(&self.dir)
                .output()
        } else {
            Command::new(program)
                .args(args)
                .current_dir(&self.dir)
                .output()
        }
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for data in self.started.drain(..).rev() {
            let pg_ctl = self.bin.join("pg_ctl");
            let args = [
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ];
            let _ = if self.as_postgres {
                Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(&pg_ctl)
                    .args(args)
                    .output()
            } else {
                Command::new(&pg_ctl).args(args).output()
            };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
