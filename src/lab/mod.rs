//! The lab: reproducible experiments comparing strategies on simulated backends.
//!
//! ```text
//! load/scenarios/*.toml ─► scenario ─► runner: for each repetition, for each contender
//!                                        (every strategy, prequal included, and the oracle):
//!                                        fresh `alb` x replicas (CPU 0) ◄─ loadgen (open loop,
//!                                        CPU 1), each request to the next replica in turn
//!                                        ─► in-process simulated backends (CPU 1)
//!                                           ◄─ antagonist (open loop, straight, unmeasured)
//!                          report ◄──────┘  report.md, summary.json, raw CSVs, SVG plots
//! ```
//!
//! `alb lab --quick` runs the four scenarios of [`QUICK_SCENARIOS`] at short durations.

pub mod plot;
pub mod report;
pub mod runner;
pub mod scenario;

use std::path::{Path, PathBuf};

pub use runner::{Contender, LabOptions};
pub use scenario::Scenario;

/// The scenarios of a `--quick` run.
pub const QUICK_SCENARIOS: [&str; 4] = ["null", "slow-16x", "fail-fast", "stall"];

/// Where scenario files live, relative to the repository root.
pub const SCENARIO_DIR: &str = "load/scenarios";

/// Loads the named scenarios (or every file in `dir`, or the quick set), checking them all
/// before anything runs.
pub fn load_scenarios(
    names: &[String],
    dir: &Path,
    quick: bool,
) -> Result<Vec<Scenario>, scenario::ScenarioError> {
    let paths: Vec<PathBuf> = if !names.is_empty() {
        runner::resolve_scenarios(names, dir)
    } else if quick {
        let quick: Vec<String> = QUICK_SCENARIOS.iter().map(|s| s.to_string()).collect();
        runner::resolve_scenarios(&quick, dir)
    } else {
        let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| scenario::ScenarioError::Read {
                path: dir.to_owned(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        all.sort();
        all
    };
    paths.iter().map(|p| Scenario::load(p)).collect()
}
