//! The autoscaling examples in `observability/`: every YAML file parses (Python's PyYAML, a
//! real parser), the KEDA and HPA objects scale a Deployment on ALB's metric, and every
//! PromQL expression passes `promtool check rules`.

use std::process::Command;

use alb::telemetry::POOL_RECOMMENDED_BACKENDS;
use serde_json::Value;

/// Every document of a YAML file, as JSON (through `python3 -c 'import yaml'`).
fn yaml_documents(path: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            path,
        ])
        .output()
        .expect("python3 with PyYAML is installed");
    assert!(
        out.status.success(),
        "{path} does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `promtool check rules` on a rules file holding these expressions as recording rules.
fn promtool_accepts(exprs: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exprs.yml");
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("check:expr{i}"), "expr": e}))
        .collect();
    // JSON is YAML.
    let file = serde_json::json!({"groups": [{"name": "check", "rules": rules}]});
    std::fs::write(&path, file.to_string()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules", path.to_str().unwrap()])
        .output()
        .expect("promtool is installed (Debian package prometheus)");
    assert!(
        out.status.success(),
        "{exprs:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn capacity_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules", "observability/capacity-rules.yml"])
        .output()
        .expect("promtool is installed (Debian package prometheus)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("4 rules found"),
        "{said}"
    );
    let docs = yaml_documents("observability/prometheus.yml");
    let files = docs[0]["rule_files"].as_array().unwrap();
    assert!(files.iter().any(|f| f == "capacity-rules.yml"), "{files:?}");
}

#[test]
fn keda_scaled_object_scales_a_deployment_on_the_recommendation() {
    let docs = yaml_documents("observability/autoscaling/keda-scaledobject.yml");
    let [so] = docs.as_slice() else {
        panic!("one document: {docs:?}")
    };
    assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(so["kind"], "ScaledObject");
    assert_eq!(so["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(trigger["metricType"], "AverageValue");
    assert_eq!(trigger["metadata"]["threshold"], "1");
    let query = trigger["metadata"]["query"].as_str().unwrap();
    assert!(query.contains(POOL_RECOMMENDED_BACKENDS), "{query}");
    promtool_accepts(&[query.to_owned()]);
}

#[test]
fn hpa_scales_a_deployment_on_the_adapters_external_metric() {
    let docs = yaml_documents("observability/autoscaling/hpa-prometheus-adapter.yml");
    let [adapter, hpa] = docs.as_slice() else {
        panic!("two documents: {docs:?}")
    };
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["kind"], "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let metric = &hpa["spec"]["metrics"][0];
    assert_eq!(metric["type"], "External");
    assert_eq!(
        metric["external"]["metric"]["name"],
        POOL_RECOMMENDED_BACKENDS
    );
    assert_eq!(metric["external"]["target"]["type"], "AverageValue");
    assert_eq!(metric["external"]["target"]["averageValue"], "1");

    // The adapter's own config file is YAML inside the ConfigMap: parse it too.
    assert_eq!(adapter["kind"], "ConfigMap");
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("config.yaml");
    std::fs::write(&inner, adapter["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let config = yaml_documents(inner.to_str().unwrap());
    let rule = &config[0]["externalRules"][0];
    assert_eq!(rule["name"]["as"], POOL_RECOMMENDED_BACKENDS);
    // The adapter fills in the series and the HPA's label matchers.
    let query = rule["metricsQuery"]
        .as_str()
        .unwrap()
        .replace("<<.Series>>", POOL_RECOMMENDED_BACKENDS)
        .replace("<<.LabelMatchers>>", "pool=\"default\"");
    let series = rule["seriesQuery"].as_str().unwrap().to_owned();
    promtool_accepts(&[query, series]);
}
