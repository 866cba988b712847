//! `cube schema` and `cube completions`: the contract and the shell, as documents.

use anyhow::Result;
use clap::Args;
use cube_shared::schema::{self, NAMES};

#[derive(Args, Debug)]
pub struct SchemaArgs {
    /// Which schema: task-event, task, state-report, rejection, journal-entry, node,
    /// task-query, drain-request, manager-info, task-list-query, task-list, or all (one JSON
    /// object keyed by those names).
    #[arg(default_value = "all", value_parser = schema_name)]
    pub name: String,
}

fn schema_name(s: &str) -> Result<String, String> {
    if s == "all" || NAMES.iter().any(|(n, _)| *n == s) {
        return Ok(s.to_string());
    }
    let known: Vec<String> = NAMES
        .iter()
        .map(|(n, what)| format!("  {n}: {what}"))
        .collect();
    Err(format!(
        "no schema named `{s}`; `all`, or one of:\n{}",
        known.join("\n")
    ))
}

pub fn run(args: SchemaArgs) -> Result<()> {
    let value = match args.name.as_str() {
        "all" => schema::all(),
        name => schema::schema(name).expect("checked by the parser"),
    };
    print!("{}", schema::to_text(&value));
    Ok(())
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// Prints the completion script of `command` for a shell.
pub fn completions(args: CompletionsArgs, mut command: clap::Command) -> Result<()> {
    clap_complete::generate(args.shell, &mut command, "cube", &mut std::io::stdout());
    Ok(())
}
