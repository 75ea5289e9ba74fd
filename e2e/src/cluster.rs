//! A control plane and agents as real processes, configured the way an operator would: data
//! directory, ports, a join token from the CLI, `hais-agent enroll`, `hais-agent run`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::call;
use crate::proc::{Proc, free_tcp_port, free_udp_port, wait_for};
use crate::workspace_bin;

/// The admin password every test control plane starts with.
pub const ADMIN_PASSWORD: &str = "e2e-admin-password-0123456789";

/// A control plane on the embedded SQLite default (or the database in `extra_env`).
#[derive(Debug)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub api: SocketAddr,
    pub uplink: SocketAddr,
    extra_env: Vec<(String, String)>,
    pub proc: Option<Proc>,
}

impl ControlPlane {
    /// Starts it in `dir` and waits until `/ready` answers.
    pub fn start(dir: &Path, extra_env: &[(&str, &str)]) -> ControlPlane {
        std::fs::create_dir_all(dir).unwrap();
        let mut cp = ControlPlane {
            dir: dir.to_owned(),
            api: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            uplink: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            proc: None,
        };
        cp.restart();
        cp
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(workspace_bin("hais-control-plane"));
        cmd.env("HAIS_DATA_DIR", &self.dir)
            .env("HAIS_LISTEN", self.api.to_string())
            .env("HAIS_JA4_UPLINK_BIND", self.uplink.to_string())
            .env("HAIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("HAIS_LOG_FORMAT", "json")
            .env_remove("HAIS_DATABASE_URL")
            .env_remove("HAIS_REDIS_URL")
            .env_remove("HAIS_SERVICE");
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// (Re)starts the process on the same ports and data, and waits until it is ready.
    pub fn restart(&mut self) {
        let p = Proc::spawn("control-plane", self.command(), &self.dir);
        self.proc = Some(p);
        let api = self.api;
        wait_for("control plane /ready", Duration::from_secs(60), || {
            (call(api, "GET", "/ready", None, None).0 == 200).then_some(())
        });
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill9();
        }
    }

    /// `hais-control-plane token create`: the last word printed.
    pub fn token(&self) -> String {
        let out = self
            .command()
            .args(["token", "create", "--ttl", "10m"])
            .output()
            .expect("token create");
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .last()
            .expect("a token")
            .to_owned()
    }

    /// An admin access token.
    pub fn login(&self) -> String {
        let (st, body) = call(
            self.api,
            "POST",
            "/api/auth/login",
            None,
            Some(&json!({"username": "admin", "password": ADMIN_PASSWORD})),
        );
        assert_eq!(st, 200, "login: {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// GET with a token.
    pub fn get(&self, token: &str, path: &str) -> (u16, Value) {
        call(self.api, "GET", path, Some(token), None)
    }

    /// POST a JSON body with a token.
    pub fn post(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        call(self.api, "POST", path, Some(token), Some(body))
    }

    /// The built-in CA's bundle (PEM), which agents check the control plane by.
    pub fn bundle_pem(&self, token: &str) -> String {
        let (st, pem) =
            crate::http::call_text(self.api, "GET", "/api/spire/bundle", Some(token), None);
        assert_eq!(st, 200, "bundle: {pem}");
        pem
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }
}

/// An agent's state directory and its processes.
#[derive(Debug)]
pub struct Agent {
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub proc: Option<Proc>,
    /// Extra environment for `run` (e.g. `HAIS_ATTRIBUTION=0`).
    pub env: Vec<(String, String)>,
}

impl Agent {
    pub fn new(dir: &Path) -> Agent {
        std::fs::create_dir_all(dir).unwrap();
        Agent {
            state_dir: dir.join("state"),
            log_dir: dir.to_owned(),
            proc: None,
            env: Vec::new(),
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(workspace_bin("hais-agent"));
        cmd.env_remove("HAIS_SERVER").env_remove("HAIS_STATE_DIR");
        cmd
    }

    /// `hais-agent enroll`; returns (success, combined output).
    pub fn enroll(&self, server: SocketAddr, token: &str) -> (bool, String) {
        let out = self
            .command()
            .args(["enroll", "--server", &server.to_string(), "--token", token])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .expect("hais-agent enroll");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `hais-agent run` with `args` (interfaces, filters…), streaming to `server`.
    pub fn run(&mut self, server: SocketAddr, args: &[&str]) {
        let mut cmd = self.command();
        cmd.arg("run")
            .args(["--server", &server.to_string()])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.proc = Some(Proc::spawn("agent", cmd, &self.log_dir));
    }

    /// `hais-agent status --json` of the running agent.
    pub fn status(&self) -> Option<Value> {
        let out = self
            .command()
            .args(["status", "--json", "--state-dir"])
            .arg(&self.state_dir)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }
}

/// Whether this process may capture on `lo` (root or CAP_NET_RAW).
pub fn can_capture() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 13) != 0)
}
