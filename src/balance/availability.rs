//! Whether a backend may get new requests, and why not: health checks, an operator's
//! drain, outlier ejection, and the history of those changes.
//!
//! Apart from identity and load, as pingora-load-balancing keeps a backend's health apart
//! from the backend: each flag has one writer (the health checker, the admin routes, the
//! outlier detector) and many readers, so they are atomics; the short history of transitions
//! shown by `/backends/{id}` and in decision explanations has its own small lock, taken only
//! on a transition or when someone reads it.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Mutex,
    },
    time::{Instant, SystemTime},
};

use serde::Serialize;

use super::atomic_instant::AtomicInstant;

/// Health transitions kept per backend.
pub const TRANSITIONS_KEPT: usize = 32;

/// A change of state and why it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    /// In service after the change, or not.
    pub up: bool,
    /// What decided it: `health_check`, `outlier_detection`, `admin`, `reload` or `dns`.
    pub source: &'static str,
    /// A human-readable cause.
    pub cause: String,
}

/// A backend's availability: up (health checks), drained (an operator), ejected (outlier
/// detection), and the recent transitions. It starts up, as in the original project.
#[derive(Debug)]
pub struct Availability {
    up: AtomicBool,
    drained: AtomicBool,
    ejected: AtomicBool,
    /// Found by discovery and not checked yet: out of service until one check passes.
    pending: AtomicBool,
    ejections: AtomicU32,
    /// When it last went from out of service to in service (slow start's clock); unset for
    /// a backend in service since the start, or once its slow start has ended.
    returned: AtomicInstant,
    transitions: Mutex<VecDeque<Transition>>,
}

impl Default for Availability {
    fn default() -> Self {
        Availability {
            up: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            ejected: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            ejections: AtomicU32::new(0),
            returned: AtomicInstant::default(),
            transitions: Mutex::new(VecDeque::with_capacity(TRANSITIONS_KEPT)),
        }
    }
}

impl Availability {
    /// Whether the balancer may send it new requests: healthy, not ejected, not drained.
    pub fn in_service(&self) -> bool {
        self.is_up() && !self.is_ejected() && !self.is_drained()
    }

    /// Whether the health checker currently counts it as up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records a health transition.
    pub fn set_up(&self, up: bool, cause: String) {
        let was = self.in_service();
        self.up.store(up, Ordering::Relaxed);
        if up {
            self.pending.store(false, Ordering::Relaxed);
        }
        self.note_return(was);
        self.note(
            up && !self.is_ejected() && !self.is_drained(),
            "health_check",
            cause,
        );
    }

    /// Holds a backend that discovery just found out of service until a health check
    /// passes (Envoy's new hosts wait for their first check the same way).
    pub fn await_first_check(&self, cause: String) {
        self.up.store(false, Ordering::Relaxed);
        self.pending.store(true, Ordering::Relaxed);
        self.note(false, "dns", cause);
    }

    /// Whether it waits for its first passing health check ([`Self::await_first_check`]).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Whether an operator drained it.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains (no new requests; in-flight ones finish) or enables it.
    pub fn set_drained(&self, drained: bool) {
        let was = self.in_service();
        if self.drained.swap(drained, Ordering::Relaxed) != drained {
            self.note_return(was);
            let cause = if drained {
                "drained by an operator (POST /backends/{id}/drain)"
            } else {
                "enabled by an operator (POST /backends/{id}/enable)"
            };
            self.note(self.in_service(), "admin", cause.to_owned());
        }
    }

