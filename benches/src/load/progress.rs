//! The progress bar on stderr: deliveries against the deliveries expected, and how many
//! messages the broker took. Drawn only when stderr is a terminal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use super::Counters;

/// How often the bar is redrawn from the counters.
const REFRESH: Duration = Duration::from_millis(100);

/// A bar redrawn from the run's counters until [`Progress::finish`].
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl Progress {
    /// Starts a bar of `expected` deliveries; hidden when `visible` is false.
    #[must_use]
    pub fn start(expected: u64, counters: Arc<Counters>, visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(expected), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} delivered ({per_sec}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut interval = tokio::time::interval(REFRESH);
                loop {
                    interval.tick().await;
                    bar.set_position(counters.delivered.load(Ordering::Relaxed));
                    bar.set_message(format!(
                        "{} published",
                        counters.published.load(Ordering::Relaxed)
                    ));
                }
            }
        });
        Self { bar, ticker }
    }

    /// Stops redrawing and clears the bar.
    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
