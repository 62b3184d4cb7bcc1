//! No module in any crate of the workspace imports one that imports it back
//! (`docs/architecture.md`): every library, binary, test and bench crate is read and its module
//! graph checked, with inline paths, `super::` and path strings counted (see `modgraph`).

use std::path::{Path, PathBuf};

use zident_testkit::modgraph::{crate_cycles, crate_dependencies};

/// The crate roots below `crates/`: `src/lib.rs`, `src/main.rs`, and each file of `tests/`
/// and `benches/`.
fn crate_roots(crates: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(crates)
        .expect("the crates folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    for dir in dirs {
        for main in ["src/lib.rs", "src/main.rs"] {
            if dir.join(main).exists() {
                roots.push(dir.join(main));
            }
        }
        for sub in ["tests", "benches"] {
            if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "rs"))
                    .collect();
                files.sort();
                roots.extend(files);
            }
        }
    }
    roots
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let roots = crate_roots(&crates);
    assert!(
        roots.len() > 20,
        "found only {} crate roots under {}: the walk is broken",
        roots.len(),
        crates.display()
    );
    let mut found = Vec::new();
    for root in &roots {
        match crate_cycles(root) {
            Ok(cycles) => {
                for c in cycles {
                    found.push(format!("{}: {c}", root.display()));
                }
            }
            Err(e) => found.push(format!("{}: {e}", root.display())),
        }
    }
    assert!(
        found.is_empty(),
        "module cycles (move the shared item into the module that owns it, or a module of its own):\n{}",
        found.join("\n")
    );
}

/// The graph sees the dependencies the crates really have, written each way the checker reads
/// (a `use` line, a path inline in code, a re-export followed to its module): were it blind,
/// "no cycles" above would mean nothing.
#[test]
fn the_graph_sees_known_dependencies() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let expect = [
        // `use crate::roots::generation::{…}` in rotation.rs.
        (
            "zident-ca/src/lib.rs",
            "crate::roots::rotation",
            "crate::roots::generation",
        ),
        // `use crate::ca::endpoints::{CaAddressError, Endpoints}` in client.rs.
        (
            "zident-agent/src/lib.rs",
            "crate::ca::client",
            "crate::ca::endpoints",
        ),
        // Inline: `crate::MESH` in decode.rs, followed through lib.rs's re-export.
        ("zident-xds/src/lib.rs", "crate::decode", "crate::types"),
        // Inline: `crate::print::say!(…)` in cli.rs.
        ("zident/src/main.rs", "crate::cli", "crate::print"),
    ];
    for (root, from, to) in expect {
        let deps = crate_dependencies(&crates.join(root)).unwrap();
        assert!(
            deps.contains(&(from.to_owned(), to.to_owned())),
            "{root}: the module graph lost {from} -> {to}; it has {} dependencies",
            deps.len()
        );
    }
}
