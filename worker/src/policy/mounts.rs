//! Which host paths reach the container engine. Mounting the Docker socket, containerd's, the
//! engines' state (`/var/lib/docker`), a directory that holds one of them (`/run`, `/`) or
//! anything under `/proc` (where `/proc/1/root` is the host's whole `/`) hands a task the
//! engine, which is root on the host: that takes `--allow-docker-socket`, whatever
//! `--allow-host-mounts` says.
//!
//! A path is judged by what it names on this host, not by how it is written: its lexical form
//! (`/var//run/./docker.sock`), its canonical form with every symlink resolved (a link an
//! earlier task planted in a writable host directory), and the identity of the file it ends
//! at and of each directory above it (a hard link to the socket, or another name the host
//! mounts `/run` under). A path with `..` is refused outright: written plainly, it needs none.
//!
//! Limits that remain:
//! - The worker resolves the path when it admits the task; Docker resolves it again when it
//!   creates the container, moments later. A task that can write to a host directory (through
//!   an earlier mount of it) could swap a checked directory for a symlink in between. Only
//!   give tasks host directories that no running task can write to, or mount them read-only.
//! - Paths are resolved in the worker's own view of the filesystem. A worker that runs in a
//!   container (the compose file's) sees its container's files, not the host's: there, only
//!   the lexical checks hold, so leave `--allow-host-mounts` off in a containerised worker.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Paths that reach a container engine on any host: the engines' sockets and state under both
/// of their usual names (`/var/run` is a symlink to `/run` on most hosts, but not all), and
/// `/proc`. The socket `DOCKER_HOST` names is added at run time.
const ENGINE_PATHS: [&str; 13] = [
    "/proc",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/docker",
    "/var/run/docker",
    "/run/containerd",
    "/var/run/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/run/podman",
    "/var/run/podman",
    "/run/crio",
    "/var/run/crio",
];

/// What a host path gives a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPath {
    /// A host path like any other: `--allow-host-mounts`.
    Ordinary,
    /// It is, is under or holds `reaches`, an engine path: `--allow-docker-socket`.
    Engine { reaches: String },
}

/// What mounting the host path `source` gives a task, judged on this host; `Err` with the
/// reason if it cannot be judged (then it is refused whatever the flags).
pub(super) fn classify(source: &str) -> Result<HostPath, String> {
    classify_against(source, &engine_paths())
}

/// [`classify`] against the engine paths `engine`.
fn classify_against(source: &str, engine: &[String]) -> Result<HostPath, String> {
    if source.split('/').any(|part| part == "..") {
        return Err(format!(
            "the host path {source} has `..`: write it without (it is resolved on the worker)"
        ));
    }
    let lexical = normalise(source);
    if let Some(hit) = reaches(&lexical, engine) {
        return Ok(engine_path(hit));
    }
    let canonical = resolve(Path::new(&lexical))
        .map_err(|e| format!("the host path {source} cannot be resolved on this worker: {e}"))?;
    if let Some(hit) = canonical.to_str().and_then(|c| reaches(c, engine)) {
        return Ok(engine_path(hit));
    }
    if let Some(hit) = same_file_or_under(&canonical, engine) {
        return Ok(engine_path(hit));
    }
    Ok(HostPath::Ordinary)
}

fn engine_path(hit: &str) -> HostPath {
    HostPath::Engine {
        reaches: hit.to_string(),
    }
}

/// The engine paths of this host: [`ENGINE_PATHS`] and the socket of a `unix://` `DOCKER_HOST`.
fn engine_paths() -> Vec<String> {
    let mut paths: Vec<String> = ENGINE_PATHS.iter().map(|p| p.to_string()).collect();
    if let Some(socket) = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(normalise))
    {
        paths.push(socket);
    }
    paths
}

/// The engine path `path` is, is under, or holds.
fn reaches<'a>(path: &str, engine: &'a [String]) -> Option<&'a str> {
    engine
        .iter()
        .find(|e| within(path, e) || within(e, path))
        .map(String::as_str)
}

