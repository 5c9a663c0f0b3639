//! Progress bars on a terminal, nothing otherwise (and nothing with `--quiet`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How the CLI talks to the person at the terminal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ui {
    quiet: bool,
}

impl Ui {
    pub(crate) fn new(quiet: bool) -> Self {
        Ui { quiet }
    }

    /// A bar over `total` frames; hidden when quiet or when stderr is not a terminal.
    pub(crate) fn frames_bar(&self, total: usize, what: &str) -> ProgressBar {
        let target = if self.quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} frames {per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    }

    /// A bar over `total` items counted in `unit`s; hidden when quiet or when stderr is not a terminal.
    pub(crate) fn items_bar(&self, total: usize, what: &str, unit: &str) -> ProgressBar {
        let bar = self.frames_bar(total, what);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{msg:>12}} [{{bar:40}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}"
            ))
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    }

    pub(crate) fn quiet(&self) -> bool {
        self.quiet
    }
}
