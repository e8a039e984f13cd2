//! The interactive model in headless Chromium, run by `cargo test --workspace` when the
//! tools are there: `cargo xtask web-test` (the tests are `web/tests/page.test.mjs`).
//!
//! It needs Debian's `chromium`, Node.js, playwright-core (`cd web && npm ci`) and the
//! `wasm-bindgen` command at the version of Cargo.lock. Without them it prints `SKIPPED` and
//! passes, unless `CORACLE_BROWSER_REQUIRED=1` (set by `.ci/run`), which makes a skip a
//! failure. Screenshots go to `target/web-screenshots`.

use coracle_tests::xtask::cargo_xtask;
use std::path::Path;

#[test]
fn the_page_in_headless_chromium() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // The screenshots go to the workspace's target folder, the build to one of its own.
    let screenshots = tmp.parent().map_or_else(
        || tmp.join("web-screenshots"),
        |t| t.join("web-screenshots"),
    );
    let mut args = vec!["web-test".into(), "--screenshots".into()];
    args.push(screenshots.into_os_string());
    let status = cargo_xtask(&tmp.join("web-test"), args);
    assert!(status.success(), "cargo xtask web-test failed: {status}");
}