/// Whether `path` is `dir` or under it (both normalised).
fn within(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `/var//run/./docker.sock/` → `/var/run/docker.sock` (no `..`: those are refused before).
fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// `path` with every symlink resolved. A path that does not exist yet (Docker creates a
/// missing bind source as a directory) is its deepest existing ancestor, resolved, with the
/// rest appended; a dangling symlink on the way is an error, since Docker would follow it.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut missing = Vec::new();
    loop {
        match fs::canonicalize(&existing) {
            Ok(mut resolved) => {
                resolved.extend(missing.iter().rev());
                return Ok(resolved);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if fs::symlink_metadata(&existing).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} is a symlink to nothing", existing.display()),
                    ));
                }
                match (existing.parent(), existing.file_name()) {
                    (Some(parent), Some(name)) => {
                        missing.push(name.to_os_string());
                        existing = parent.to_path_buf();
                    }
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The engine path that `canonical`, or a directory above it, is the very same file as (same
/// device and inode): a hard link to a socket, or another mount of an engine directory.
fn same_file_or_under<'a>(canonical: &Path, engine: &'a [String]) -> Option<&'a str> {
    let identity = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let known: Vec<((u64, u64), &str)> = engine
        .iter()
        .filter_map(|e| identity(Path::new(e)).map(|id| (id, e.as_str())))
        .collect();
    canonical
        .ancestors()
        .filter_map(identity)
        .find_map(|id| known.iter().find(|(k, _)| *k == id).map(|(_, e)| *e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn engine(paths: &[&str]) -> Vec<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    fn reach(source: &str) -> Option<String> {
        match classify(source).unwrap() {
            HostPath::Engine { reaches } => Some(reaches),
            HostPath::Ordinary => None,
        }
    }

    #[test]
    fn engine_paths_their_insides_and_their_parents() {
        let e = engine(&ENGINE_PATHS);
        for (path, hit) in [
            ("/run/docker.sock", Some("/run/docker.sock")),
            ("/run/containerd/containerd.sock", Some("/run/containerd")),
            ("/var/lib/docker/volumes", Some("/var/lib/docker")),
            ("/proc/1/root", Some("/proc")),
            ("/proc", Some("/proc")),
            ("/var/lib", Some("/var/lib/docker")),
            ("/", Some("/proc")),
            ("/var/lib/dockerfiles", None),
            ("/srv/run/docker.sock", None),
            ("/var/log", None),
        ] {
            assert_eq!(reaches(path, &e), hit, "{path}");
        }
        assert!(within("/a/b", "/a") && within("/a", "/a") && within("/a", "/"));
        assert!(!within("/ab", "/a") && !within("/a", "/a/b"));
    }

    #[test]
    fn how_a_path_is_written_does_not_matter() {
        assert_eq!(
            normalise("/var//run/./docker.sock/"),
            "/var/run/docker.sock"
        );
        assert_eq!(normalise("/"), "/");
        assert_eq!(
            reach("//var/run/./docker.sock").as_deref(),
            Some("/var/run/docker.sock")
        );
        assert_eq!(
            reach("/proc/self/root/run/docker.sock").as_deref(),
            Some("/proc")
        );
        assert_eq!(
            reach("/proc/1/root/run/docker.sock").as_deref(),
            Some("/proc")
        );
        let dots = classify("/srv/../run/docker.sock").unwrap_err();
        assert!(dots.contains("`..`"), "{dots}");
        assert!(classify("/srv/data/..").is_err());
    }

    /// Symlinks, hard links and missing paths, in a scratch directory standing in for the
    /// engine's (`engine/docker.sock`, `engine/state`).
    #[test]
    fn what_a_path_resolves_to_is_judged() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let at = |p: &str| root.join(p).to_str().unwrap().to_string();
        fs::create_dir_all(root.join("engine/state")).unwrap();
        fs::write(root.join("engine/docker.sock"), "").unwrap();
        fs::create_dir_all(root.join("tasks/old")).unwrap();
        let e = engine(&[&at("engine/docker.sock"), &at("engine/state")]);
        let class = |p: &str| classify_against(&at(p), &e);
        let engine_path = |p: &str| Ok(HostPath::Engine { reaches: at(p) });

        assert_eq!(class("tasks/old"), Ok(HostPath::Ordinary));
        assert_eq!(class("tasks/new/deeper"), Ok(HostPath::Ordinary), "missing");
        assert_eq!(
            class("engine"),
            engine_path("engine/docker.sock"),
            "holds it"
        );

        // A link an earlier task planted, to the socket, to a directory holding it, to the
        // state, and a link under which a path does not exist yet.
        symlink(root.join("engine/docker.sock"), root.join("tasks/old/s")).unwrap();
        symlink(root.join("engine"), root.join("tasks/old/e")).unwrap();
        symlink("../../engine/state", root.join("tasks/old/st")).unwrap();
        assert_eq!(class("tasks/old/s"), engine_path("engine/docker.sock"));
        assert_eq!(class("tasks/old/e"), engine_path("engine/docker.sock"));
        assert_eq!(
            class("tasks/old/e/docker.sock"),
            engine_path("engine/docker.sock")
        );
        assert_eq!(class("tasks/old/st/new/dir"), engine_path("engine/state"));
        // Links inside a mounted directory are harmless: in the container they name the
        // container's own files.
        assert_eq!(class("tasks/old"), Ok(HostPath::Ordinary));

        // A hard link is the socket itself; a link to nothing would be followed by Docker.
        fs::hard_link(root.join("engine/docker.sock"), root.join("tasks/hard")).unwrap();
        assert_eq!(class("tasks/hard"), engine_path("engine/docker.sock"));
        symlink(root.join("engine/gone"), root.join("tasks/dangling")).unwrap();
        let dangling = class("tasks/dangling/x").unwrap_err();
        assert!(dangling.contains("symlink to nothing"), "{dangling}");

        // A link into /proc, judged against this host's engine paths: refused either way
        // (resolved to the host's `/`, or not resolvable).
        symlink("/proc/1/root/run", root.join("tasks/p")).unwrap();
        assert_ne!(classify(&at("tasks/p")), Ok(HostPath::Ordinary));
    }
}