    /// Whether passive outlier detection has it ejected.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Ejects it; returns how many times it has been ejected, this one included.
    pub fn eject(&self, cause: String) -> u32 {
        self.ejected.store(true, Ordering::Relaxed);
        self.note(false, "outlier_detection", cause);
        self.ejections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ends an ejection.
    pub fn uneject(&self, cause: String) {
        let was = self.in_service();
        self.ejected.store(false, Ordering::Relaxed);
        self.note_return(was);
        self.note(self.in_service(), "outlier_detection", cause);
    }

    /// Records a configuration reload in the timeline.
    pub fn note_reload(&self, cause: String) {
        self.note(self.in_service(), "reload", cause);
    }

    /// Takes over an older record of the same backend (a config reload): health, drain and
    /// history. An ejection is not carried over: its timer belongs to the old data plane.
    pub fn inherit(&self, old: &Availability) {
        self.up.store(old.is_up(), Ordering::Relaxed);
        self.drained.store(old.is_drained(), Ordering::Relaxed);
        self.returned.copy_from(&old.returned);
        self.pending.store(old.is_pending(), Ordering::Relaxed);
        *self.transitions.lock().unwrap_or_else(|e| e.into_inner()) =
            old.transitions().into_iter().collect();
    }

    /// Starts the slow-start clock if a change brought it back into service.
    fn note_return(&self, was_in_service: bool) {
        if !was_in_service && self.in_service() {
            self.returned.store(Instant::now());
        }
    }

    /// Starts the slow-start clock now: a backend added while ALB runs (a reload, discovery).
    pub fn joined(&self) {
        self.returned.store(Instant::now());
    }

    /// When it last came back into service, while its slow start may still run.
    pub fn returned_at(&self) -> Option<Instant> {
        self.returned.load()
    }

    /// Whether a slow-start clock runs (one atomic load).
    pub fn is_returning(&self) -> bool {
        self.returned.is_set()
    }

    /// Ends the slow-start clock that started at `at` (its window has passed), so picks
    /// stop reading the time; a return noted since then keeps its clock.
    pub fn settled(&self, at: Instant) {
        self.returned.clear_if(at);
    }

    fn note(&self, up: bool, source: &'static str, cause: String) {
        let at_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut log = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == TRANSITIONS_KEPT {
            log.pop_front();
        }
        log.push_back(Transition {
            at_unix,
            up,
            source,
            cause,
        });
    }

    /// The last transition, if any.
    pub fn last_transition(&self) -> Option<Transition> {
        self.transitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .cloned()
    }

    /// The recent transitions, oldest first.
    pub fn transitions(&self) -> Vec<Transition> {
        self.transitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_service_needs_up_not_drained_not_ejected() {
        let a = Availability::default();
        assert!(a.in_service());
        a.set_drained(true);
        assert!(!a.in_service());
        a.set_drained(false);
        assert_eq!(a.eject("5 failures in a row".into()), 1);
        assert!(!a.in_service());
        a.uneject("ejection ended".into());
        a.set_up(false, "2 checks failed".into());
        assert!(!a.in_service());
        a.set_up(true, "2 checks passed".into());
        assert!(a.in_service());
        assert_eq!(a.eject("again".into()), 2, "ejections are counted");
    }

    #[test]
    fn transitions_say_what_and_why_and_are_bounded() {
        let a = Availability::default();
        a.set_drained(true);
        a.set_drained(true); // no change, no entry
        let last = a.last_transition().unwrap();
        assert_eq!((last.source, last.up), ("admin", false));
        assert_eq!(a.transitions().len(), 1);
        for i in 0..TRANSITIONS_KEPT + 5 {
            a.note_reload(format!("reload {i}"));
        }
        let kept = a.transitions();
        assert_eq!(kept.len(), TRANSITIONS_KEPT);
        assert_eq!(
            kept.last().unwrap().cause,
            format!("reload {}", TRANSITIONS_KEPT + 4)
        );
        // Drained all along: a reload does not claim it is in service.
        assert!(!kept.last().unwrap().up);
    }

    #[test]
    fn a_reload_keeps_health_drain_and_history_but_not_an_ejection() {
        let old = Availability::default();
        old.set_up(false, "down".into());
        old.set_drained(true);
        old.eject("failing".into());
        let new = Availability::default();
        new.inherit(&old);
        assert!(!new.is_up() && new.is_drained() && !new.is_ejected());
        assert_eq!(new.transitions().len(), old.transitions().len());
    }

    #[test]
    fn a_discovered_backend_waits_for_its_first_check() {
        let a = Availability::default();
        a.await_first_check("found in DNS".into());
        assert!(a.is_pending() && !a.in_service());
        let kept = Availability::default();
        kept.inherit(&a);
        assert!(
            kept.is_pending() && !kept.in_service(),
            "a rebuild keeps it waiting"
        );
        a.set_up(true, "first health check passed".into());
        assert!(!a.is_pending() && a.in_service());
    }
}
