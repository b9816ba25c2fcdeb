//! A minimal check recorder: TAP-like lines on stdout and in `$HOMI_OUT/results.txt`.

use std::fs::OpenOptions;
use std::io::Write;
use std::process::ExitCode;

/// Counts and reports checks.
pub struct Harness {
    passed: usize,
    failed: usize,
    skipped: usize,
    results: Option<std::fs::File>,
}

impl Harness {
    pub fn new() -> Self {
        let results = std::env::var_os("HOMI_OUT").and_then(|dir| {
            OpenOptions::new().create(true).append(true).open(std::path::Path::new(&dir).join("results.txt")).ok()
        });
        Self { passed: 0, failed: 0, skipped: 0, results }
    }

    /// Records one check's outcome.
    pub fn record(&mut self, name: &str, outcome: anyhow::Result<()>) {
        let line = match outcome {
            Ok(()) => {
                self.passed += 1;
                format!("ok - {name}")
            }
            Err(e) => {
                self.failed += 1;
                format!("not ok - {name}: {e:#}")
            }
        };
        println!("{line}");
        if let Some(f) = self.results.as_mut() {
            // A lost line shows up as a count mismatch on the host, so ignore errors here.
            let _ = writeln!(f, "{line}");
        }
    }

    /// Reports the check `name` as skipped: it cannot run on this VM (`why`). Never
    /// counted as passed.
    pub fn skip(&mut self, name: &str, why: &str) {
        let line = format!("skip - {name}: {why}");
        println!("{line}");
        self.skipped += 1;
        if let Some(f) = self.results.as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Runs `f` as the check `name`.
    pub fn check(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> bool {
        let outcome = f();
        let ok = outcome.is_ok();
        self.record(name, outcome);
        ok
    }

    /// Prints the summary line and turns the counts into an exit code.
    pub fn finish(self) -> ExitCode {
        println!("vmtest: {} passed, {} failed, {} skipped", self.passed, self.failed, self.skipped);
        if self.failed == 0 && self.passed > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
