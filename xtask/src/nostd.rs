//! `cargo xtask nostd`: proves that the core builds and links on bare-metal targets
//! without `std`, without `alloc` and without a global allocator.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::cmd::{self, Error, Result};
use crate::elf::Elf32;

/// The bare-metal targets the core must build and link for: a Cortex-M0+ without atomic
/// compare-and-swap, a Cortex-M4F, and a RISC-V microcontroller.
pub const TARGETS: [&str; 3] = [
    "thumbv6m-none-eabi",
    "thumbv7em-none-eabihf",
    "riscv32imc-unknown-none-elf",
];

/// The builds without std, as (package, target, extra features); every build also has
/// `--no-default-features`. The core on every target; the datagram binding's codec and
/// security layer on the smallest one, and its embassy driver on a Cortex-M4; the boards'
/// flash journal and application on a Cortex-M4.
const BUILDS: [(&str, &str, &[&str]); 8] = [
    (CORE, "thumbv6m-none-eabi", &[]),
    (CORE, "thumbv7em-none-eabihf", &[]),
    (CORE, "riscv32imc-unknown-none-elf", &[]),
    // The browser (the interactive model of `web/` builds it with std; this proves the
    // no_std core builds there too).
    (CORE, crate::web::WASM_TARGET, &[]),
    (CORE, "thumbv7em-none-eabihf", &["serde", "defmt"]),
    ("coracle-udp", "thumbv6m-none-eabi", &[]),
    ("coracle-udp", "thumbv7em-none-eabihf", &["embassy"]),
    ("coracle-embedded", "thumbv7em-none-eabihf", &["firmware"]),
];

/// Features whose presence in the dependency graph of a bare-metal build means that
/// something links the standard library or the heap.
const FORBIDDEN_FEATURES: [&str; 2] = ["std", "alloc"];

/// The package under test.
const CORE: &str = "coracle";

/// Where the link-check program lives, relative to the workspace root.
const CHECK_DIR: &str = "xtask/nostd-check";

/// The link-check program's binary name.
const CHECK_BIN: &str = "nostd-check";

/// Runs every check, printing one line each, and fails if any failed (after running the
/// rest, so one run shows every broken target).
pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        return Err(Error::new(format!(
            "`cargo xtask nostd` takes no arguments (got `{arg}`)"
        )));
    }
    ensure_targets(&TARGETS)?;
    ensure_targets(&[crate::web::WASM_TARGET])?;

    let mut checks = Checks::default();
    for (package, target, features) in BUILDS {
        let label = format!(
            "{package} {}: no std/alloc in dependency features",
            flags(features)
        );
        checks.run(target, &label, || tree_check(package, target, features));
    }
    for (package, target, features) in BUILDS {
        let label = format!("{package} {}", flags(features));
        checks.run(target, &label, || build(package, target, features));
    }
    let target_dir = cmd::target_dir()?;
    for target in TARGETS {
        let label = format!("{CHECK_BIN} links {CORE} with no allocator");
        checks.run(target, &label, || {
            let elf = link_check(&target_dir, target)?;
            let footprint = read_elf(&elf)?.footprint();
            Ok(format!(
                "flash {} B, static RAM {} B",
                footprint.flash(),
                footprint.ram()
            ))
        });
    }
    checks.finish()
}

/// The cargo flags of a core build.
fn flags(features: &[&str]) -> String {
    if features.is_empty() {
        "--no-default-features".to_string()
    } else {
        format!("--no-default-features --features {}", features.join(","))
    }
}

/// Counts checks, printing `ok` or `FAIL` with the details of each.
#[derive(Default)]
struct Checks {
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    /// Runs one check. `check` returns a note (possibly empty) whose first line is
    /// printed after the label and whose other lines are printed below.
    fn run<N: Into<String>>(
        &mut self,
        target: &str,
        label: &str,
        check: impl FnOnce() -> Result<N>,
    ) {
        let started = Instant::now();
        let result = check();
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(note) => {
                // The first line of the note goes on the `ok` line, the rest below it.
                let note: String = note.into();
                let (first, rest) = note.split_once('\n').unwrap_or((&note, ""));
                let first = if first.is_empty() {
                    String::new()
                } else {
                    format!(" ({first})")
                };
                println!("ok   {target:<28} {label}{first}  [{secs:.1}s]");
                if !rest.is_empty() {
                    println!("{rest}");
                }
                self.passed += 1;
            }
            Err(err) => {
                println!("FAIL {target:<28} {label}  [{secs:.1}s]");
                println!("{err}");
                self.failed.push(format!("{target}  {label}"));
            }
        }
    }

    fn finish(self) -> Result<()> {
        if self.failed.is_empty() {
            println!("nostd: all {} checks passed", self.passed);
            Ok(())
        } else {
            Err(Error::new(format!(
                "nostd: {} of {} checks failed:\n    {}",
                self.failed.len(),
                self.failed.len() + self.passed,
                self.failed.join("\n    ")
            )))
        }
    }
}

