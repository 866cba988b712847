//! Fencing on the worker's side: the newest manager epoch seen. Work carries the epoch of the
//! manager that sent it (the revision at which it won the leadership lease); once a worker has
//! seen work from a newer leader, it refuses work from an older one, a deposed manager's that
//! arrived late. (The Task DB check before a start is the other half: a deposed manager's Task
//! DB writes are refused by JetStream, so its placements are not current there either.)

use std::sync::atomic::{AtomicU64, Ordering};

/// The newest epoch seen on work, 0 before any.
#[derive(Debug, Default)]
pub(crate) struct Epochs {
    newest: AtomicU64,
}

impl Epochs {
    /// Whether work sent at `epoch` may be acted on: `Err(newest)` if a newer leader's work
    /// has been seen. Work without an epoch (from a manager before epochs) is admitted.
    pub(crate) fn admit(&self, epoch: Option<u64>) -> Result<(), u64> {
        let Some(epoch) = epoch else { return Ok(()) };
        let before = self.newest.fetch_max(epoch, Ordering::SeqCst);
        if epoch < before {
            Err(before)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_from_an_older_epoch_is_refused_once_a_newer_one_was_seen() {
        let e = Epochs::default();
        assert_eq!(e.admit(Some(5)), Ok(()));
        assert_eq!(e.admit(Some(5)), Ok(()), "the same leader again");
        assert_eq!(e.admit(None), Ok(()), "no epoch: an older manager");
        assert_eq!(e.admit(Some(9)), Ok(()), "a newer leader");
        assert_eq!(e.admit(Some(5)), Err(9), "the deposed one, late");
        assert_eq!(e.admit(Some(9)), Ok(()));
        assert_eq!(e.admit(Some(8)), Err(9));
    }
}
