//! A short run of every fuzz target under libFuzzer and AddressSanitizer (10 s each, from its
//! corpus), when cargo-fuzz is installed (.ci/run installs it); skipped with a message
//! otherwise. The long runs are by hand (docs/fuzzing.md); this one keeps every target building
//! and running, so a target that rots is seen at once.

use std::path::Path;
use std::process::Command;

const SECONDS: &str = "10";

fn cargo() -> Command {
    let mut c = Command::new(env!("CARGO"));
    // The sanitizer flags are nightly-only; the stable toolchain accepts them with this.
    c.env("RUSTC_BOOTSTRAP", "1");
    c
}

#[test]
fn every_target_runs_under_libfuzzer_for_a_moment() {
    let installed = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("SKIPPED: cargo-fuzz is not installed (cargo install cargo-fuzz; .ci/run does)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (name, _) in zident_fuzzing::TARGETS {
        // One target at a time, its binary removed after its run: eleven instrumented
        // binaries of ~100 MB each at once would be a gigabyte of disk (CI's runs once ran
        // out of it here).
        let built = cargo()
            .args(["fuzz", "build", "-O", name])
            .current_dir(&root)
            .output()
            .expect("cargo fuzz build runs");
        assert!(
            built.status.success(),
            "the fuzz target {name} builds: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        // New inputs go to a scratch directory; the checked-in corpus is only read.
        let scratch =
            std::env::temp_dir().join(format!("zident-fuzz-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).expect("scratch corpus");
        let run = cargo()
            .args(["fuzz", "run", name, "-O"])
            .arg(&scratch)
            .arg(root.join("fuzz/corpus").join(name))
            .args([
                "--",
                &format!("-max_total_time={SECONDS}"),
                "-rss_limit_mb=2048",
            ])
            .current_dir(&root)
            .output()
            .expect("cargo fuzz run runs");
        let _ = std::fs::remove_dir_all(&scratch);
        let removed = remove_binary(&root, name);
        let log = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success(),
            "{name} failed under libFuzzer (its input is in fuzz/artifacts/{name}/; fix it and keep the input in fuzz/corpus/{name}/):\n{}",
            log.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        // Where cargo-fuzz puts a binary is its choice; if that moves, say so here rather
        // than fill CI's disk again unnoticed.
        assert!(
            removed > 0,
            "no binary of {name} found to remove under fuzz/target/<triple>/release"
        );
    }
}

/// Removes a fuzz target's binary from cargo-fuzz's target directory (the copy cargo hard-links
/// under `<triple>/release/` and the one under its `deps/`); the libraries stay, so the next
/// build only links. Returns how many files it removed.
fn remove_binary(root: &Path, name: &str) -> usize {
    let mut removed = 0;
    let Ok(triples) = std::fs::read_dir(root.join("fuzz/target")) else {
        return removed;
    };
    for release in triples.flatten().map(|t| t.path().join("release")) {
        removed += usize::from(std::fs::remove_file(release.join(name)).is_ok());
        let Ok(deps) = std::fs::read_dir(release.join("deps")) else {
            continue;
        };
        for entry in deps.flatten() {
            let file = entry.file_name();
            let Some(hash) = file
                .to_str()
                .and_then(|f| f.strip_prefix(name))
                .and_then(|f| f.strip_prefix('-'))
            else {
                continue;
            };
            // An executable is `<name>-<16 hex digits>`, no extension (its `.d` file stays).
            if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                removed += usize::from(std::fs::remove_file(entry.path()).is_ok());
            }
        }
    }
    removed
}
