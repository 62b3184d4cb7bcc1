//! Every file of every fuzz target's corpus (`fuzz/corpus/<target>/`: the seeds from the
//! tests' fixtures, and each input that ever crashed a target, kept as a regression) goes
//! through its target: none may panic.

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut ran = 0;
    for (name, target) in zident_fuzzing::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: every target has a corpus: {e}", dir.display()));
        let mut files = 0;
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).unwrap();
            target(&bytes);
            files += 1;
        }
        assert!(files > 0, "{name}: the corpus has seeds");
        ran += files;
    }
    assert!(ran >= zident_fuzzing::TARGETS.len());
}
