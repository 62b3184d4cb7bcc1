//! Links the release `zident` binary with the functions a node agent runs placed first and side
//! by side (`symbol-order.txt`, written by `scripts/symbol-order`).
//!
//! An idle agent's memory is mostly the binary's own code: the kernel maps it 64 KiB around
//! each page touched, and the agent's functions were spread over two thirds of the binary (12
//! MiB resident for 3.6 MiB run). Gathered, the same run touches a few MiB. The order is a hint
//! to the linker: a function the file does not name, or names under an old symbol, is placed as
//! it would be without the file, so a stale file costs memory, never correctness.
//!
//! Only where the linker is LLD, which reads the file: Rust 1.90 and later link
//! x86_64-unknown-linux-gnu with it unless told otherwise. Skipped for debug and test builds, on
//! other targets, with another linker named in `RUSTFLAGS` or `CARGO_TARGET_*_LINKER`, and when
//! `ZIDENT_NO_SYMBOL_ORDER` is set (for a linker configured elsewhere, e.g. in
//! `.cargo/config.toml`).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-changed=build.rs");
    for var in [
        "ZIDENT_NO_SYMBOL_ORDER",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    if let Some(why) = skip_reason() {
        println!("cargo:warning=zident: release link without symbol-order.txt: {why}");
        return;
    }
    let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let file = Path::new(&dir).join("symbol-order.txt");
    if !file.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=zident=-Wl,--symbol-ordering-file={}",
        file.display()
    );
    // Symbols the file names that this build does not have (renamed since it was written).
    println!("cargo:rustc-link-arg-bin=zident=-Wl,--no-warn-symbol-ordering");
}

/// Why the order cannot be passed to this release build, if it cannot; `None` when it links
/// with LLD.
fn skip_reason() -> Option<&'static str> {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("TARGET") != "x86_64-unknown-linux-gnu" {
        return Some("the target's default linker is not LLD");
    }
    if std::env::var_os("ZIDENT_NO_SYMBOL_ORDER").is_some() {
        return Some("ZIDENT_NO_SYMBOL_ORDER is set");
    }
    if std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some() {
        return Some("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER names another linker");
    }
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    if ["linker", "fuse-ld"].iter().any(|f| flags.contains(f)) {
        return Some("RUSTFLAGS choose the linker");
    }
    if !rustc_links_with_lld() {
        return Some("this rustc (before 1.90) links with the system's linker");
    }
    None
}

/// Whether the compiler building us is Rust 1.90 or later, which links this target with its own
/// LLD by default.
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(release) = text.lines().find_map(|l| l.strip_prefix("release: ")) else {
        return false;
    };
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
