//! The interactive model in headless Chromium, run by `cargo test --workspace` when the
//! tools are there: `cargo xtask web-test` (the tests are `web/tests/page.test.mjs`).
//!
//! It needs Debian's `chromium`, Node.js, playwright-core (`cd web && npm ci`) and the
//! `wasm-bindgen` command at the version of Cargo.lock. Without them it prints `SKIPPED` and
//! passes, unless `CORACLE_BROWSER_REQUIRED=1` (set by `.ci/run`), which makes a skip a
//! failure. Screenshots go to `target/web-screenshots`.

use std::path::Path;
use std::process::Command;

#[test]
fn the_page_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("web/ is in the workspace");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // A target folder of its own: the outer `cargo test` may hold the lock of the
    // workspace's. The screenshots go to the workspace's target folder all the same.
    let target = tmp.join("web-test");
    let screenshots = tmp.parent().map_or_else(
        || tmp.join("web-screenshots"),
        |t| t.join("web-screenshots"),
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "run",
            "--quiet",
            "-p",
            "xtask",
            "--",
            "web-test",
            "--screenshots",
        ])
        .arg(&screenshots)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo xtask web-test failed: {status}");
}
