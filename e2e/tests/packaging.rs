//! The shipped systemd units (`packaging/systemd/`) pass `systemd-analyze verify` with no
//! complaint (unknown keys, bad values, missing binaries), run against this build's binaries,
//! and start the real programs with the arguments they carry.

use std::path::{Path, PathBuf};
use std::process::Command;

use hais_e2e::workspace_bin;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// `ExecStart=` of `unit`, split into the program and its arguments.
fn exec_start(unit: &str) -> (String, Vec<String>) {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = line.split_whitespace().map(str::to_owned);
    (words.next().unwrap(), words.collect())
}

#[test]
fn systemd_units_verify_cleanly() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no systemd-analyze");
        return;
    }
    let dir = std::env::temp_dir().join(format!("hais-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["hais-agent", "hais-control-plane"] {
        let text =
            std::fs::read_to_string(packaging().join(format!("systemd/{name}.service"))).unwrap();
        let (program, _) = exec_start(&text);
        assert_eq!(program, format!("/usr/bin/{name}"));
        // The same unit, pointing at this build's binary (verify checks it is executable).
        let local = text.replace(&program, &workspace_bin(name).display().to_string());
        let path = dir.join(format!("{name}.service"));
        std::fs::write(&path, local).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {said}");
        assert!(said.trim().is_empty(), "{name}: {said}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The arguments in the units are ones the binaries accept, with the example configs.
#[test]
fn units_arguments_and_example_configs_are_accepted() {
    let agent = std::fs::read_to_string(packaging().join("systemd/hais-agent.service")).unwrap();
    let (_, mut args) = exec_start(&agent);
    let cfg = packaging().join("config/agent.toml");
    for a in args.iter_mut() {
        if a == "/etc/hais/agent.toml" {
            *a = cfg.display().to_string();
        }
    }
    // `run` with the unit's arguments plus --help: parsed, not run.
    args.push("--help".into());
    let out = Command::new(workspace_bin("hais-agent"))
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let cp =
        std::fs::read_to_string(packaging().join("systemd/hais-control-plane.service")).unwrap();
    let (_, args) = exec_start(&cp);
    assert!(args.iter().any(|a| a == "/etc/hais/control-plane.toml"));
    assert!(args.iter().any(|a| a == "--data-dir"));
}
