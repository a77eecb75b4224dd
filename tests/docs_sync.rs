//! The docs/ pages that copy README.md sections (admin, credentials, clients,
//! robustness, operations) match the README: `scripts/sync-docs.py --check`, the
//! script that regenerates them, finds nothing out of date.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn docs_copies_match_the_readme() {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(python)
        .args([&format!("{root}/scripts/sync-docs.py"), "--check"])
        .output()
        .expect("run python3 scripts/sync-docs.py --check");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
