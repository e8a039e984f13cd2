//! Saved client histories (`tests/histories/*.txt`, written by `sim --save-history`) that
//! the linearizability checker once could not decide: each must get the verdict its
//! `# expect:` line states, within the simulator's search budget. Add a file here for
//! every history the checker leaves undecided (`sim` reports such seeds as failures).

use coracle_tests::linearizability::{check, Budget, CheckResult, History};
use coracle_tests::sim::SimOptions;
use std::path::{Path, PathBuf};

fn saved_histories() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("histories");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn saved_histories_get_their_expected_verdict() {
    let budget = Budget::steps(SimOptions::default().linearizability_budget);
    let paths = saved_histories();
    assert!(paths.len() >= 5, "histories missing: {paths:?}");
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("readable");
        let expected = text
            .lines()
            .find_map(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", path.display()));
        let history: History = text
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            history.to_string().parse::<History>().as_ref(),
            Ok(&history),
            "{}: the text form reads back",
            path.display()
        );
        let result = check(&history, budget);
        let verdict = match result {
            CheckResult::Linearizable => "linearizable",
            CheckResult::NotLinearizable(_) => "not linearizable",
            CheckResult::Unknown { .. } => "undecided",
        };
        assert_eq!(verdict, expected, "{}: {result}", path.display());
    }
}