/// Makes sure the standard library for each target is installed, installing it with
/// `rustup target add` when missing (CI machines are fresh).
pub fn ensure_targets(targets: &[&str]) -> Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = cmd::run_captured(Command::new(rustc).args(["--print", "sysroot"]))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let missing: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|target| !target_installed(&sysroot, target))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let how = format!("rustup target add {}", missing.join(" "));
    if !cmd::available("rustup") {
        return Err(Error::new(format!(
            "the standard library for {} is not installed in {} and rustup was not found; \
             install it with `{how}` (or your toolchain's equivalent)",
            missing.join(", "),
            sysroot.display()
        )));
    }
    println!("installing missing targets: {how}");
    cmd::run_inherited(
        Command::new("rustup")
            .args(["target", "add"])
            .args(&missing),
    )
    .map_err(|err| Error::new(format!("{err}\ninstall the targets with `{how}`")))?;
    match missing
        .iter()
        .find(|target| !target_installed(&sysroot, target))
    {
        Some(target) => Err(Error::new(format!(
            "`{how}` succeeded but {target} is still missing from {}",
            sysroot.display()
        ))),
        None => Ok(()),
    }
}

fn target_installed(sysroot: &Path, target: &str) -> bool {
    let lib = sysroot.join("lib/rustlib").join(target).join("lib");
    fs::read_dir(lib).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libcore-") && name.ends_with(".rlib")
        })
    })
}

