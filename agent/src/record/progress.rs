//! The live status line: shown on a terminal, absent otherwise.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn start() -> Self {
        // stderr draw targets hide themselves when stderr is not a terminal.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} recording {elapsed_precise}  {msg}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    pub fn update(&self, samples: u64, lost: u64) {
        self.bar
            .set_message(format!("{samples} samples, {lost} lost"));
    }

    pub fn phase(&self, what: &str) {
        self.bar
            .set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        self.bar.set_message(what.to_owned());
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
