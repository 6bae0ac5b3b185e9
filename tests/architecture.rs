//! The crate's layering, checked: imports point from the edge down to the core, never back.
//!
//! Every top-level module of `src/` has a layer below; a module may use (`crate::x` paths
//! and `use crate::{..}` lists, test modules aside) only modules of lower layers. A new
//! module must be placed here, so the layering is a decision and not an accident.

use std::{collections::BTreeMap, fs, path::Path};

/// Lowest first. Modules within one layer do not use each other.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "headers",
            "humantime_serde",
            "semantics",
            "telemetry",
            "client_ip",
            "guarded_body",
            "grpc",
            "load_report",
            "tls",
        ],
    ),
    ("the simulated backend", &["sim"]),
    (
        "local replies, metrics exposition",
        &["local_reply", "prometheus"],
    ),
    ("the balancer core", &["balance"]),
    (
        "around the core",
        &["decision", "outlier", "retry", "upstream", "capacity"],
    ),
    (
        "request path",
        &[
            "dns", "forward", "health", "layer", "probe", "redirect", "trace",
        ],
    ),
    ("composition of one request", &["route", "router"]),
    ("config file", &["config"]),
    ("assembly", &["proxy", "loadgen"]),
    ("replay, on the load generator", &["replay"]),
    ("surfaces", &["admin", "lab"]),
    ("entry points", &["builder", "server"]),
    ("the demo", &["demo"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// Top-level module name -> the source of every file in it, test modules cut off.
fn sources() -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap().as_os_str();
            let module = first.to_string_lossy().trim_end_matches(".rs").to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap();
            let text = match text.find("#[cfg(test)]") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            out.entry(module)
                .or_default()
                .push((relative.display().to_string(), text));
        }
    }
    out
}

/// The crate modules a file refers to: `crate::x` and `use crate::{x, y::z}`.
fn uses(text: &str, modules: &BTreeMap<String, Vec<(String, String)>>) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            // A use list: every name that starts an item of it, nested lists flattened.
            let end = list.find("};").unwrap_or(list.len());
            for item in list[..end].split([',', '{', '}']) {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if modules.contains_key(name) {
                    found.push(name.to_owned());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if modules.contains_key(&name) {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn every_module_has_a_layer() {
    for module in sources().keys() {
        assert!(
            layer_of(module).is_some(),
            "src/{module} is in no layer: add it to LAYERS in tests/architecture.rs"
        );
    }
}

#[test]
fn imports_point_down_only() {
    let modules = sources();
    let mut wrong = Vec::new();
    for (module, files) in &modules {
        let Some(own) = layer_of(module) else {
            continue;
        };
        for (file, text) in files {
            for used in uses(text, &modules) {
                if used == *module {
                    continue;
                }
                let theirs = layer_of(&used).unwrap_or(usize::MAX);
                if theirs >= own {
                    wrong.push(format!(
                        "src/{file}: {module} ({}) uses {used} ({})",
                        LAYERS[own].0,
                        LAYERS.get(theirs).map_or("no layer", |l| l.0)
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports pointing up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_core_knows_nothing_of_the_proxy_around_it() {
    // The balancer core: identity, state, load measures, selection, discovery. It may
    // record metrics through the catalogue, and nothing else of the crate.
    let modules = sources();
    for (file, text) in &modules["balance"] {
        for used in uses(text, &modules) {
            assert!(
                ["balance", "telemetry", "humantime_serde"].contains(&used.as_str()),
                "src/{file} uses {used}"
            );
        }
    }
}
