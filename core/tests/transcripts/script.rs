//! The transcript format: a file of cases, each a command (and optional input lines), a
//! `----` line, and the output expected, ending at a blank line. Lines starting with `#`
//! and blank lines between cases are kept as they are: they narrate.
//!
//! ```text
//! # Node 1 campaigns.
//! campaign 1
//! ----
//! 1 state PreCandidate term=0 leader=none
//! 1->2 PreVote term=1 last=0@0
//! ```
//!
//! [`run`] executes every case and compares its output with the expected text; it also
//! returns the file with every expected output replaced by the actual one (what blessing
//! writes).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A command and what it should print.
#[derive(Clone, Debug)]
struct Case {
    /// 1-based line of the command.
    line: usize,
    /// The command line and its input lines.
    input: Vec<String>,
    expected: Vec<String>,
}

#[derive(Clone, Debug)]
enum Item {
    /// A comment or blank line between cases.
    Text(String),
    Case(Case),
}

fn parse(text: &str) -> Result<Vec<Item>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut items = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() || line.starts_with('#') {
            items.push(Item::Text(line.to_string()));
            i += 1;
            continue;
        }
        let start = i;
        let mut input = Vec::new();
        while i < lines.len() && lines[i] != "----" {
            if lines[i].trim().is_empty() {
                return Err(format!("line {}: a command without ----", start + 1));
            }
            input.push(lines[i].to_string());
            i += 1;
        }
        if i == lines.len() {
            return Err(format!("line {}: a command without ----", start + 1));
        }
        i += 1;
        let mut expected = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() {
            expected.push(lines[i].to_string());
            i += 1;
        }
        items.push(Item::Case(Case {
            line: start + 1,
            input,
            expected,
        }));
    }
    Ok(items)
}

/// A case whose output differs from the expected one.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// Where the command is: `file:line`.
    pub location: String,
    /// The command line.
    pub command: String,
    /// The difference, expected lines marked `-`, actual ones `+`.
    pub diff: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.location, self.command)?;
        f.write_str(&self.diff)
    }
}

/// What running a transcript gave.
#[derive(Debug)]
pub struct Outcome {
    /// The file with the actual outputs in place of the expected ones.
    pub rewritten: String,
    pub mismatches: Vec<Mismatch>,
}

/// Runs every case of the transcript `text` (named `name` in reports) through `exec`,
/// which gets the case's lines and returns its output (an error is a mistake in the
/// script, not an output: it stops the run). A panic in a case is reported with the
/// case's location.
pub fn run(
    name: &str,
    text: &str,
    mut exec: impl FnMut(&[String]) -> Result<String, String>,
) -> Result<Outcome, String> {
    let items = parse(text).map_err(|e| format!("{name}: {e}"))?;
    let mut rewritten = String::new();
    let mut mismatches = Vec::new();
    for item in items {
        match item {
            Item::Text(t) => {
                rewritten.push_str(&t);
                rewritten.push('\n');
            }
            Item::Case(case) => {
                let location = format!("{name}:{}", case.line);
                let actual = match catch_unwind(AssertUnwindSafe(|| exec(&case.input))) {
                    Ok(Ok(out)) => out,
                    Ok(Err(e)) => return Err(format!("{location}: {e}")),
                    Err(panic) => {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        return Err(format!("{location}: `{}` panicked: {why}", case.input[0]));
                    }
                };
                let actual = if actual.trim().is_empty() {
                    "ok".to_string()
                } else {
                    actual.trim_end().to_string()
                };
                if actual.lines().any(|l| l.trim().is_empty()) {
                    return Err(format!("{location}: output with a blank line"));
                }
                let expected = case.expected.join("\n");
                if let Some(diff) = compare(&expected, &actual) {
                    mismatches.push(Mismatch {
                        location,
                        command: case.input[0].clone(),
                        diff,
                    });
                }
                for line in &case.input {
                    rewritten.push_str(line);
                    rewritten.push('\n');
                }
                rewritten.push_str("----\n");
                rewritten.push_str(&actual);
                rewritten.push('\n');
            }
        }
    }
    Ok(Outcome {
        rewritten,
        mismatches,
    })
}

/// `None` if the outputs are the same, else a line diff of them.
pub fn compare(expected: &str, actual: &str) -> Option<String> {
    (expected != actual).then(|| diff(expected, actual))
}

/// A line diff, `-` for expected lines missing from the actual output and `+` for actual
/// lines not expected, with three lines of context around each change.
pub fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // Longest common subsequence, from the ends.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    const CONTEXT: usize = 3;
    let near_change = |k: usize| {
        let lo = k.saturating_sub(CONTEXT);
        let hi = (k + CONTEXT).min(ops.len() - 1);
        ops[lo..=hi].iter().any(|(op, _)| *op != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if near_change(k) {
            if skipped {
                out.push_str("  ...\n");
                skipped = false;
            }
            out.push_str(&format!("{op} {line}\n"));
        } else {
            skipped = true;
        }
    }
    if skipped {
        out.push_str("  ...\n");
    }
    out
}
