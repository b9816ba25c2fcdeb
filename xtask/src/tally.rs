//! Counting checks across host tests, builds and in-VM suites.

/// Pass/fail counts, with the failures' names kept for the summary.
#[derive(Default)]
pub struct Tally {
    passed: usize,
    failed: Vec<String>,
    /// Checks that could not run here, with why: never counted as passed.
    skipped: Vec<String>,
}

impl Tally {
    /// Records one check.
    pub fn record(&mut self, name: &str, ok: bool, detail: &str) {
        if ok {
            self.passed += 1;
            println!("ok - {name}");
        } else {
            println!("not ok - {name}{}{detail}", if detail.is_empty() { "" } else { ": " });
            self.failed.push(name.to_owned());
        }
    }

    /// Records the outcome of `r` as the check `name`.
    pub fn result<T>(&mut self, name: &str, r: &anyhow::Result<T>) -> bool {
        match r {
            Ok(_) => self.record(name, true, ""),
            Err(e) => self.record(name, false, &format!("{e:#}")),
        }
        r.is_ok()
    }

    /// Adds counts from a runner that reported its own totals (cargo test).
    pub fn add_counts(&mut self, what: &str, passed: usize, failed: usize) {
        self.passed += passed;
        for i in 0..failed {
            self.failed.push(format!("{what} #{i}"));
        }
    }

    /// Adds the `ok - ` / `not ok - ` lines an in-VM suite wrote; returns how many.
    pub fn add_tap(&mut self, text: &str) -> usize {
        let mut n = 0;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("ok - ") {
                self.record(name, true, "");
            } else if let Some(rest) = line.strip_prefix("not ok - ") {
                let (name, why) = rest.split_once(": ").unwrap_or((rest, ""));
                self.record(name, false, why);
            } else if let Some(rest) = line.strip_prefix("skip - ") {
                println!("skip - {rest}");
                self.skipped.push(rest.to_owned());
            } else {
                continue;
            }
            n += 1;
        }
        n
    }

    /// Prints the closing line and returns the exit code.
    pub fn finish(&self) -> i32 {
        if !self.failed.is_empty() {
            println!("failed:");
            for f in &self.failed {
                println!("  {f}");
            }
        }
        if !self.skipped.is_empty() {
            println!("skipped (could not run here):");
            for s in &self.skipped {
                println!("  {s}");
            }
        }
        println!("{} passed, {} failed, {} skipped", self.passed, self.failed.len(), self.skipped.len());
        i32::from(!self.failed.is_empty() || self.passed == 0)
    }
}
