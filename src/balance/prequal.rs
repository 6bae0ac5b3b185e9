//! Prequal: the backends' own requests in flight and latency, learned from probes, chosen by
//! the hot-cold rule.
//!
//! From Wydrowski et al., "Load is not what you should balance: Introducing Prequal"
//! (NSDI 2024), as run at YouTube. A balancer replica only sees its own requests in flight;
//! with several replicas, or clients that bypass the balancer, a backend busy with other
//! traffic looks idle. So each backend reports its own requests in flight (RIF) and recent
//! latency (the `load_report` module), and the balancer asks for them with probes sent off the
//! request path (the `probe` module: about `probes_per_request` per request, plus one per
//! backend every `idle_probe_interval`), keeping the last report per backend
//! ([`ProbeSlot`](super::endpoint::ProbeSlot)).
//!
//! A pick reads the reports of up to [`POOL`] backends (all of them when there are fewer,
//! else a window from a random offset). A report is used while younger than `max_age` and
//! used fewer than `max_uses` times (the paper's ageing and bounded reuse); a backend without
//! a usable report stands in with ALB's own numbers for it (its requests in flight from this
//! replica and its peak-EWMA latency), so a backend that does not answer probes still gets
//! traffic, the way `adaptive` would see it. Then the hot-cold rule:
//!
//! - the threshold is the `hot_quantile` quantile of the pool's RIFs (default 0.6: the paper
//!   uses 0.84; prequal-rs reports herding at 0.84 in simulation and uses 0.6);
//! - a backend is *cold* when its RIF is at most the threshold, *hot* otherwise;
//! - while this replica's last answer from a backend was a failure, its latency counts as
//!   at least `adaptive.failure_penalty`, so a backend answering errors fast does not look
//!   fast (Linkerd biases against fast failures too);
//! - among cold backends the lowest latency wins; latencies within `adaptive.tolerance` of the
//!   lowest count as equal (as in `adaptive`), and then the lower RIF, then the first in the
//!   window (random) wins; if all were hot, the lowest RIF would win;
//! - the chosen report's RIF goes up by one, so the next picks see the request just sent
//!   before the next probe does.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{adaptive::Draw, endpoint::Endpoint, set::BackendSet, strategy::PickTrace};

/// Most backends one pick considers (the paper's probe pool size).
pub const POOL: usize = 16;

/// Tuning of `prequal`.
#[derive(Debug, Clone, Serialize)]
pub struct PrequalConfig {
    /// Quantile of the pool's RIFs above which a backend is hot.
    pub hot_quantile: f64,
    /// Reports older than this are not used.
    #[serde(with = "crate::humantime_serde")]
    pub max_age: Duration,
    /// Picks one report may serve before it is used up.
    pub max_uses: u32,
    /// Probes sent per request, on average.
    pub probes_per_request: f64,
    /// Every backend is probed at least this often, traffic or not.
    #[serde(with = "crate::humantime_serde")]
    pub idle_probe_interval: Duration,
}

impl PrequalConfig {
    /// 0.6 quantile, reports used for at most 1 s and 3 picks, one probe per request, and
    /// every backend probed at least every 500 ms.
    pub const DEFAULT: PrequalConfig = PrequalConfig {
        hot_quantile: 0.6,
        max_age: Duration::from_secs(1),
        max_uses: 3,
        probes_per_request: 1.0,
        idle_probe_interval: Duration::from_millis(500),
    };
}

impl Default for PrequalConfig {
    fn default() -> Self {
        PrequalConfig::DEFAULT
    }
}

/// What decided a prequal pick, for its decision record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrequalPick {
    /// The chosen backend's RIF (before this request).
    pub rif: u32,
    /// Its latency, seconds.
    pub latency: f64,
    /// The hot threshold of the pool.
    pub threshold: u32,
    /// Whether it was cold.
    pub cold: bool,
    /// Age of the report used; `None`: ALB's own numbers stood in.
    pub probe_age: Option<Duration>,
    /// Backends in the pool, and how many of them had a usable report.
    pub pool: u8,
    /// Of which with a usable probe report.
    pub probed: u8,
}

