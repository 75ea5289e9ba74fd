//! Files that hold secrets, kept private whatever the umask.
//!
//! The embedded database holds the JWT signing secret, the SPIFFE CA's private key and password
//! hashes: anyone who can read it can mint admin tokens and agent certificates. So the data
//! directory is `0700` and every file in it `0600`, set explicitly rather than left to the
//! umask (the quickstart and a shell's default umask 022 made them world-readable). Wider
//! permissions found at start-up are tightened with a loud warning (the secrets may already have
//! been read: rotate them); if they cannot be tightened, start-up fails.

use std::fs::{self, OpenOptions, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every secret file.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) as 0700, or tightens an existing one to 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
    }
    tighten(dir, DIR_MODE)
}

/// Creates `path` as 0600 if missing (so SQLite, which gives its `-wal` and `-shm` files the
/// database file's mode, never creates anything wider), or tightens it and its SQLite
/// companions if they exist.
pub fn private_db_file(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(path)?;
    }
    for p in with_companions(path) {
        if p.exists() {
            tighten(&p, FILE_MODE)?;
        }
    }
    Ok(())
}

/// The database file and the companions SQLite creates beside it.
fn with_companions(path: &Path) -> [std::path::PathBuf; 3] {
    let s = path.as_os_str().to_owned();
    let mut wal = s.clone();
    wal.push("-wal");
    let mut shm = s;
    shm.push("-shm");
    [path.to_owned(), wal.into(), shm.into()]
}

/// Writes a secret file with mode 0600 (replacing its contents; an existing file is tightened
/// before anything is written to it).
pub fn write_secret(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Tightens an existing secret file to 0600 (warning loudly if it was wider).
pub fn private_file(path: &Path) -> std::io::Result<()> {
    tighten(path, FILE_MODE)
}

/// Whether others than the owner may read or write `path` (group or other bits set).
pub fn is_wider_than_owner(path: &Path) -> std::io::Result<bool> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o077 != 0)
}

fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = fs::metadata(path)?.permissions().mode() & 0o777;
    if current & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(path, Permissions::from_mode(mode))?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{current:o}"),
        now = format!("{mode:o}"),
        "secrets were readable by other users: permissions tightened. If anyone else could log \
         in here, rotate the JWT secret and the SPIFFE CA, and change every password"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn everything_is_private_whatever_the_umask_made_it() {
        let base = std::env::temp_dir().join(format!("hais-secure-fs-{}", uuid::Uuid::now_v7()));
        let dir = base.join("data");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // A world-readable directory and database from an older version are tightened.
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let db = dir.join("hais.db");
        fs::write(&db, b"x").unwrap();
        fs::write(dir.join("hais.db-wal"), b"x").unwrap();
        fs::set_permissions(&db, Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(dir.join("hais.db-wal"), Permissions::from_mode(0o666)).unwrap();
        assert!(is_wider_than_owner(&db).unwrap());
        private_dir(&dir).unwrap();
        private_db_file(&db).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.join("hais.db-wal")), 0o600);
        // A new database file is created 0600.
        let fresh = dir.join("new.db");
        private_db_file(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        // Secrets replace what was there, and end up 0600 even if the old file was wider.
        let s = dir.join("admin-password");
        fs::write(&s, b"old").unwrap();
        fs::set_permissions(&s, Permissions::from_mode(0o644)).unwrap();
        write_secret(&s, b"new\n").unwrap();
        assert_eq!(
            (mode(&s), fs::read(&s).unwrap()),
            (0o600, b"new\n".to_vec())
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
