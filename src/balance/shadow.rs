//! Shadow strategies: the other strategies pick on every request too, without acting, so
//! their choices can be compared with the active one on live traffic.
//!
//! Each shadow keeps its own state (a round-robin cursor, a random source), and agreement is
//! counted in `lb_shadow_decisions_total{strategy, agrees}`. The cost is one extra pick per
//! shadow, so it is off unless asked for.

use std::net::IpAddr;

use metrics::Counter;

use super::{
    backend::BackendId,
    set::BackendSet,
    strategy::{PickTrace, Strategy, StrategyKind},
};
use crate::telemetry::SHADOW_DECISIONS_TOTAL;

/// The strategies other than the active one, and their agreement counters.
#[derive(Debug)]
pub struct Shadows {
    /// (position in [`StrategyKind::ALL`], the strategy)
    strategies: Vec<(usize, Strategy)>,
    /// Per shadow: [disagrees, agrees].
    agree: Vec<[Counter; 2]>,
}

impl Shadows {
    /// Shadows of every strategy but `active`.
    pub fn new(active: StrategyKind) -> Self {
        let strategies: Vec<(usize, Strategy)> = StrategyKind::ALL
            .iter()
            .enumerate()
            .filter(|(_, k)| **k != active)
            .map(|(i, k)| (i, Strategy::new(*k)))
            .collect();
        let agree = strategies
            .iter()
            .map(|(_, s)| {
                [false, true].map(|agrees| {
                    metrics::counter!(SHADOW_DECISIONS_TOTAL,
                        "strategy" => s.kind().as_str(),
                        "agrees" => if agrees { "true" } else { "false" })
                })
            })
            .collect();
        Shadows { strategies, agree }
    }

    /// What each shadow would have chosen from the non-empty `set`, by
    /// [`StrategyKind::ALL`] position (`None` for the active strategy), counting agreement
    /// with `chosen`.
    pub fn evaluate(
        &self,
        set: &BackendSet,
        client: Option<IpAddr>,
        chosen: BackendId,
    ) -> [Option<BackendId>; StrategyKind::ALL.len()] {
        let mut out = [None; StrategyKind::ALL.len()];
        for ((position, strategy), counters) in self.strategies.iter().zip(&self.agree) {
            let index = strategy.pick(set, client, &mut PickTrace::default());
            let id = set.endpoints[index].id();
            out[*position] = Some(id);
            counters[usize::from(id == chosen)].increment(1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{endpoints, set_of};

    #[test]
    fn every_other_strategy_answers_and_the_active_one_does_not() {
        let eps = endpoints(&[1, 1, 1]);
        let set = set_of(&eps, &eps);
        let shadows = Shadows::new(StrategyKind::LeastConn);
        let choices = shadows.evaluate(&set, None, eps[0].id());
        let least_conn = StrategyKind::ALL
            .iter()
            .position(|k| *k == StrategyKind::LeastConn)
            .unwrap();
        for (i, choice) in choices.iter().enumerate() {
            assert_eq!(choice.is_none(), i == least_conn, "{choices:?}");
        }
        // Round robin's first pick is the first backend.
        assert_eq!(choices[0], Some(eps[0].id()));
    }
}
