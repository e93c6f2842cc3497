//! The boundaries ARCHITECTURE.md lists ("Boundaries"), checked: which crate may depend on which,
//! and which parts of `squall` may not reach into which.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The normal (not dev) dependencies of the crate in `dir`.
fn dependencies(dir: &str) -> BTreeSet<String> {
    let path = root().join(dir).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    manifest.get("dependencies").and_then(|d| d.as_table()).map(|d| d.keys().cloned().collect()).unwrap_or_default()
}

const SQUALL_CRATES: [&str; 7] = [
    "squall-enrichment",
    "squall-operators",
    "squall-topologies",
    "squall",
    "squall-cql-dev",
    "squall-tests",
    "squall-benches",
];

fn squall_dependencies(dir: &str) -> BTreeSet<String> {
    dependencies(dir).into_iter().filter(|d| SQUALL_CRATES.contains(&d.as_str())).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn crates_depend_only_downwards() {
    assert_eq!(squall_dependencies("enrichment"), set(&[]), "enrichment depends on no other squall crate");
    assert_eq!(squall_dependencies("operators"), set(&["squall-enrichment"]));
    assert_eq!(squall_dependencies("topologies"), set(&["squall-enrichment", "squall-operators"]));
    assert_eq!(squall_dependencies("deploy"), set(&["squall-enrichment", "squall-operators", "squall-topologies"]));
    assert_eq!(squall_dependencies("cqldev"), set(&[]), "the CQL dev server stands alone");
}

#[test]
fn only_the_squall_binary_serves_http_or_parses_a_command_line() {
    for dir in ["enrichment", "operators", "topologies"] {
        let deps = dependencies(dir);
        for outer in ["axum", "reqwest", "clap", "utoipa", "squall-cql-dev", "squall-tests", "squall-benches"] {
            assert!(!deps.contains(outer), "{dir} depends on {outer}");
        }
    }
}

/// Every `.rs` file under `dir` (relative to deploy/src), with its text.
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
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir), &mut out);
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

#[test]
fn the_control_plane_never_links_a_dataflow() {
    for (path, text) in sources("control") {
        for banned in ["timely::", "crate::runner", "squall_enrichment", "UserStore", "squall_operators::store"] {
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
    let mut files = sources("runner");
    for file in ["http.rs", "counters.rs", "cluster.rs", "lease.rs", "runfile.rs"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(file);
        files.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
    }
    for (path, text) in files {
        assert!(!text.contains("crate::control"), "{} uses the control plane", path.display());
    }
}
