//! Transcript tests: scripts of commands (`campaign`, `propose`, `deliver`, `tick`,
//! `partition`, `crash`, `restart`...) whose output, every message and state change in a
//! canonical text form, is checked against the text written after each command (the style
//! of etcd-raft's datadriven interaction tests). The scripts are in `testdata/`; the
//! commands and the text form are described in `env.rs` and `host/text.rs`.
//!
//! `CORACLE_BLESS=1 cargo test -p coracle --test transcripts` rewrites the expected text
//! with what the nodes do now: read the diff before committing it.
#![allow(clippy::unwrap_used)]

#[path = "../host/mod.rs"]
mod host;

mod env;
mod script;

use std::path::PathBuf;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts/testdata")
}

fn bless() -> bool {
    std::env::var_os("CORACLE_BLESS").is_some_and(|v| v != "0")
}

/// Runs the transcript `name` and fails with a diff of every case whose output differs
/// (or rewrites the file when blessing).
fn check(name: &str) {
    let path = testdata().join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut env = env::Env::new();
    let shown = format!("core/tests/transcripts/testdata/{name}.txt");
    let outcome =
        script::run(&shown, &text, |input| env.exec(input)).unwrap_or_else(|e| panic!("{e}"));
    if bless() {
        if outcome.rewritten != text {
            std::fs::write(&path, &outcome.rewritten).unwrap();
            eprintln!("blessed {shown}");
        }
        return;
    }
    if !outcome.mismatches.is_empty() {
        let report: Vec<String> = outcome.mismatches.iter().map(|m| m.to_string()).collect();
        panic!(
            "{} case(s) of {shown} differ (expected -, actual +):\n\n{}\n\
             If the new output is right, rewrite the file with CORACLE_BLESS=1 and read the diff.",
            report.len(),
            report.join("\n")
        );
    }
}

macro_rules! transcripts {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*
        const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

transcripts!(
    basics,
    durability,
    fetch,
    figure7,
    figure8,
    membership_joint,
    membership_learners,
    membership_log,
    membership_refusals,
    membership_removal,
    snapshot_install,
    snapshot_taking,
    snapshot_chunks,
);

#[test]
fn every_transcript_has_a_test() {
    let mut files: Vec<String> = std::fs::read_dir(testdata())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".txt").map(str::to_string)
        })
        .collect();
    files.sort();
    let mut names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    names.sort();
    assert_eq!(
        files, names,
        "list every file of testdata/ in transcripts!()"
    );
}

/// The runner can fail: a transcript whose expectation is wrong is reported, at the
/// command's line, with a diff; blessing would write what the nodes really did, and that
/// passes.
#[test]
fn a_wrong_expectation_is_reported_with_a_diff() {
    let wrong = "add-nodes 3\n----\nok\n\n# A node campaigns with a pre-vote first.\n\
                 campaign 1\n----\n1 state Candidate term=1 leader=none\n\
                 1->2 PreVote term=1 last=0@0\n1->3 PreVote term=1 last=0@0\n";
    let mut env = env::Env::new();
    let outcome = script::run("wrong.txt", wrong, |i| env.exec(i)).unwrap();
    assert_eq!(outcome.mismatches.len(), 1, "{:?}", outcome.mismatches);
    let m = &outcome.mismatches[0];
    assert_eq!(
        (m.location.as_str(), m.command.as_str()),
        ("wrong.txt:6", "campaign 1")
    );
    assert_eq!(
        m.diff,
        "- 1 state Candidate term=1 leader=none\n\
         + 1 state PreCandidate term=0 leader=none\n\
         \x20 1->2 PreVote term=1 last=0@0\n\
         \x20 1->3 PreVote term=1 last=0@0\n"
    );
    assert!(
        outcome.rewritten.contains("# A node campaigns"),
        "comments are kept"
    );

    let mut env = env::Env::new();
    let blessed = script::run("blessed.txt", &outcome.rewritten, |i| env.exec(i)).unwrap();
    assert!(blessed.mismatches.is_empty(), "{:?}", blessed.mismatches);
    assert_eq!(blessed.rewritten, outcome.rewritten);
}

#[test]
fn compare_shows_missing_and_extra_lines_with_context() {
    assert_eq!(script::compare("a\nb", "a\nb"), None);
    let expected = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10";
    let actual = "1\n2\n3\n4\n5\n6\n7\n8\nnine\n10\n11";
    assert_eq!(
        script::compare(expected, actual).unwrap(),
        "  ...\n  6\n  7\n  8\n- 9\n+ nine\n  10\n+ 11\n"
    );
    assert_eq!(script::compare("a", "").unwrap(), "- a\n");
}

#[test]
fn script_mistakes_are_errors_with_their_line_not_outputs() {
    for (script, error) in [
        (
            "add-nodes 3\n----\n\nfly 1\n----\n",
            "x.txt:4: unknown command fly",
        ),
        (
            "add-nodes 3\n----\n\ncampaign 9\n----\n",
            "x.txt:4: node 9 is down",
        ),
        ("campaign 1\n", "x.txt: line 1: a command without ----"),
    ] {
        let mut env = env::Env::new();
        let e = script::run("x.txt", script, |i| env.exec(i)).unwrap_err();
        assert_eq!(e, error);
    }
}

/// Every message the transcripts print reads back as the same message, so a reader can
/// inject any of them.
#[test]
fn every_message_printed_reads_back() {
    let mut seen = 0;
    for entry in std::fs::read_dir(testdata()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let line = line.trim_start().trim_start_matches("> ");
            let line = line.split(" -- dropped").next().unwrap();
            let Some((link, message)) = line.split_once(' ') else {
                continue;
            };
            let is_link = link
                .split_once("->")
                .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
            if !is_link {
                continue;
            }
            let parsed =
                host::text::parse_message(message).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(host::text::message(&parsed.as_message()), message);
            seen += 1;
        }
    }
    assert!(seen > 0);
}