/// One backend's numbers in the pool.
#[derive(Debug, Clone, Copy, Default)]
struct Candidate {
    index: usize,
    rif: u32,
    latency: f64,
    probe_age: Option<Duration>,
}

/// The prequal strategy: its tuning, random source, and the probes it owes.
#[derive(Debug)]
pub struct Prequal {
    config: PrequalConfig,
    draw: Draw,
    /// Probes owed to the prober, in thousandths.
    owed_milli: AtomicU64,
}

impl Default for Prequal {
    fn default() -> Self {
        Prequal::new(PrequalConfig::DEFAULT, Draw::from_entropy())
    }
}

impl Prequal {
    /// A prequal strategy with `config`, drawing from `draw`.
    pub fn new(config: PrequalConfig, draw: Draw) -> Self {
        Prequal {
            config,
            draw,
            owed_milli: AtomicU64::new(0),
        }
    }

    /// A prequal strategy whose random draws are fixed by `seed`.
    pub fn seeded(seed: u64) -> Self {
        Prequal::new(PrequalConfig::DEFAULT, Draw::seeded(seed))
    }

    /// Its tuning.
    pub fn config(&self) -> &PrequalConfig {
        &self.config
    }

    /// Takes the whole probes owed since the last call (the prober's share of the traffic).
    pub fn take_owed_probes(&self) -> u64 {
        let milli = self.owed_milli.load(Ordering::Relaxed);
        let whole = milli / 1000;
        if whole > 0 {
            self.owed_milli.fetch_sub(whole * 1000, Ordering::Relaxed);
        }
        whole
    }

    /// Picks by the hot-cold rule (see the module docs).
    pub fn pick(&self, set: &BackendSet, trace: &mut PickTrace) -> usize {
        self.pick_at(set, Instant::now(), trace)
    }

    /// [`Prequal::pick`] at a given time (tests drive the clock).
    pub fn pick_at(&self, set: &BackendSet, now: Instant, trace: &mut PickTrace) -> usize {
        let owed = (self.config.probes_per_request * 1000.0) as u64;
        self.owed_milli.fetch_add(owed, Ordering::Relaxed);
        let n = set.endpoints.len();
        let size = n.min(POOL);
        let start = if n > 1 { self.draw.below(n) } else { 0 };
        let mut pool = [Candidate::default(); POOL];
        let mut probed = 0u8;
        for (slot, j) in pool.iter_mut().zip(0..size) {
            let index = (start + j) % n;
            *slot = self.candidate(&set.endpoints[index], index, now);
            probed += u8::from(slot.probe_age.is_some());
        }
        let pool = &pool[..size];
        let threshold = quantile(pool, self.config.hot_quantile);
        let tolerance = set.endpoints[0].tuning().tolerance;
        let chosen = choose(pool, threshold, tolerance, &self.draw);
        let ep = &set.endpoints[chosen.index];
        if chosen.probe_age.is_some() {
            ep.probe.used();
        }
        trace.sample(chosen.index, chosen.latency);
        trace.prequal = Some(PrequalPick {
            rif: chosen.rif,
            latency: chosen.latency,
            threshold,
            cold: chosen.rif <= threshold,
            probe_age: chosen.probe_age,
            pool: size as u8,
            probed,
        });
        chosen.index
    }

    /// A backend's numbers: its usable probe report, else ALB's own. While the last answer
    /// this replica got from it was a failure, its latency counts as at least the failure
    /// penalty: a backend failing fast reports itself fast (its errors are quick).
    fn candidate(&self, ep: &Endpoint, index: usize, now: Instant) -> Candidate {
        let mut candidate = self.measured(ep, index, now);
        // Slow start: a warming backend looks slower in proportion to the share it may take.
        if ep.is_warming() {
            candidate.latency /= ep.slow_start_factor_at(now);
        }
        candidate
    }

