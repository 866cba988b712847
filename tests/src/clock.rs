//! A wall clock that a test can step, for one child process: Debian's libfaketime, preloaded,
//! reads the offset from a file on every call (`FAKETIME_NO_CACHE`), so rewriting the file
//! steps the process's `CLOCK_REALTIME` at once, as an NTP step or a VM resumed from suspend
//! would. The monotonic clock is left alone (`FAKETIME_DONT_FAKE_MONOTONIC`): a real step
//! never moves it. `scripts/setup` installs the `faketime` package.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The preloaded library: `/usr/lib/<triplet>/faketime/libfaketime.so.1`, or the file that
/// `CUBE_LIBFAKETIME` names.
pub fn libfaketime() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CUBE_LIBFAKETIME") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("CUBE_LIBFAKETIME={} is not a file", path.display());
    }
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.is_file());
    found.context(
        "libfaketime.so.1 is not installed (looked in /usr/lib/*/faketime/): run scripts/setup, \
         or `apt-get install faketime`",
    )
}

/// One process's wall clock, offset from the real one by a whole number of seconds.
pub struct FakeClock {
    library: PathBuf,
    /// The offset file libfaketime reads (`FAKETIME_TIMESTAMP_FILE`).
    file: PathBuf,
    offset_secs: i64,
}

impl FakeClock {
    /// A clock at offset 0, its offset file in `dir`.
    pub fn new(dir: &Path) -> Result<FakeClock> {
        let clock = FakeClock {
            library: libfaketime()?,
            file: dir.join("faketime"),
            offset_secs: 0,
        };
        clock.write()?;
        Ok(clock)
    }

    /// The environment that puts a child process on this clock.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", self.library.to_string_lossy().into_owned()),
            (
                "FAKETIME_TIMESTAMP_FILE",
                self.file.to_string_lossy().into_owned(),
            ),
            ("FAKETIME_NO_CACHE", "1".to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ]
    }

    /// Steps the wall clock by `secs` (forward if positive, back if negative), at once.
    pub fn step(&mut self, secs: i64) -> Result<()> {
        self.offset_secs += secs;
        self.write()
    }

    /// Writes the offset in libfaketime's relative form (`+40s`, `-5s`), through a rename so
    /// that a reader never sees a half-written file.
    fn write(&self) -> Result<()> {
        let text = format!("{:+}s\n", self.offset_secs);
        let tmp = self.file.with_extension("new");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.file)
            .with_context(|| format!("replacing {}", self.file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `date +%s` under the clock follows its steps, forward and back.
    #[test]
    fn a_child_on_the_clock_sees_its_steps() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut clock = FakeClock::new(dir.path())?;
        let now = |clock: &FakeClock| -> Result<i64> {
            let out = std::process::Command::new("date")
                .arg("+%s")
                .envs(clock.env())
                .output()?;
            anyhow::ensure!(out.status.success(), "date failed: {out:?}");
            Ok(String::from_utf8(out.stdout)?.trim().parse()?)
        };
        let real = || -> Result<i64> {
            Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs() as i64)
        };
        let skew = now(&clock)? - real()?;
        anyhow::ensure!(skew.abs() <= 1, "at +0s the clock is off by {skew} s");
        clock.step(3600)?;
        let skew = now(&clock)? - real()?;
        anyhow::ensure!((3599..=3601).contains(&skew), "after +3600s: {skew} s");
        clock.step(-7200)?;
        let skew = now(&clock)? - real()?;
        anyhow::ensure!((-3601..=-3599).contains(&skew), "after -7200s: {skew} s");
        Ok(())
    }
}
