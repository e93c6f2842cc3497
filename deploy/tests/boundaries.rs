//! The boundaries ARCHITECTURE.md lists ("Boundaries"), checked: which crate may depend on which,
//! which folders of `squall` may name which, and where metrics are made.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

fn manifest(dir: &str) -> toml::Table {
    let path = root().join(dir).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The keys of `section` (e.g. `dependencies`) of the crate in `dir`.
fn keys(dir: &str, section: &str) -> BTreeSet<String> {
    manifest(dir).get(section).and_then(|d| d.as_table()).map(|d| d.keys().cloned().collect()).unwrap_or_default()
}

/// The normal (not dev) dependencies of the crate in `dir`.
fn dependencies(dir: &str) -> BTreeSet<String> {
    keys(dir, "dependencies")
}

/// Every crate of the workspace: its folder and its package name.
fn workspace_crates() -> BTreeMap<String, String> {
    let members = manifest(".")["workspace"]["members"].as_array().expect("workspace.members").clone();
    members
        .iter()
        .map(|m| {
            let dir = m.as_str().expect("a member is a folder").to_owned();
            let name = manifest(&dir)["package"]["name"].as_str().expect("package.name").to_owned();
            (dir, name)
        })
        .collect()
}

fn squall_dependencies(dir: &str) -> BTreeSet<String> {
    let names: BTreeSet<String> = workspace_crates().into_values().collect();
    dependencies(dir).into_iter().filter(|d| names.contains(d)).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The product crates, lowest first, each with the squall crates it depends on.
const GRAPH: [(&str, &[&str]); 8] = [
    ("kafka-batch", &[]),
    ("enrichment", &[]),
    ("operators", &["squall-enrichment", "squall-kafka-batch"]),
    ("feeds", &["squall-enrichment", "squall-operators"]),
    ("topologies", &["squall-enrichment", "squall-feeds", "squall-operators"]),
    ("archive", &["squall-operators"]),
    ("deploy", &["squall-archive", "squall-enrichment", "squall-feeds", "squall-operators", "squall-topologies"]),
    ("cqldev", &[]),
];

/// The crates that may depend on anything, and that nothing depends on.
const OUTERMOST: [&str; 2] = ["tests", "benches"];

#[test]
fn every_crate_has_its_place() {
    let placed: BTreeSet<&str> = GRAPH.iter().map(|(dir, _)| *dir).chain(OUTERMOST).collect();
    let crates = workspace_crates();
    let members: BTreeSet<&str> = crates.keys().map(String::as_str).collect();
    assert_eq!(members, placed, "a workspace member without a rule here (or a rule without a member)");
}

#[test]
fn crates_depend_only_downwards() {
    for (dir, allowed) in GRAPH {
        assert_eq!(squall_dependencies(dir), set(allowed), "the squall crates {dir} depends on");
    }
}

#[test]
fn nothing_depends_on_the_tests_or_the_benches() {
    let crates = workspace_crates();
    let outer: Vec<&str> = OUTERMOST.iter().map(|dir| crates[*dir].as_str()).collect();
    for dir in crates.keys() {
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let deps = keys(dir, section);
            for o in &outer {
                assert!(!deps.contains(*o), "{dir} has {o} in [{section}]");
            }
        }
    }
}

#[test]
fn only_the_squall_binary_serves_http_or_parses_a_command_line() {
    for (dir, _) in GRAPH.iter().filter(|(dir, _)| *dir != "deploy" && *dir != "cqldev") {
        let deps = dependencies(dir);
        for outer in ["axum", "reqwest", "clap", "utoipa"] {
            assert!(!deps.contains(outer), "{dir} depends on {outer}");
        }
    }
}

/// Every `.rs` file under `dir` (relative to the workspace root), with its text.
fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

/// The folders of `deploy/src`, each a part of `squall` with a rule below.
#[test]
fn squall_is_two_halves_and_its_tools() {
    let folders: BTreeSet<String> = std::fs::read_dir(root().join("deploy/src"))
        .expect("deploy/src")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(folders, set(&["bin", "control", "training", "version"]), "a folder of deploy/src without a rule here");
}

#[test]
fn the_control_plane_never_links_a_dataflow() {
    for (path, text) in sources("deploy/src/control") {
        for banned in ["timely::", "version::runner", "squall_enrichment", "UserStore", "squall_operators::store"] {
            assert!(
                !text.contains(banned),
                "{} uses {banned}: the control plane reaches versions only through its seams",
                path.display()
            );
        }
    }
}

#[test]
fn a_version_knows_nothing_of_the_control_plane() {
    for (path, text) in sources("deploy/src/version") {
        assert!(!text.contains("crate::control"), "{} uses the control plane", path.display());
    }
}

/// `squall training-data` is an offline job: it runs its own dataflow over the archive and takes
/// from the version runtime only the cluster's hostfile.
#[test]
fn training_data_knows_nothing_of_the_control_plane_or_a_running_version() {
    for (path, text) in sources("deploy/src/training") {
        for banned in ["crate::control", "version::runner", "version::http", "UserStore"] {
            assert!(!text.contains(banned), "{} uses {banned}", path.display());
        }
    }
}

#[test]
fn the_dev_tools_know_nothing_of_the_control_plane() {
    for (path, text) in sources("deploy/src/bin") {
        assert!(!text.contains("squall::control"), "{} uses the control plane", path.display());
    }
}

/// The modules at the top of `deploy/src` are what both halves share, so they name neither; the
/// exceptions are the binary (`main.rs`), the crate root and the CLI's client of the control plane.
#[test]
fn what_both_halves_share_names_neither() {
    let top = std::fs::read_dir(root().join("deploy/src")).expect("deploy/src");
    for path in top.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "rs")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if ["main.rs", "lib.rs", "client.rs"].contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for half in ["crate::control", "crate::version"] {
            assert!(!text.contains(half), "{name} names {half}: move it into that half, or out of it");
        }
    }
}

/// Where `metrics::` is named in `text`, as a path of its own (not the tail of another one, e.g.
/// `telemetry::metrics`).
fn names_metrics(text: &str) -> bool {
    text.match_indices("metrics::")
        .any(|(i, _)| !text[..i].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':'))
}

/// One source per series: in the crates that publish metrics, only a file named `counters.rs`
/// makes them (`metrics::`); everything else calls it.
#[test]
fn only_counters_modules_make_metrics() {
    let mut offenders = Vec::new();
    for dir in ["operators/src", "enrichment/src", "feeds/src", "deploy/src"] {
        for (path, text) in sources(dir) {
            if path.file_name().is_some_and(|n| n != "counters.rs") && names_metrics(&text) {
                offenders.push(path.strip_prefix(root()).unwrap_or(&path).display().to_string());
            }
        }
    }
    offenders.sort();
    assert!(offenders.is_empty(), "these make metrics, which only a counters.rs may: {offenders:?}");
}

#[test]
fn names_metrics_sees_paths_not_tails() {
    assert!(names_metrics("metrics::counter!(\"x\")"));
    assert!(names_metrics("let c = metrics::gauge!(\"x\");"));
    assert!(!names_metrics("crate::telemetry::metrics::Handle"));
    assert!(!names_metrics("use metrics_exporter_prometheus::PrometheusHandle;"));
}
