//! `cargo xtask web`: builds the interactive model (the `coracle-web` crate for
//! wasm32-unknown-unknown, wasm-bindgen's ES module glue, and the static files of `web/www`)
//! into one folder and serves it on 127.0.0.1. `cargo xtask web-test`: the same page driven
//! by Debian's headless Chromium (`web/tests/page.test.mjs`, on Node with playwright-core).

use std::env;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use crate::cmd::{self, Error, Result};
use crate::nostd;
use crate::serve;

/// The target of the page's module.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The cargo profile of the module (`[profile.wasm]` in the workspace's Cargo.toml).
const PROFILE: &str = "wasm";
/// The port `cargo xtask web` serves on unless told otherwise.
const DEFAULT_PORT: u16 = 8720;
/// The crate of the page.
const CRATE: &str = "coracle-web";
/// The browser the tests drive, unless `CORACLE_CHROMIUM` names another.
const CHROMIUM: &str = "/usr/bin/chromium";

const USAGE: &str = "usage: cargo xtask web [--port N] [--out DIR] [--no-serve]
       cargo xtask web-test [--screenshots DIR]";

/// `cargo xtask web`.
pub fn run(args: &[String]) -> Result<()> {
    let mut port = DEFAULT_PORT;
    let mut out = None;
    let mut serve_it = true;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args
                    .next()
                    .ok_or_else(|| Error::new("--port needs a number"))?;
                port = value.parse().map_err(|_| {
                    Error::new(format!(
                        "--port {value}: give a port number from 0 to 65535"
                    ))
                })?;
            }
            "--out" => {
                out = Some(PathBuf::from(
                    args.next()
                        .ok_or_else(|| Error::new("--out needs a folder"))?,
                ));
            }
            "--no-serve" => serve_it = false,
            other => return Err(Error::new(format!("unknown argument `{other}`\n{USAGE}"))),
        }
    }
    let out = match out {
        Some(out) => out,
        None => cmd::target_dir()?.join("web"),
    };
    build(&out)?;
    if serve_it {
        let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
            Error::new(format!(
                "cannot listen on 127.0.0.1:{port}: {e} (another one with --port N)"
            ))
        })?;
        let port = listener.local_addr().map_or(port, |a| a.port());
        println!(
            "serving {} at http://127.0.0.1:{port}/ (Ctrl-C stops)",
            out.display()
        );
        serve::serve(out, listener);
    }
    Ok(())
}

/// Builds the page into `out` and prints the size of its module.
pub fn build(out: &Path) -> Result<()> {
    nostd::ensure_targets(&[WASM_TARGET])?;
    check_wasm_bindgen()?;
    cmd::run_inherited(cmd::cargo().args([
        "build",
        "--package",
        CRATE,
        "--lib",
        "--target",
        WASM_TARGET,
        "--profile",
        PROFILE,
    ]))?;
    let module = cmd::target_dir()?
        .join(WASM_TARGET)
        .join(PROFILE)
        .join("coracle_web.wasm");
    let pkg = out.join("pkg");
    if pkg.exists() {
        fs::remove_dir_all(&pkg).map_err(|e| io_error(&pkg, &e))?;
    }
    cmd::run_captured(
        Command::new("wasm-bindgen")
            .args([
                "--target",
                "web",
                "--no-typescript",
                "--remove-name-section",
                "--remove-producers-section",
                "--out-dir",
            ])
            .arg(&pkg)
            .arg(&module),
    )?;
    let www = cmd::workspace_root().join("web").join("www");
    for entry in fs::read_dir(&www).map_err(|e| io_error(&www, &e))? {
        let path = entry.map_err(|e| io_error(&www, &e))?.path();
        if path.is_file() {
            let to = out.join(path.file_name().unwrap_or_default());
            fs::copy(&path, &to).map_err(|e| io_error(&to, &e))?;
        }
    }
    let size = |name: &str| fs::metadata(pkg.join(name)).map_or(0, |m| m.len());
    println!(
        "web: {} (module {} B, its JavaScript glue {} B)",
        out.display(),
        size("coracle_web_bg.wasm"),
        size("coracle_web.js")
    );
    Ok(())
}

fn io_error(path: &Path, e: &std::io::Error) -> Error {
    Error::new(format!("{}: {e}", path.display()))
}

/// The version of `package` in Cargo.lock.
fn lock_version(package: &str) -> Result<String> {
    let lock_path = cmd::workspace_root().join("Cargo.lock");
    let lock = fs::read_to_string(&lock_path).map_err(|e| io_error(&lock_path, &e))?;
    version_in_lock(&lock, package)
        .ok_or_else(|| Error::new(format!("{package} is not in Cargo.lock")))
}