    fn measured(&self, ep: &Endpoint, index: usize, now: Instant) -> Candidate {
        match ep.probe.read(now) {
            Some(r) if r.age <= self.config.max_age && r.uses < self.config.max_uses => {
                let latency = if ep.failure_streak() > 0 {
                    r.latency.max(ep.tuning().failure_penalty.as_secs_f64())
                } else {
                    r.latency
                };
                Candidate {
                    index,
                    rif: r.rif,
                    latency,
                    probe_age: Some(r.age),
                }
            }
            _ => Candidate {
                index,
                rif: u32::try_from(ep.in_flight()).unwrap_or(u32::MAX),
                latency: ep.ewma_secs(now),
                probe_age: None,
            },
        }
    }
}

/// The `q` quantile of the pool's RIFs (nearest rank, rounding down).
fn quantile(pool: &[Candidate], q: f64) -> u32 {
    let mut rifs = [0u32; POOL];
    for (slot, c) in rifs.iter_mut().zip(pool) {
        *slot = c.rif;
    }
    let rifs = &mut rifs[..pool.len()];
    rifs.sort_unstable();
    let rank = ((rifs.len() - 1) as f64 * q.clamp(0.0, 1.0)).floor() as usize;
    rifs[rank]
}

/// The hot-cold rule over a non-empty pool; equals are broken at random (a fixed order
/// would favour whichever backend follows a hot one in the window).
fn choose(pool: &[Candidate], threshold: u32, tolerance: f64, draw: &Draw) -> Candidate {
    let fastest_cold = pool
        .iter()
        .filter(|c| c.rif <= threshold)
        .map(|c| c.latency)
        .min_by(f64::total_cmp);
    // Cold ones within the tolerance of the fastest cold one; if all are hot, every one.
    let eligible = |c: &Candidate| match fastest_cold {
        Some(fastest) => c.rif <= threshold && c.latency <= fastest * (1.0 + tolerance),
        None => true,
    };
    let fewest = pool
        .iter()
        .filter(|c| eligible(c))
        .map(|c| c.rif)
        .min()
        .expect("a non-empty pool has an eligible backend");
    // The equals, on the stack: no allocation per pick.
    let mut best = [0usize; POOL];
    let mut count = 0;
    for (i, c) in pool.iter().enumerate() {
        if eligible(c) && c.rif == fewest {
            best[count] = i;
            count += 1;
        }
    }
    let k = if count == 1 { 0 } else { draw.below(count) };
    pool[best[k]]
}

