//! One compose project of the compose test, in a copy of the repository's files, and the
//! commands it is driven with. Dropping it takes everything down.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use cube_shared::LABEL_WORKER;
use cube_tests::{cube_bin, free_port, remove_containers, root};
use uuid::Uuid;

/// The compose command: v1's `docker-compose` where it is installed, else v2's plugin.
fn compose_program() -> Result<Vec<String>> {
    let works = |program: &[&str]| {
        Command::new(program[0])
            .args(&program[1..])
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for program in [&["docker-compose"][..], &["docker", "compose"]] {
        if works(program) {
            return Ok(program.iter().map(|s| s.to_string()).collect());
        }
    }
    bail!("neither `docker-compose` nor `docker compose` works: apt-get install docker-compose")
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn docker(args: &[&str]) -> Result<String> {
    run(Command::new("docker").args(args))
}

/// Copies the repository's files (those git tracks or would, as they are in the work tree:
/// no `target`, no `.env`, nothing ignored) into `to`, like a fresh clone with the changes
/// not yet committed.
fn copy_repository(to: &Path) -> Result<()> {
    let from = root();
    let list = run(Command::new("git").arg("-C").arg(&from).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]))?;
    for file in list.split('\0').filter(|f| !f.is_empty()) {
        let source = from.join(file);
        // Deleted in the work tree but not yet in git's index.
        if !source.is_file() {
            continue;
        }
        let target = to.join(file);
        std::fs::create_dir_all(target.parent().unwrap())?;
        std::fs::copy(&source, &target).with_context(|| format!("copying {file}"))?;
    }
    Ok(())
}

pub struct Stack {
    program: Vec<String>,
    pub project: String,
    /// The copy of the repository compose runs in.
    dir: tempfile::TempDir,
    /// What the compose file reads from the environment: the test's own image names, and host
    /// ports that cannot collide with another test's (nothing secret, no `.env`).
    env: Vec<(String, String)>,
    images: Vec<String>,
    /// The workers' names, to find the task containers they started on the host's engine.
    pub workers: Mutex<Vec<String>>,
    pub nats_port: u16,
    pub http_port: u16,
    pub metrics_port: u16,
}

impl Stack {
    pub fn new() -> Result<Stack> {
        let dir = tempfile::tempdir()?;
        copy_repository(dir.path()).context("copying the repository")?;
        anyhow::ensure!(
            dir.path().join("docker-compose.yml").is_file() && !dir.path().join(".env").exists(),
            "the copy has no docker-compose.yml, or has a .env"
        );
        let id = Uuid::new_v4().simple().to_string()[..10].to_string();
        // Letters and digits only: v1 strips anything else from project names.
        let project = format!("cubetest{id}");
        let nats_image = format!("cube-nats-test:{id}");
        let cube_image = format!("cube-test:{id}");
        let nats_port = free_port()?;
        let http_port = free_port()?;
        let metrics_port = free_port()?;
        let env = [
            ("COMPOSE_PROJECT_NAME", project.clone()),
            ("CUBE_NATS_IMAGE", nats_image.clone()),
            ("CUBE_IMAGE", cube_image.clone()),
            ("CUBE_NATS_PORT", nats_port.to_string()),
            ("CUBE_HTTP_PORT", http_port.to_string()),
            ("CUBE_METRICS_PORT", metrics_port.to_string()),
            // A stopped worker keeps its tasks for a minute, however slow this machine is.
            ("CUBE_NODE_GRACE", "60s".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let stack = Stack {
            program: compose_program()?,
            project,
            dir,
            env,
            images: vec![nats_image.clone(), cube_image.clone()],
            workers: Mutex::new(Vec::new()),
            nats_port,
            http_port,
            metrics_port,
        };
        // The images compose would otherwise build (or pull, for nats): with them there, `up`
        // runs them as they are.
        run(Command::new(root().join("scripts/compose-images"))
            .arg("--cube")
            .arg(cube_bin())
            .args([&nats_image, &cube_image]))
        .context("building the compose images")?;
        Ok(stack)
    }

    /// `docker-compose ARGS` (or `docker compose ARGS`) in the copy, with nothing of the
    /// caller's environment that compose or the file would read but what the test sets.
    pub fn compose(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .args(args)
            .current_dir(self.dir.path());
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("COMPOSE_") || name.starts_with("CUBE_") || name == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `cube ARGS` in the manager's container, as it is set up there.
    pub fn exec_cube(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["exec", "-T", "manager", "cube"];
        all.extend_from_slice(args);
        run(&mut self.compose(&all))
    }

    /// The containers of a service, by id.
    pub fn containers(&self, service: &str) -> Result<Vec<String>> {
        let out = run(&mut self.compose(&["ps", "-q", service]))?;
        Ok(out.split_whitespace().map(String::from).collect())
    }

    /// What compose and the services said, for a failure message.
    pub fn logs(&self) -> String {
        let out = self
            .compose(&["logs", "--no-color", "--tail", "40"])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The project's containers, volumes and networks that Docker still has, by label.
    pub fn leftovers(&self) -> Result<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = String::new();
        for kind in ["container", "volume", "network"] {
            let all = if kind == "container" { "-aq" } else { "-q" };
            let out = docker(&[kind, "ls", all, "--filter", &label])?;
            for id in out.split_whitespace() {
                left.push_str(&format!("{kind} {id}\n"));
            }
        }
        Ok(left)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut workers = std::mem::take(&mut *self.workers.lock().unwrap());
        for id in self.containers("worker").unwrap_or_default() {
            workers.extend(hostname(&id).ok());
        }
        let _ = self
            .compose(&["down", "-v", "--remove-orphans", "-t", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for w in workers {
            remove_containers(&format!("{LABEL_WORKER}={w}"));
        }
        for image in &self.images {
            let _ = Command::new("docker")
                .args(["rmi", "-f", image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A container's host name, which is what a worker without `--name` calls itself.
pub fn hostname(container: &str) -> Result<String> {
    Ok(
        docker(&["inspect", "-f", "{{.Config.Hostname}}", container])?
            .trim()
            .to_string(),
    )
}
