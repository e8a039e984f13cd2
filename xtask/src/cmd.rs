//! Running tools, finding the workspace, and reporting failures loudly.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Why an xtask command failed: a message that says what went wrong, and, when a tool
/// failed, the command line and everything it printed.
#[derive(Debug)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The result of an xtask step.
pub type Result<T> = std::result::Result<T, Error>;

/// The root of the Coracle workspace (the parent of the `xtask/` folder).
pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir
        .parent()
        .map_or_else(|| xtask_dir.to_path_buf(), Path::to_path_buf)
}

/// A `cargo` command run from the workspace root, with the same cargo that runs the
/// xtask (`$CARGO`, set by `cargo run`), falling back to `cargo` on the `PATH`.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(program);
    command.current_dir(workspace_root());
    command
}

/// The command line of `command`, as a user could paste it in a shell (environment
/// overrides and the working directory included).
pub fn describe(command: &Command) -> String {
    let mut line = String::new();
    if let Some(dir) = command.get_current_dir() {
        line.push_str(&format!("(cd {} && ", quote(dir.as_os_str())));
    }
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            line.push_str(&format!("{}={} ", key.to_string_lossy(), quote(value)));
        }
    }
    line.push_str(&quote(command.get_program()));
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    if command.get_current_dir().is_some() {
        line.push(')');
    }
    line
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `command` to completion with its output captured. A command that cannot start
/// or exits unsuccessfully is an error holding the command line, its exit status, and
/// its stderr and stdout.
pub fn run_captured(command: &mut Command) -> Result<Output> {
    let output = command.output().map_err(|err| spawn_error(command, &err))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(failure(command, &output))
    }
}

/// Runs `command` with its output going straight to the terminal; an unsuccessful exit
/// is an error holding the command line.
pub fn run_inherited(command: &mut Command) -> Result<()> {
    let status = command.status().map_err(|err| spawn_error(command, &err))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "command failed ({status}):\n    {}",
            describe(command)
        )))
    }
}

fn spawn_error(command: &Command, err: &io::Error) -> Error {
    Error::new(format!(
        "could not run `{}`: {err}\n    {}",
        command.get_program().to_string_lossy(),
        describe(command)
    ))
}

/// The error for a command that ran and failed: its command line, exit status, and
/// everything it printed.
pub fn failure(command: &Command, output: &Output) -> Error {
    let mut message = format!(
        "command failed ({}):\n    {}",
        output.status,
        describe(command)
    );
    for (name, bytes) in [("stderr", &output.stderr), ("stdout", &output.stdout)] {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        if !text.is_empty() {
            message.push_str(&format!("\n--- {name} ---\n{text}"));
        }
    }
    message.push_str("\n--- end ---");
    Error::new(message)
}

/// The directory cargo builds into for this workspace (`cargo metadata`'s
/// `target_directory`, which honours `CARGO_TARGET_DIR` and `build.target-dir`).
pub fn target_dir() -> Result<PathBuf> {
    let output = run_captured(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let json = String::from_utf8_lossy(&output.stdout);
    json_string_field(&json, "target_directory")
        .map(PathBuf::from)
        .ok_or_else(|| Error::new("`cargo metadata` printed no \"target_directory\""))
}

/// The value of the first string field `key` in a JSON text (just enough JSON for
/// `cargo metadata`: `\"`, `\\`, `\/` and `\uXXXX` escapes).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":");
    let start = json.find(&needle)? + needle.len();
    let rest = json[start..].trim_start().strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = rest.chars();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                'b' => value.push('\u{8}'),
                'f' => value.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
}

/// Whether a program can be started at all (for optional tools such as `rustup`).
pub fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_json_string_field_with_escapes() {
        let json = r#"{"packages":[],"target_directory":"/a \"b\"\\c\/d\u00e9","version":1}"#;
        assert_eq!(
            json_string_field(json, "target_directory").as_deref(),
            Some("/a \"b\"\\c/d\u{e9}")
        );
        assert_eq!(json_string_field(json, "missing"), None);
    }

    #[test]
    fn describes_a_command_so_it_can_be_pasted() {
        let mut command = Command::new("cargo");
        command.args(["build", "--features", "serde,defmt", "a b"]);
        command.env("RUSTFLAGS", "-C x");
        assert_eq!(
            describe(&command),
            "RUSTFLAGS='-C x' cargo build --features serde,defmt 'a b'"
        );
    }
}
