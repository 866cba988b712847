//! `cube`: one binary for the whole orchestrator — a local dev cluster, the manager, a
//! worker, and the client commands.

mod auth;
mod bench;
mod cmd;
mod connect;
mod dev;
mod logs;
mod metrics;
mod nats_process;
mod output;
mod schema;
mod serve;
mod wait;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, CommandFactory, Parser, Subcommand};
use cube_shared::units::{parse_bytes, parse_duration};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "cube",
    version,
    about = "A small container orchestrator: NATS for messages, Docker for containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start a local cluster in one go: nats-server (JetStream), a manager and a worker.
    Dev(dev::DevArgs),
    /// Run the manager (control plane).
    Manager(serve::ManagerArgs),
    /// Run a worker (data plane): runs tasks as Docker containers.
    Worker(serve::WorkerArgs),
    /// Submit a task; prints its id.
    #[command(alias = "run")]
    Submit(cmd::submit::SubmitArgs),
    /// Stop a task.
    Stop(cmd::stop::StopArgs),
    /// Show tasks, or one task in detail.
    Status(cmd::status::StatusArgs),
    /// Show the workers' nodes.
    Nodes(cmd::nodes::NodesArgs),
    /// Show the manager processes: the leader, its epoch, and the standbys.
    Managers(cmd::managers::ManagersArgs),
    /// Services: a named desired state the manager keeps true (deploy, scale, ls, status,
    /// history, rollback, promote, rm, endpoints).
    Service(cmd::service::ServiceArgs),
    /// Secrets: values only the manager can read, given to a task's environment on the one
    /// worker it is placed on (put, ls, rm; `cube submit --secret-env VAR=SECRET`).
    Secret(cmd::secret::SecretArgs),
    /// Tokens of the HTTP API and dashboard (create, revoke, ls), with roles read, submit
    /// and admin.
    Token(cmd::token::TokenArgs),
    /// Show the journal of decisions (submitted, scheduled, rejected, failed, …).
    Events(cmd::events::EventsArgs),
    /// Print a task's container output, or follow it with -f.
    ///
    /// Prints what is kept (the newest output, up to the manager's `--logs-per-task`), its
    /// stdout to stdout and its stderr to stderr, and exits. With -f it keeps printing new
    /// output, also across restarts of the task's worker, until Ctrl-C or until the task has
    /// ended for good and all its output is printed.
    Logs(logs::LogsArgs),
    /// Measure Cube's speed and scale beside raw JetStream and raw Docker.
    Bench(bench::BenchArgs),
    /// Print the nats-server `authorization` block for Cube's roles (manager, client, and
    /// one user per worker or a shared one for all), deny by default.
    AuthConfig(auth::AuthConfigArgs),
    /// Keep a password for each of Cube's NATS users (as for auth-config) in a directory, one
    /// file each: generate the missing ones, keep the others. For nats-server's environment (with `auth-config
    /// --password-env`) and --nats-password-file; docker-compose.yml's `init` service.
    AuthPasswords(auth::AuthPasswordsArgs),
    /// Print the JSON Schema of the wire types (TaskEvent, Task, …), for clients in other
    /// languages; docs/asyncapi.yaml describes the subjects that carry them.
    Schema(schema::SchemaArgs),
    /// Print a shell completion script: `source <(cube completions bash)`.
    Completions(schema::CompletionsArgs),
}

/// The image `scripts/setup` builds locally (busybox, from scratch).
pub const IMAGE: &str = "cube-busybox:latest";

/// How to reach NATS; every command takes these.
#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL, or several separated by commas (the servers of one cluster).
    #[arg(
        long,
        env = "CUBE_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// How long to wait for the first connection.
    #[arg(long, env = "CUBE_NATS_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration, global = true)]
    pub nats_connect_timeout: Duration,
    /// A NATS credentials file (user JWT and NKey seed), for servers in operator mode.
    #[arg(long, env = "CUBE_NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// NATS user name (with --nats-password).
    #[arg(long, env = "CUBE_NATS_USER", global = true)]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(
        long,
        env = "CUBE_NATS_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// A file holding the NATS password (with --nats-user; its first line, e.g. a file `cube
    /// auth-passwords` wrote), to keep it out of the environment and the command line.
    /// --nats-password wins if both are given.
    #[arg(long, env = "CUBE_NATS_PASSWORD_FILE", global = true)]
    pub nats_password_file: Option<PathBuf>,
    /// NATS authentication token.
    #[arg(long, env = "CUBE_NATS_TOKEN", global = true, hide_env_values = true)]
    pub nats_token: Option<String>,
    /// CA certificate of the NATS server's TLS certificate (turns TLS on).
    #[arg(long, env = "CUBE_NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate for NATS servers that verify clients (with --nats-tls-key).
    #[arg(long, env = "CUBE_NATS_TLS_CERT", global = true)]
    pub nats_tls_cert: Option<PathBuf>,
    #[arg(long, env = "CUBE_NATS_TLS_KEY", global = true)]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsArgs {
    /// Only a URL: for processes `cube dev` starts itself.
    pub fn url(url: String, timeout: Duration, credentials: &cube_bus::Credentials) -> NatsArgs {
        NatsArgs {
            nats_url: url,
            nats_connect_timeout: timeout,
            nats_creds: credentials.creds_file.clone(),
            nats_user: credentials.user.clone(),
            nats_password: credentials.password.clone(),
            nats_password_file: None,
            nats_token: credentials.token.clone(),
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
        }
    }

    /// The credentials to connect with, the password read from --nats-password-file if
    /// that is how it was given.
    pub fn credentials(&self) -> Result<cube_bus::Credentials> {
        let password = match (&self.nats_password, &self.nats_password_file) {
            (Some(password), _) => Some(password.clone()),
            (None, Some(path)) => Some(read_password_file(path)?),
            (None, None) => None,
        };
        Ok(cube_bus::Credentials {
            creds_file: self.nats_creds.clone(),
            user: self.nats_user.clone(),
            password,
            token: self.nats_token.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
        })
    }

    fn has_credentials(&self) -> bool {
        self.nats_creds.is_some() || self.nats_user.is_some() || self.nats_token.is_some()
    }

    /// For the client commands: without credentials given, those `cube dev` wrote for its
    /// client (in `.cube/dev/client.auth` under the current directory), if any.
    pub fn client(&self) -> NatsArgs {
        let mut args = self.clone();
        if !self.has_credentials() {
            if let Ok(text) = std::fs::read_to_string(dev::CLIENT_AUTH) {
                if let Some((user, password)) = text.trim().split_once(':') {
                    args.nats_user = Some(user.to_string());
                    args.nats_password = Some(password.to_string());
                }
            }
        }
        args
    }
}