/// Checks, with `cargo tree`, that no dependency of `package` on `target` (normal edges,
/// proc-macros excluded since they run on the host) has a `std` or `alloc` feature on.
fn tree_check(package: &str, target: &str, features: &[&str]) -> Result<String> {
    let mut command = cmd::cargo();
    command.args(["tree", "--package", package, "--no-default-features"]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    command.args([
        "--edges",
        "normal,features",
        "--target",
        target,
        "--prefix",
        "depth",
        "--color",
        "never",
    ]);
    let output = cmd::run_captured(&mut command)?;
    let tree = String::from_utf8_lossy(&output.stdout);
    let offenders = forbidden_features(&tree);
    if offenders.is_empty() {
        let crates = count_crates(&tree);
        Ok(format!("{crates} crates for the target"))
    } else {
        Err(Error::new(format!(
            "{} dependency feature(s) pull in std or alloc:\n{}\n(command: {})",
            offenders.len(),
            offenders.join("\n"),
            cmd::describe(&command)
        )))
    }
}

/// Parses one line of `cargo tree --prefix depth`: its depth and the rest.
fn split_depth(line: &str) -> Option<(usize, &str)> {
    let digits = line.find(|c: char| !c.is_ascii_digit())?;
    Some((line[..digits].parse().ok()?, &line[digits..]))
}

/// The `std`/`alloc` feature nodes of a `cargo tree --prefix depth -e features` output
/// that are not below a proc-macro, each with the path that leads to it.
fn forbidden_features(tree: &str) -> Vec<String> {
    let mut path: Vec<&str> = Vec::new();
    let mut skip_below: Option<usize> = None;
    let mut offenders = Vec::new();
    for (depth, node) in tree.lines().filter_map(split_depth) {
        if skip_below.is_some_and(|d| depth > d) {
            continue;
        }
        skip_below = None;
        path.truncate(depth);
        path.push(node);
        if node.contains("(proc-macro)") {
            skip_below = Some(depth);
            continue;
        }
        let forbidden = FORBIDDEN_FEATURES.iter().any(|feature| {
            let tail = node.trim_end_matches(" (*)");
            tail.ends_with(&format!(" feature \"{feature}\""))
        });
        if forbidden {
            offenders.push(format!("    {}", path.join("  ->  ")));
        }
    }
    offenders
}

/// How many distinct crates (`name vX.Y.Z` nodes) a `cargo tree --prefix depth` output
/// shows for the target (proc-macros and what they depend on run on the host and are not
/// counted).
fn count_crates(tree: &str) -> usize {
    let mut crates = Vec::new();
    let mut skip_below: Option<usize> = None;
    for (depth, node) in tree.lines().filter_map(split_depth) {
        if skip_below.is_some_and(|d| depth > d) {
            continue;
        }
        skip_below = None;
        if node.contains("(proc-macro)") {
            skip_below = Some(depth);
            continue;
        }
        let mut words = node.split(' ');
        if let (Some(name), Some(version)) = (words.next(), words.next()) {
            if version.starts_with('v') && version[1..].starts_with(|c: char| c.is_ascii_digit()) {
                crates.push(name);
            }
        }
    }
    crates.sort_unstable();
    crates.dedup();
    crates.len()
}

/// Builds the library of `package` for `target`.
fn build(package: &str, target: &str, features: &[&str]) -> Result<String> {
    let mut command = cmd::cargo();
    command.args([
        "build",
        "--package",
        package,
        "--lib",
        "--no-default-features",
        "--target",
        target,
    ]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    command.args(["--color", "never"]);
    let output = cmd::run_captured(&mut command)?;
    Ok(warning_note(&output.stderr))
}

/// "N warning(s)" and the first lines of each when a build printed rustc warnings.
fn warning_note(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut count = 0;
    let mut lines = Vec::new();
    let mut in_warning = false;
    for line in text.lines() {
        if line.starts_with("warning:") {
            in_warning = !line.contains(" generated ");
            if in_warning {
                count += 1;
                lines.push(format!("       {line}"));
            }
        } else if in_warning && line.trim_start().starts_with("-->") {
            lines.push(format!("       {line}"));
            in_warning = false;
        }
    }
    if count == 0 {
        String::new()
    } else {
        format!("{count} warning(s)\n{}", lines.join("\n"))
    }
}

/// The folder of the link-check program.
pub fn check_dir() -> PathBuf {
    cmd::workspace_root().join(CHECK_DIR)
}

/// Builds (in release) and links the link-check program for `target`, in its own target
/// directory under the workspace's, and returns the path of the ELF.
///
/// The program's `Cargo.lock` is seeded from the workspace's, so it links the same
/// versions of every dependency as the rest of the workspace.
pub fn link_check(workspace_target_dir: &Path, target: &str) -> Result<PathBuf> {
    let dir = check_dir();
    let workspace_lock = cmd::workspace_root().join("Cargo.lock");
    if workspace_lock.exists() {
        fs::copy(&workspace_lock, dir.join("Cargo.lock")).map_err(|err| {
            Error::new(format!(
                "could not copy {} into {}: {err}",
                workspace_lock.display(),
                dir.display()
            ))
        })?;
    }
    let target_dir = workspace_target_dir.join("nostd-check");
    let mut command = cmd::cargo();
    command.current_dir(&dir);
    command.args(["build", "--release", "--manifest-path"]);
    command.arg(dir.join("Cargo.toml"));
    command.args(["--target", target, "--target-dir"]);
    command.arg(&target_dir);
    command.args(["--color", "never"]);
    let output = command
        .output()
        .map_err(|err| Error::new(format!("could not run cargo: {err}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("__rust_alloc")
            || stderr.contains("__rust_no_alloc_shim_is_unstable")
            || stderr.contains("global memory allocator")
            || stderr.contains("global_allocator")
        {
            "\nhint: something reachable from the core allocates (it needs a global allocator)"
        } else if stderr.contains("can't find crate for `std`") {
            "\nhint: something reachable from the core links the standard library"
        } else {
            ""
        };
        let err = cmd::failure(&command, &output);
        return Err(Error::new(format!("{err}{hint}")));
    }
    let elf = target_dir.join(target).join("release").join(CHECK_BIN);
    let parsed = read_elf(&elf)?;
    if parsed.entry == 0 {
        return Err(Error::new(format!(
            "{} has no entry point: the linker did not find `_start`, so it may have \
             thrown the whole program away",
            elf.display()
        )));
    }
    if parsed.footprint().text == 0 {
        return Err(Error::new(format!("{} has no code", elf.display())));
    }
    Ok(elf)
}

/// Reads and parses an ELF32 file.
pub fn read_elf(path: &Path) -> Result<Elf32> {
    read_elf_with_bytes(path).map(|(elf, _)| elf)
}

/// Reads and parses an ELF32 file, returning its bytes too.
pub fn read_elf_with_bytes(path: &Path) -> Result<(Elf32, Vec<u8>)> {
    let bytes = fs::read(path)
        .map_err(|err| Error::new(format!("could not read {}: {err}", path.display())))?;
    let elf = Elf32::parse(&bytes).map_err(|err| {
        Error::new(format!(
            "could not parse {} as ELF32: {err}",
            path.display()
        ))
    })?;
    Ok((elf, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TREE: &str = "\
0coracle v0.1.0 (/work/main/core)
1heapless v0.9.3
2serde_core v1.0.229
2defmt feature \"default\"
3defmt v1.2.0
4defmt-macros feature \"default\"
5defmt-macros v1.2.0 (proc-macro)
6defmt-parser feature \"default\"
7defmt-parser v1.1.0
8thiserror feature \"std\"
9thiserror v2.0.21
2hash32 feature \"default\"
3hash32 v0.3.1
4byteorder v1.5.0
1serde feature \"derive\"
2serde v1.0.229
3serde_core feature \"alloc\"
4serde_core v1.0.229 (*)
";

    #[test]
    fn finds_std_and_alloc_features_outside_proc_macros() {
        let offenders = forbidden_features(TREE);
        assert_eq!(offenders.len(), 1, "{offenders:?}");
        assert!(offenders[0].contains("serde feature \"derive\""));
        assert!(offenders[0].ends_with("serde_core feature \"alloc\""));
    }

    #[test]
    fn counts_distinct_crates() {
        // coracle, heapless, serde_core, defmt, hash32, byteorder, serde; not the
        // proc-macro defmt-macros nor its dependencies.
        assert_eq!(count_crates(TREE), 7);
    }

    #[test]
    fn labels_builds_with_their_flags() {
        assert_eq!(flags(&[]), "--no-default-features");
        assert_eq!(
            flags(&["serde", "defmt"]),
            "--no-default-features --features serde,defmt"
        );
    }
}
