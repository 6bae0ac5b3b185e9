//! The dashboard's memory: one sample of every backend per second, kept in ALB.
//!
//! The dashboard draws its charts from samples. Taken by the page alone, they would start
//! when the page opens, so a page opened during an incident would show nothing of what led
//! up to it. A task samples every backend once a second into a fixed ring of
//! [`HISTORY_SAMPLES`] (five minutes), served by `GET /history`; the page starts from it and
//! then adds its own samples. The ring is written once a second and read by the admin
//! routes: nothing on the request path. The task ends with the last clone of the router.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

/// Samples kept: five minutes at one per second.
pub const HISTORY_SAMPLES: usize = 300;

/// Time between samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// One backend in one sample: what the dashboard's charts plot.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Requests sent so far (the charts plot differences between samples).
    pub requests: u64,
    /// Requests in flight.
    pub in_flight: usize,
    /// Peak-EWMA latency estimate, milliseconds.
    pub ewma_ms: f64,
    /// The strategy's load measure.
    pub score: f64,
    /// In service.
    pub up: bool,
}

/// Every backend at one moment, in the shape the dashboard keeps its own samples.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    /// Backend (`host:port`) → its numbers.
    pub b: BTreeMap<String, Point>,
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Adds a sample, dropping the oldest past [`HISTORY_SAMPLES`].
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == HISTORY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Samples with `take` every [`SAMPLE_INTERVAL`] while the history is in use (the task
    /// holds it weakly, so it ends once the admin router is gone). Needs a Tokio runtime;
    /// without one, nothing is sampled and the page keeps its own samples only.
    pub fn spawn_sampler<F>(history: &Arc<History>, take: F)
    where
        F: Fn(Instant) -> BTreeMap<String, Point> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let history: Weak<History> = Arc::downgrade(history);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(history) = history.upgrade() else {
                    return;
                };
                let t = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                history.push(Sample {
                    t,
                    b: take(Instant::now()),
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn samples_every_second_into_a_bounded_ring_and_stops_with_its_owner() {
        let history = Arc::new(History::default());
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = calls.clone();
        History::spawn_sampler(&history, move |_| {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let point = Point {
                requests: n,
                in_flight: 0,
                ewma_ms: 1.0,
                score: 0.0,
                up: true,
            };
            BTreeMap::from([("a:1".to_owned(), point)])
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(history.samples().len(), 3, "at 0 s, 1 s and 2 s");
        tokio::time::sleep(SAMPLE_INTERVAL * HISTORY_SAMPLES as u32).await;
        let samples = history.samples();
        assert_eq!(samples.len(), HISTORY_SAMPLES);
        assert_eq!(
            samples.last().unwrap().b["a:1"].requests,
            calls.load(std::sync::atomic::Ordering::Relaxed) - 1,
            "the newest sample is last"
        );
        drop(history);
        let before = calls.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(SAMPLE_INTERVAL * 3).await;
        assert!(
            calls.load(std::sync::atomic::Ordering::Relaxed) <= before + 1,
            "the sampler ends once the history is dropped"
        );
    }
}