/// The prequal load measure of one backend: its reported RIF while a report is fresh, else
/// its requests in flight from this replica (for metrics and the admin routes).
pub fn score(ep: &Endpoint, now: Instant, max_age: Duration) -> f64 {
    match ep.probe.read(now) {
        Some(r) if r.age <= max_age => f64::from(r.rif),
        _ => ep.in_flight() as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{endpoints, set_of};

    const MS: Duration = Duration::from_millis(1);

    fn report(ep: &Endpoint, rif: u32, latency: Duration, at: Instant) {
        ep.probe.store(rif, latency.as_micros() as u64, at);
    }

    #[test]
    fn cold_and_fastest_wins() {
        let eps = endpoints(&[1; 4]);
        let now = Instant::now();
        report(&eps[0], 2, 20 * MS, now);
        report(&eps[1], 1, 5 * MS, now);
        report(&eps[2], 30, MS, now);
        report(&eps[3], 40, MS, now);
        let set = set_of(&eps, &eps);
        let mut trace = PickTrace::default();
        // Sorted RIFs 1, 2, 30, 40: the 0.6 quantile is 2, so 2 and 3 are hot although
        // fastest; of the cold ones, backend 1 is faster.
        assert_eq!(Prequal::seeded(1).pick_at(&set, now, &mut trace), 1);
        let p = trace.prequal.unwrap();
        assert_eq!((p.rif, p.threshold, p.cold), (1, 2, true));
        assert_eq!((p.pool, p.probed), (4, 4));
        assert_eq!(p.probe_age, Some(Duration::ZERO));
    }

    #[test]
    fn a_pick_bumps_the_report_and_reports_age_out() {
        let eps = endpoints(&[1; 2]);
        let now = Instant::now();
        report(&eps[0], 0, 5 * MS, now);
        report(&eps[1], 0, 5 * MS, now);
        let set = set_of(&eps, &eps);
        let prequal = Prequal::seeded(3);
        let mut picks = [0; 2];
        for _ in 0..4 {
            picks[prequal.pick_at(&set, now, &mut PickTrace::default())] += 1;
        }
        // Each pick makes the chosen one busier: the two take turns.
        assert_eq!(picks, [2, 2]);
        // Reports used `max_uses` times are used up: ALB's own numbers stand in.
        for ep in &eps {
            while ep.probe.read(now).unwrap().uses < PrequalConfig::DEFAULT.max_uses {
                ep.probe.used();
            }
        }
        let mut trace = PickTrace::default();
        prequal.pick_at(&set, now, &mut trace);
        assert_eq!(trace.prequal.unwrap().probed, 0);
        // A fresh report is used; once older than max_age it is not.
        report(&eps[0], 0, 5 * MS, now);
        let mut trace = PickTrace::default();
        prequal.pick_at(&set, now, &mut trace);
        assert_eq!(trace.prequal.unwrap().probed, 1);
        let later = now + 2 * PrequalConfig::DEFAULT.max_age;
        let mut trace = PickTrace::default();
        prequal.pick_at(&set, later, &mut trace);
        assert_eq!(trace.prequal.unwrap().probed, 0);
    }

    #[test]
    fn a_backend_busy_with_other_traffic_is_avoided() {
        // Backend 0 serves 20 requests from elsewhere; this replica sent it none.
        let eps = endpoints(&[1; 5]);
        let set = set_of(&eps, &eps);
        let prequal = Prequal::seeded(7);
        let mut now = Instant::now();
        let mut picks = [0; 5];
        for _ in 0..500 {
            for (i, ep) in eps.iter().enumerate() {
                let rif = if i == 0 { 20 } else { 1 };
                report(ep, rif, 10 * MS, now);
            }
            picks[prequal.pick_at(&set, now, &mut PickTrace::default())] += 1;
            now += MS;
        }
        assert_eq!(picks[0], 0, "{picks:?}");
        let (min, max) = (
            picks[1..].iter().min().unwrap(),
            picks[1..].iter().max().unwrap(),
        );
        assert!(
            *min >= 100 && *max <= 150,
            "the others share evenly: {picks:?}"
        );
    }

    #[test]
    fn without_reports_alb_numbers_stand_in() {
        let eps = endpoints(&[1; 3]);
        let set = set_of(&eps, &eps);
        let now = Instant::now();
        let _busy = eps[0].start_at(now);
        let _busier = eps[0].start_at(now);
        let prequal = Prequal::seeded(5);
        let mut picks = [0; 3];
        for _ in 0..60 {
            picks[prequal.pick_at(&set, now, &mut PickTrace::default())] += 1;
        }
        assert_eq!(picks[0], 0, "two in flight from here: hot, {picks:?}");
        assert!(picks[1] > 10 && picks[2] > 10, "{picks:?}");
    }

    #[test]
    fn probes_are_owed_per_request() {
        let eps = endpoints(&[1; 2]);
        let set = set_of(&eps, &eps);
        let prequal = Prequal::seeded(5);
        for _ in 0..5 {
            prequal.pick(&set, &mut PickTrace::default());
        }
        assert_eq!(prequal.take_owed_probes(), 5);
        assert_eq!(prequal.take_owed_probes(), 0);
    }
}
