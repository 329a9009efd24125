//! PASS / FAIL lines and their count: every check prints one line, and a
//! command fails when any line was a FAIL.

/// The checks of one subject (an image, a package, the wdk-build flow).
pub struct Report {
    subject: String,
    passed: usize,
    failed: usize,
    failures: Vec<String>,
}

impl Report {
    /// A report whose lines start with `subject`.
    pub fn new(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            passed: 0,
            failed: 0,
            failures: Vec::new(),
        }
    }

    /// Prints `PASS subject: what: detail` or `FAIL ...` and counts it.
    pub fn check(&mut self, ok: bool, what: &str, detail: impl AsRef<str>) -> bool {
        let word = if ok { "PASS" } else { "FAIL" };
        println!("{word} {}: {what}: {}", self.subject, detail.as_ref());
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failures.push(what.to_owned());
        }
        ok
    }

    /// How many checks failed.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// What the failed checks were (their `what`).
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Prints the summary line and returns whether every check passed.
    pub fn finish(&self) -> bool {
        let total = self.passed + self.failed;
        if self.failed == 0 {
            println!("{}: OK (all {total} checks passed)", self.subject);
        } else {
            println!(
                "{}: FAILED ({} of {total} checks failed)",
                self.subject, self.failed
            );
        }
        self.failed == 0
    }
}

/// `a, b, c`, sorted, or `(none)`.
pub fn list<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut v: Vec<String> = items.into_iter().map(|s| s.as_ref().to_owned()).collect();
    v.sort();
    if v.is_empty() {
        "(none)".to_owned()
    } else {
        v.join(", ")
    }
}
