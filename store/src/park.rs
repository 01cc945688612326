//! A blocking receive that parks the thread at once.
//!
//! `Receiver::recv` of crossbeam's bounded channels spins, then yields the thread a few times
//! (`sched_yield`) before it parks it: cheap while messages stream in, but at a modest rate
//! every message pays those system calls (four per message on the syncer; BENCHMARKS.md,
//! issue 15). A `Select` over the one receiver tries once, then parks.

use crossbeam_channel::{Receiver, Select};

/// Receives from `rx`, parking the thread until a message comes; `None` once every sender
/// is gone.
pub(crate) fn recv<T>(rx: &Receiver<T>) -> Option<T> {
    let mut select = Select::new();
    select.recv(rx);
    select.select().recv(rx).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn receives_what_was_sent_and_sees_the_senders_go() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        tx.send(7).unwrap();
        assert_eq!(recv(&rx), Some(7));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(8).unwrap();
        });
        assert_eq!(recv(&rx), Some(8));
        sender.join().unwrap();
        assert_eq!(recv(&rx), None);
    }
}
