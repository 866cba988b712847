//! Plain-text tables and ages for the client commands.

/// Prints rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        line(out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub use cube_shared::units::age;

pub fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

/// How a listing prints: a table for people, or one JSON document for programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// `-o table|json`, on every listing.
#[derive(clap::Args, Clone, Debug)]
pub struct OutputArgs {
    /// table (for people) or json (one JSON document, for programs).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// The same as `-o json` (kept for scripts written before `-o`).
    #[arg(long, hide = true, global = true)]
    pub json: bool,
}

impl OutputArgs {
    pub fn json(&self) -> bool {
        self.json || self.output == Format::Json
    }
}

/// Prints one JSON document on its own line.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    line(serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a line on stdout. If the reader has gone (`cube events | head`), stops quietly, as
/// Unix tools do, instead of panicking.
pub fn line(text: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}
