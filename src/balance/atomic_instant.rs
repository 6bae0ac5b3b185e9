//! An `Instant` that many threads read and one writes, in one `AtomicU64`.
//!
//! Per-backend timestamps (when a probe report arrived, when a backend came back into
//! service) are read on every pick, so they cannot sit behind a lock. They are stored as
//! nanoseconds after a process-wide epoch, plus one, so that 0 means "never".

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

/// The time base: the first use in the process. Creating an [`AtomicInstant`] fixes it, so
/// every instant stored in one is at or after the epoch.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds after the epoch, plus one, so that 0 stays "never" even for the epoch itself.
fn encode(at: Instant) -> u64 {
    let nanos =
        u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX - 1);
    nanos + 1
}

/// An optional `Instant` in an atomic.
#[derive(Debug)]
pub struct AtomicInstant(AtomicU64);

impl Default for AtomicInstant {
    fn default() -> Self {
        epoch();
        AtomicInstant(AtomicU64::new(0))
    }
}

impl AtomicInstant {
    /// Stores `at` (an instant before the epoch is stored as the epoch).
    pub fn store(&self, at: Instant) {
        self.0.store(encode(at), Ordering::Release);
    }

    /// Forgets the instant.
    pub fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// Forgets the instant if it is still `at` (a newer one stored meanwhile stays).
    pub fn clear_if(&self, at: Instant) {
        let _ = self
            .0
            .compare_exchange(encode(at), 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Whether an instant is stored (one load, no clock read).
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// The stored instant, if any.
    pub fn load(&self) -> Option<Instant> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            n => Some(epoch() + Duration::from_nanos(n - 1)),
        }
    }

    /// Copies another's instant (a reload handing state to the next data plane).
    pub fn copy_from(&self, other: &AtomicInstant) {
        self.0
            .store(other.0.load(Ordering::Acquire), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_loads_and_clears() {
        let a = AtomicInstant::default();
        assert!(!a.is_set());
        assert_eq!(a.load(), None);
        let t = Instant::now() + Duration::from_millis(1500);
        a.store(t);
        assert!(a.is_set());
        // Nanosecond precision: the round trip is exact.
        assert_eq!(a.load(), Some(t));
        let b = AtomicInstant::default();
        b.copy_from(&a);
        assert_eq!(b.load(), Some(t));
        a.clear_if(t + Duration::from_nanos(1));
        assert_eq!(a.load(), Some(t), "a different instant is not cleared");
        a.clear_if(t);
        assert_eq!(a.load(), None);
        b.clear();
        assert!(!b.is_set());
    }
}
