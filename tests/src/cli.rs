//! Running this build's `cube` binary the way a user does, against a test's NATS.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::{root, WITHIN};

/// The `cube` binary of this build.
pub fn cube_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("debug").join("cube");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// Runs `cube ARGS` against `nats_url`; returns stdout, or an error with stderr.
pub async fn cube(nats_url: &str, args: &[&str]) -> Result<String> {
    cube_with_env(nats_url, &[], args).await
}

/// Runs `cube ARGS` against `nats_url` with extra environment variables (credentials, say).
pub async fn cube_with_env(nats_url: &str, env: &[(&str, &str)], args: &[&str]) -> Result<String> {
    let out = cube_output_with_env(nats_url, env, args).await?;
    if !out.ok {
        bail!("cube {}: {}", args.join(" "), out.stderr);
    }
    Ok(out.stdout)
}

/// What a `cube` command wrote, and whether it succeeded.
pub struct CubeOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cube ARGS` against `nats_url`, whatever its exit status.
pub async fn cube_output(nats_url: &str, args: &[&str]) -> Result<CubeOutput> {
    cube_output_with_env(nats_url, &[], args).await
}

/// Runs `cube ARGS` against `nats_url` with extra environment variables, whatever its exit
/// status; killed if it has not ended within [`WITHIN`].
pub async fn cube_output_with_env(
    nats_url: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> Result<CubeOutput> {
    let out = tokio::time::timeout(
        WITHIN,
        tokio::process::Command::new(cube_bin())
            .args(args)
            .env("CUBE_NATS_URL", nats_url)
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("cube {} did not end within {WITHIN:?}", args.join(" ")))??;
    Ok(CubeOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
