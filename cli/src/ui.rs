//! Human and machine output. Progress bars only on a TTY in text mode; plain lines otherwise, and nothing but
//! the final JSON document on stdout under `--output json` (progress goes to stderr).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
    /// Text with each kind's extra columns (`testbed get` only).
    Wide,
    /// Objects as YAML (`testbed get` only).
    Yaml,
}

#[derive(Debug, Clone)]
pub struct Ui {
    pub format: OutputFormat,
    /// Draw bars (stderr is a TTY and the format is text).
    fancy: bool,
    quiet: bool,
    multi: MultiProgress,
}

impl Ui {
    pub fn new(format: OutputFormat, quiet: bool) -> Self {
        let fancy = format == OutputFormat::Text && !quiet && std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if fancy {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Ui { format, fancy, quiet, multi }
    }

    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// A progress line for one unit of work (a node, an image build). On a TTY a spinner with the stage;
    /// otherwise each stage change is one plain `[name] stage` line on stderr.
    pub fn task(&self, name: &str) -> Task {
        let bar = self.multi.add(ProgressBar::new_spinner());
        if self.fancy {
            bar.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {wide_msg} {elapsed:>4}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Task { bar, name: name.to_string(), plain: !self.fancy && !self.quiet }
    }

    /// A byte-counting bar (downloads, image writes).
    pub fn bytes(&self, name: &str, total: Option<u64>) -> Task {
        let bar = self.multi.add(match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        });
        if self.fancy {
            bar.set_style(
                ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(name.to_string());
        }
        Task { bar, name: name.to_string(), plain: !self.fancy && !self.quiet }
    }

    /// An informational line on stderr (never on stdout, which carries data).
    pub fn info(&self, msg: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        let msg = msg.as_ref();
        if self.fancy {
            self.multi.suspend(|| eprintln!("{msg}"));
        } else {
            eprintln!("{msg}");
        }
    }
}

pub struct Task {
    bar: ProgressBar,
    name: String,
    plain: bool,
}

impl Task {
    pub fn stage(&self, stage: impl AsRef<str>) {
        let stage = stage.as_ref();
        if self.plain {
            eprintln!("[{}] {stage}", self.name);
        }
        self.bar.set_message(stage.to_string());
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn set_position(&self, n: u64) {
        self.bar.set_position(n);
    }

    pub fn finish(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        if self.plain {
            eprintln!("[{}] {msg}", self.name);
        }
        self.bar.finish_with_message(msg.to_string());
    }

    pub fn fail(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        if self.plain {
            eprintln!("[{}] FAILED: {msg}", self.name);
        }
        self.bar.abandon_with_message(format!("FAILED: {msg}"));
    }
}
