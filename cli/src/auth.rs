//! `cube auth-config` and `cube auth-passwords`: the nats-server users of Cube's roles, and
//! their passwords kept in files (what docker-compose.yml's `init` service makes on first
//! start, for nats-server and for `--nats-password-file`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use cube_bus::auth::{random_password, server_config, users_by_reference, User, RESERVED};

/// Which users: the manager and the client always, and the workers'.
#[derive(Args, Debug)]
#[group(id = "who", required = true, multiple = true)]
pub struct UsersArgs {
    /// A worker's name, for a user of its own that may act only as that worker; repeat for
    /// each worker.
    #[arg(long = "worker")]
    workers: Vec<String>,
    /// Add the user `workers`, shared by workers whose names are not known in advance (e.g.
    /// `docker compose up --scale worker=3`): it may act as any worker, so one compromised
    /// worker can take or report on the others' work.
    #[arg(long)]
    shared_workers: bool,
}

impl UsersArgs {
    /// The users, their passwords `$CUBE_<ROLE>_PASSWORD` references.
    fn users(&self) -> Result<Vec<User>> {
        for w in &self.workers {
            cube_shared::validate::validate_worker_name(w)
                .map_err(|e| anyhow::anyhow!("--worker {w}: {e}"))?;
            anyhow::ensure!(
                !RESERVED.contains(&w.as_str()),
                "--worker {w}: the name is reserved"
            );
        }
        Ok(users_by_reference(self.shared_workers, &self.workers))
    }
}

#[derive(Args, Debug)]
pub struct AuthConfigArgs {
    #[command(flatten)]
    users: UsersArgs,
    /// Write passwords as `$CUBE_<ROLE>_PASSWORD` references that nats-server reads from its
    /// environment, instead of generating random ones (printed to stderr).
    #[arg(long)]
    password_env: bool,
}

pub fn auth_config(args: AuthConfigArgs) -> Result<()> {
    let mut users = args.users.users()?;
    if !args.password_env {
        for u in &mut users {
            u.password = random_password();
            eprintln!("{}: {}", u.name(), u.password);
        }
    }
    print!("{}", server_config(&users));
    Ok(())
}

#[derive(Args, Debug)]
pub struct AuthPasswordsArgs {
    /// The directory that keeps them, one file per user: DIR/<user>.password.
    #[arg(long, env = "CUBE_AUTH_DIR", value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    users: UsersArgs,
}

/// Makes sure `args.dir` holds a password for each user: generates those missing, keeps
/// those there, so that running it again changes nothing. Says which on stderr.
pub fn auth_passwords(args: AuthPasswordsArgs) -> Result<()> {
    for user in args.users.users()? {
        let (path, generated) = ensure_password(&args.dir, user.name())?;
        let what = if generated { "generated" } else { "kept" };
        eprintln!("{}: {what} {}", user.name(), path.display());
    }
    Ok(())
}

/// The file of `user`'s password in `dir`, and whether it was generated now. A new file is
/// readable by its owner only, and appears whole or not at all (written aside, then renamed),
/// so that a crash cannot leave an empty password to be kept. It holds the password without
/// a line ending, for `$(cat FILE)` in any shell, also through a terminal.
fn ensure_password(dir: &Path, user: &str) -> Result<(PathBuf, bool)> {
    let path = dir.join(format!("{user}.password"));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            anyhow::ensure!(
                !text.trim().is_empty(),
                "{} is empty: remove it for a new password",
                path.display()
            );
            return Ok((path, false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let aside = dir.join(format!(".{user}.password.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)
        .with_context(|| format!("creating {}", aside.display()))?;
    file.write_all(random_password().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", aside.display()))?;
    std::fs::rename(&aside, &path).with_context(|| format!("creating {}", path.display()))?;
    Ok((path, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_password_is_generated_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (path, generated) = ensure_password(dir.path(), "client").unwrap();
        assert!(generated);
        assert_eq!(path, dir.path().join("client.password"));
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.len(), 32, "{first:?}");
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first:?}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let (_, generated) = ensure_password(dir.path(), "client").unwrap();
        assert!(!generated);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        let (other, _) = ensure_password(dir.path(), "manager").unwrap();
        assert_ne!(std::fs::read_to_string(other).unwrap(), first);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "files left aside: {names:?}");
    }

    #[test]
    fn an_empty_password_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("workers.password"), "\n").unwrap();
        let err = ensure_password(dir.path(), "workers").unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let text = std::fs::read_to_string(dir.path().join("workers.password")).unwrap();
        assert_eq!(text, "\n");
    }
}
