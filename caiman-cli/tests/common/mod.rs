//! Running the `caiman` binary under test and reading what it printed.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs `caiman ARGS…` with warnings-only logging.
pub(crate) fn caiman(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caiman")).args(args).env("RUST_LOG", "warn").output().expect("run caiman")
}

/// What the run printed on stdout.
pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What the run printed on stderr.
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The run failed without panicking, every non-empty stderr line is an `error:` line, and the
/// errors mention `needle` (a command over several files reports each, then a total).
pub(crate) fn assert_error_lines(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected failure");
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| l.starts_with("error:")), "only error lines expected:\n{err}");
    assert!(err.contains(needle), "expected an error mentioning {needle:?}, got:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// [`assert_error_lines`] with exactly one line.
pub(crate) fn assert_one_line_error(o: &Output, needle: &str) {
    assert_error_lines(o, needle);
    let err = stderr(o);
    assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "one line expected, got:\n{err}");
}