/// A password file's first line, without its line ending.
fn read_password_file(path: &std::path::Path) -> Result<String> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --nats-password-file {}", path.display()))?;
    let password = text.lines().next().unwrap_or_default();
    anyhow::ensure!(
        !password.is_empty(),
        "--nats-password-file {} is empty",
        path.display()
    );
    Ok(password.to_string())
}

pub fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

pub fn bytes_size(s: &str) -> Result<u64, String> {
    parse_bytes(s)
}

fn init_tracing(default: &str) {
    // The client commands (`warn`) explain a failed connection themselves: async-nats's own
    // report of it would only repeat it less clearly.
    let default = match default {
        "warn" => "warn,async_nats=off",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A token cancelled on the first SIGINT or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down (a second signal ends the process at once)");
            cancel.cancel();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
            tracing::info!("shutting down");
            cancel.cancel();
        }
    });
    token
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole chain of causes on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Dev(args) => {
            init_tracing("info,async_nats=warn");
            dev::run(args, shutdown_on_signals()).await
        }
        Command::Manager(args) => {
            init_tracing("info,async_nats=warn");
            serve::manager(args, shutdown_on_signals()).await
        }
        Command::Worker(args) => {
            init_tracing("info,async_nats=warn");
            serve::worker(args, shutdown_on_signals()).await
        }
        Command::Submit(args) => {
            init_tracing("warn");
            cmd::submit::submit(args).await
        }
        Command::Stop(args) => {
            init_tracing("warn");
            cmd::stop::stop(args).await
        }
        Command::Status(args) => {
            init_tracing("warn");
            cmd::status::status(args).await
        }
        Command::Nodes(args) => {
            init_tracing("warn");
            cmd::nodes::nodes(args).await
        }
        Command::Secret(args) => {
            init_tracing("warn");
            cmd::secret::secret(args).await
        }
        Command::Managers(args) => {
            init_tracing("warn");
            cmd::managers::managers(args).await
        }
        Command::Service(args) => {
            init_tracing("warn");
            cmd::service::service(args).await
        }
        Command::Token(args) => {
            init_tracing("warn");
            cmd::token::token(args).await
        }
        Command::Events(args) => {
            init_tracing("warn");
            cmd::events::events(args).await
        }
        Command::Logs(args) => {
            init_tracing("warn");
            logs::logs(args, shutdown_on_signals()).await
        }
        Command::Bench(args) => {
            init_tracing("warn");
            bench::run(args).await
        }
        Command::AuthConfig(args) => auth::auth_config(args),
        Command::AuthPasswords(args) => auth::auth_passwords(args),
        Command::Schema(args) => schema::run(args),
        Command::Completions(args) => schema::completions(args, Cli::command()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built, not parsed: the CUBE_NATS_* variables of whoever runs the tests stay out.
    fn nats_args(password: Option<&str>, file: &std::path::Path) -> NatsArgs {
        let mut args = NatsArgs::url(
            "nats://127.0.0.1:4222".into(),
            Duration::from_secs(1),
            &cube_bus::Credentials::default(),
        );
        args.nats_user = Some("client".into());
        args.nats_password = password.map(String::from);
        args.nats_password_file = Some(file.to_path_buf());
        args
    }

    #[test]
    fn the_password_file_gives_its_first_line_and_the_password_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.password");
        std::fs::write(&file, "s3cret\r\nignored\n").unwrap();

        let credentials = nats_args(None, &file).credentials().unwrap();
        assert_eq!(credentials.user.as_deref(), Some("client"));
        assert_eq!(credentials.password.as_deref(), Some("s3cret"));
        let credentials = nats_args(Some("given"), &file).credentials().unwrap();
        assert_eq!(credentials.password.as_deref(), Some("given"));

        std::fs::write(&file, "\n").unwrap();
        let err = nats_args(None, &file).credentials().unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = nats_args(None, &dir.path().join("missing"))
            .credentials()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("reading --nats-password-file"),
            "{err:#}"
        );
    }

    #[test]
    fn the_password_file_is_an_option_of_every_command() {
        let cli = Cli::try_parse_from(["cube", "nodes", "--nats-password-file", "/p"]).unwrap();
        let Command::Nodes(nodes) = cli.command else {
            panic!("not nodes")
        };
        assert_eq!(nodes.nats.nats_password_file, Some(PathBuf::from("/p")));
    }
}
