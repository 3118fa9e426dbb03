//! What a long command is doing and how long is left: a bar with an
//! estimate on a terminal, plain lines otherwise (CI logs, pipes).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    total: u64,
    done: u64,
    started: Instant,
}

impl Progress {
    /// `total` steps of about equal length.
    pub fn new(total: u64) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len}  {msg}  (about {eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            bar,
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// The next step begins.
    pub fn step(&mut self, what: &str) {
        if self.bar.is_hidden() {
            let left = match self.done {
                0 => String::new(),
                d => {
                    let each = self.started.elapsed() / d as u32;
                    let left = each * (self.total.saturating_sub(d)) as u32;
                    format!(", about {} left", minutes(left))
                }
            };
            println!("[{}/{}] {what}{left}", self.done + 1, self.total);
        } else {
            self.bar.set_message(what.to_string());
        }
    }

    /// The step ended.
    pub fn done(&mut self) {
        self.done += 1;
        self.bar.set_position(self.done);
    }

    /// A line of output that stays above the bar.
    pub fn println(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            println!("{}", line.as_ref());
        } else {
            self.bar.println(line.as_ref());
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    if s < 90 {
        format!("{s} s")
    } else {
        format!("{} min", s.div_ceil(60))
    }
}