fn version_in_lock(lock: &str, package: &str) -> Option<String> {
    let name = format!("name = \"{package}\"");
    let mut lines = lock.lines();
    lines.find(|l| l.trim() == name)?;
    let version = lines.next()?.trim().strip_prefix("version = \"")?;
    Some(version.trim_end_matches('"').to_string())
}

/// The `wasm-bindgen` command must be the version of the crate in Cargo.lock (the glue it
/// writes must match the crate's side).
fn check_wasm_bindgen() -> Result<()> {
    let wanted = lock_version("wasm-bindgen")?;
    let install = format!("cargo install wasm-bindgen-cli --version {wanted}");
    let output = Command::new("wasm-bindgen").arg("--version").output();
    let found = match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => return Err(Error::new(format!("wasm-bindgen not found: `{install}`"))),
    };
    if found.split_whitespace().nth(1) == Some(wanted.as_str()) {
        Ok(())
    } else {
        Err(Error::new(format!(
            "`{found}` does not match the wasm-bindgen crate ({wanted}) in Cargo.lock: `{install}`"
        )))
    }
}

/// What the browser tests need and lacks, each with how to get it.
fn missing_for_browser_tests(chromium: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if !chromium.is_file() {
        missing.push(format!(
            "{} (apt-get install -y chromium, or CORACLE_CHROMIUM=path)",
            chromium.display()
        ));
    }
    if !cmd::available("node") {
        missing.push("node (Node.js 20 or later)".to_string());
    }
    let playwright = cmd::workspace_root().join("web/node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        missing.push("playwright-core (cd web && npm ci)".to_string());
    }
    if let Err(e) = check_wasm_bindgen() {
        missing.push(e.to_string());
    }
    missing
}

/// `cargo xtask web-test`.
pub fn test(args: &[String]) -> Result<()> {
    let mut screenshots = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--screenshots" => {
                screenshots = Some(PathBuf::from(
                    args.next()
                        .ok_or_else(|| Error::new("--screenshots needs a folder"))?,
                ));
            }
            other => return Err(Error::new(format!("unknown argument `{other}`\n{USAGE}"))),
        }
    }
    let required = env::var("CORACLE_BROWSER_REQUIRED").is_ok_and(|v| v == "1");
    let chromium =
        env::var_os("CORACLE_CHROMIUM").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
    let missing = missing_for_browser_tests(&chromium);
    if !missing.is_empty() {
        let message = format!("browser tests SKIPPED: missing {}", missing.join("; "));
        if required {
            return Err(Error::new(format!(
                "{message}, and CORACLE_BROWSER_REQUIRED=1"
            )));
        }
        let bar = "=".repeat(78);
        println!("{bar}\n{message}\n{bar}");
        return Ok(());
    }
    let target_dir = cmd::target_dir()?;
    let out = target_dir.join("web");
    build(&out)?;
    let screenshots = screenshots.unwrap_or_else(|| target_dir.join("web-screenshots"));
    fs::create_dir_all(&screenshots).map_err(|e| io_error(&screenshots, &e))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::new(format!("cannot listen on 127.0.0.1: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::new(format!("cannot listen on 127.0.0.1: {e}")))?;
    thread::spawn(move || serve::serve(out, listener));
    let root = cmd::workspace_root();
    cmd::run_inherited(
        Command::new("node")
            .current_dir(root.join("web"))
            .env("CORACLE_WEB_URL", format!("http://{addr}/"))
            .env("CORACLE_CHROMIUM", &chromium)
            .env("CORACLE_SCREENSHOTS", &screenshots)
            .args(["--test", "--test-reporter=spec", "tests/page.test.mjs"]),
    )?;
    println!("screenshots: {}", screenshots.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_version_from_the_lock() {
        let lock = "[[package]]\nname = \"wasm-bindgen-macro\"\nversion = \"9\"\n\n\
                    [[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.130\"\n";
        assert_eq!(
            version_in_lock(lock, "wasm-bindgen").as_deref(),
            Some("0.2.130")
        );
        assert_eq!(version_in_lock(lock, "serde"), None);
        assert_eq!(version_in_lock("name = \"x\"", "x"), None);
    }

    #[test]
    fn the_lock_names_wasm_bindgen() {
        assert!(lock_version("wasm-bindgen").is_ok());
    }
}
