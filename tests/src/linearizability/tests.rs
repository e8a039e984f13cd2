//! Hand-written and randomized tests of the checker.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::*;

fn put(key: Key, value: Value) -> Op {
    Op::Put { key, value }
}

fn get(key: Key) -> Op {
    Op::Get { key }
}

fn delete(key: Key) -> Op {
    Op::Delete { key }
}

fn cas(key: Key, expected: Option<Value>, new: Option<Value>) -> Op {
    Op::CompareAndSet { key, expected, new }
}

/// Records an operation that completed.
fn done(h: &mut History, client: ClientId, span: (Time, Time), op: Op, output: Output) -> OpId {
    let id = h.invoke(client, span.0, op);
    h.complete(id, span.1, output).unwrap();
    id
}

/// Records an operation whose client timed out.
fn timed_out(h: &mut History, client: ClientId, invoked: Time, op: Op) -> OpId {
    let id = h.invoke(client, invoked, op);
    h.timeout(id).unwrap();
    id
}

const OK: Output = Output::Done;

fn read(value: Option<Value>) -> Output {
    Output::Read(value)
}

#[track_caller]
fn assert_linearizable(h: &History) {
    let result = check(h, Budget::default());
    assert!(result.is_linearizable(), "{result}");
}

#[track_caller]
fn assert_not_linearizable(h: &History) -> Report {
    match check(h, Budget::default()) {
        CheckResult::NotLinearizable(report) => report,
        other => panic!("expected not linearizable, got {other}"),
    }
}

// ---------------------------------------------------------------- the history builder

#[test]
fn linearizability_history_records_operations() {
    let mut h = History::new();
    assert!(h.is_empty());
    let a = h.invoke(3, 10, get(1));
    let b = h.invoke(4, 11, put(1, 2));
    assert_eq!(h.len(), 2);
    assert_eq!(h.get(a).unwrap().outcome, Outcome::Pending);
    h.complete(a, 25, read(Some(7))).unwrap();
    h.timeout(b).unwrap();
    assert_eq!(h.operations()[a.index()].completed(), Some(25));
    assert_eq!(h.operations()[b.index()].outcome, Outcome::Indeterminate);
    assert_eq!(h.operations()[b.index()].output(), None);
}

#[test]
fn linearizability_history_rejects_mistakes() {
    let mut h = History::new();
    let a = h.invoke(1, 10, get(1));
    assert_eq!(
        h.complete(a, 9, read(None)),
        Err(HistoryError::CompletedBeforeInvoked {
            id: a,
            invoked: 10,
            completed: 9
        })
    );
    assert_eq!(
        h.complete(a, 12, OK),
        Err(HistoryError::OutputMismatch {
            id: a,
            op: get(1),
            output: OK
        })
    );
    h.complete(a, 12, read(None)).unwrap();
    assert_eq!(
        h.complete(a, 13, read(None)),
        Err(HistoryError::AlreadyEnded(a))
    );
    assert_eq!(h.timeout(a), Err(HistoryError::AlreadyEnded(a)));
    let bogus = History::new().invoke(1, 1, get(1));
    let mut empty = History::new();
    assert_eq!(empty.timeout(bogus), Err(HistoryError::UnknownOp(bogus)));
    assert_eq!(
        HistoryError::AlreadyEnded(a).to_string(),
        "operation #0 was already completed or timed out"
    );
}

#[test]
fn linearizability_operations_display_readably() {
    let mut h = History::new();
    let a = done(&mut h, 3, (10, 25), get(1), read(Some(7)));
    let b = done(&mut h, 1, (0, 5), put(2, 9), OK);
    let c = timed_out(&mut h, 2, 4, cas(1, None, Some(3)));
    let d = h.invoke(5, 30, delete(4));
    let e = done(&mut h, 6, (1, 2), cas(1, Some(1), None), Output::Cas(false));
    let shown = |id: OpId| h.get(id).unwrap().to_string();
    assert_eq!(shown(a), "client 3 [t=10..t=25] get(k=1) -> Some(7)");
    assert_eq!(shown(b), "client 1 [t=0..t=5] put(k=2, v=9) -> ok");
    assert_eq!(
        shown(c),
        "client 2 [t=4..t=inf] cas(k=1, expected=None, new=Some(3)) -> indeterminate"
    );
    assert_eq!(shown(d), "client 5 [t=30..t=inf] delete(k=4) -> pending");
    assert_eq!(
        shown(e),
        "client 6 [t=1..t=2] cas(k=1, expected=Some(1), new=None) -> false"
    );
}

// ---------------------------------------------------------------- the text form

#[test]
fn linearizability_histories_read_back_from_their_text() {
    let mut h = History::new();
    done(&mut h, 3, (10, 25), get(1), read(Some(7)));
    done(&mut h, 1, (0, 5), put(2, 9), OK);
    timed_out(&mut h, 2, 4, cas(1, None, Some(3)));
    h.invoke(5, 30, delete(4));
    done(&mut h, 6, (1, 2), cas(1, Some(1), None), Output::Cas(false));
    done(&mut h, 6, (3, 3), get(1), read(None));
    let text = h.to_string();
    assert_eq!(text.lines().count(), 6);
    assert_eq!(text.parse::<History>(), Ok(h));
    // Comments and blank lines are skipped; ids follow the lines.
    let h: History = "# saved\n\n  client 1 [t=0..t=1] put(k=1, v=2) -> ok  \n"
        .parse()
        .unwrap();
    assert_eq!(h.len(), 1);
    for seed in 0..20 {
        let h = concurrent_history(seed, &SMALL);
        assert_eq!(h.to_string().parse::<History>(), Ok(h), "seed {seed}");
    }
}

#[test]
fn linearizability_bad_history_text_is_refused_with_its_line() {
    let refused = |text: &str| text.parse::<History>().unwrap_err();
    let e =
        refused("client 1 [t=0..t=1] put(k=1, v=2) -> ok\nclient 2 [t=5..t=3] get(k=1) -> None");
    assert_eq!(e.line, 2);
    assert!(
        e.to_string()
            .starts_with("line 2: operation #1 completed at t=3"),
        "{e}"
    );
    for (text, wanted) in [
        (
            "client x [t=0..t=1] get(k=1) -> None",
            "client id `x` is not a number",
        ),
        ("client 1 [t=0..t=1] get(k=1) -> ok", "cannot answer"),
        (
            "client 1 [t=0..t=1] get(k=1) -> Some(x)",
            "`Some(x)` is not an output",
        ),
        (
            "client 1 [t=0..t=1] frob(k=1) -> ok",
            "unknown operation `frob`",
        ),
        (
            "client 1 [t=0..t=1] put(k=1) -> ok",
            "put takes 2 argument(s)",
        ),
        (
            "client 1 [t=0..t=1] get(k=1, v=2) -> None",
            "get takes 1 argument(s)",
        ),
        (
            "client 1 [t=0..t=1] cas(k=1, new=None, expected=None) -> true",
            "`expected=...`",
        ),
        (
            "client 1 [t=0..t=inf] get(k=1) -> None",
            "`pending` or `indeterminate`",
        ),
        (
            "client 1 [t=0..t=4] put(k=1, v=2) -> indeterminate",
            "write `t=inf`",
        ),
        (
            "client 1 [t=0..t=1] get(k=1 -> None",
            "no closing parenthesis",
        ),
        ("put(k=1, v=2)", "does not start with `client `"),
        (
            "client 1 [t=99999999999999999999..t=inf] get(k=1) -> pending",
            "not a number",
        ),
    ] {
        let e = refused(text);
        assert_eq!(e.line, 1, "{text}");
        assert!(e.reason.contains(wanted), "{text}: {e}");
    }
    // Every cut of every line is read or refused, never a panic.
    let text = concurrent_history(1, &SMALL).to_string();
    for line in text.lines().take(50) {
        for cut in 0..line.len() {
            let _ = line[..cut].parse::<History>();
        }
    }
}

// ---------------------------------------------------------------- linearizable histories

#[test]
fn linearizability_empty_history() {
    assert_linearizable(&History::new());
}

#[test]
fn linearizability_sequential_history() {
    let mut h = History::new();
    done(&mut h, 1, (0, 1), get(1), read(None));
    done(&mut h, 1, (2, 3), put(1, 5), OK);
    done(&mut h, 2, (4, 5), get(1), read(Some(5)));
    done(
        &mut h,
        2,
        (6, 7),
        cas(1, Some(5), Some(6)),
        Output::Cas(true),
    );
    done(
        &mut h,
        1,
        (8, 9),
        cas(1, Some(5), Some(7)),
        Output::Cas(false),
    );
    done(&mut h, 1, (10, 11), get(1), read(Some(6)));
    done(&mut h, 3, (12, 13), delete(1), OK);
    done(&mut h, 3, (14, 15), get(1), read(None));
    done(
        &mut h,
        3,
        (16, 17),
        cas(1, None, Some(1)),
        Output::Cas(true),
    );
    done(
        &mut h,
        3,
        (18, 19),
        cas(1, Some(1), None),
        Output::Cas(true),
    );
    done(
        &mut h,
        3,
        (20, 21),
        cas(1, Some(1), None),
        Output::Cas(false),
    );
    done(&mut h, 2, (22, 23), get(1), read(None));
    assert_linearizable(&h);
}

#[test]
fn linearizability_sequential_history_with_a_wrong_cas() {
    let mut h = History::new();
    done(&mut h, 1, (0, 1), put(1, 5), OK);
    done(
        &mut h,
        2,
        (2, 3),
        cas(1, Some(5), Some(6)),
        Output::Cas(false),
    );
    let report = assert_not_linearizable(&h);
    assert_eq!(report.prefix.len(), 1);
    assert_eq!(
        report.candidates[0].verdict,
        Verdict::WrongOutput {
            model: Output::Cas(true)
        }
    );
}

#[test]
fn linearizability_concurrent_linearizable_histories() {
    // A write overlapping reads that see the old and the new value.
    let mut h = History::new();
    done(&mut h, 1, (0, 10), put(1, 1), OK);
    done(&mut h, 2, (1, 4), get(1), read(None));
    done(&mut h, 3, (2, 9), get(1), read(None));
    done(&mut h, 4, (5, 8), get(1), read(Some(1)));
    assert_linearizable(&h);

    // Two overlapping writes: the order is the reads' choice, as long as they agree.
    let mut h = History::new();
    done(&mut h, 1, (0, 10), put(1, 1), OK);
    done(&mut h, 2, (0, 10), put(1, 2), OK);
    done(&mut h, 3, (11, 12), get(1), read(Some(1)));
    done(&mut h, 4, (13, 14), get(1), read(Some(1)));
    assert_linearizable(&h);

    // Reads taking effect out of invocation order; a read overlapping both writes sees 2.
    let mut h = History::new();
    done(&mut h, 1, (0, 3), put(1, 1), OK);
    done(&mut h, 2, (1, 20), get(1), read(Some(2)));
    done(&mut h, 3, (4, 6), get(1), read(Some(1)));
    done(&mut h, 1, (7, 9), put(1, 2), OK);
    done(
        &mut h,
        3,
        (8, 12),
        cas(1, Some(2), Some(3)),
        Output::Cas(true),
    );
    done(&mut h, 4, (10, 15), get(1), read(Some(3)));
    assert_linearizable(&h);

    // Touching intervals (completion time == invocation time) count as concurrent.
    let mut h = History::new();
    done(&mut h, 1, (0, 5), get(1), read(Some(1)));
    done(&mut h, 2, (5, 6), put(1, 1), OK);
    assert_linearizable(&h);
}

#[test]
fn linearizability_concurrent_cas_one_winner() {
    let mut h = History::new();
    done(&mut h, 1, (0, 1), put(1, 0), OK);
    done(
        &mut h,
        2,
        (2, 10),
        cas(1, Some(0), Some(1)),
        Output::Cas(true),
    );
    done(
        &mut h,
        3,
        (3, 11),
        cas(1, Some(0), Some(2)),
        Output::Cas(false),
    );
    done(&mut h, 4, (12, 13), get(1), read(Some(1)));
    assert_linearizable(&h);
}

// ---------------------------------------------------------------- violations

#[test]
fn linearizability_stale_read() {
    let mut h = History::new();
    done(&mut h, 1, (0, 5), put(1, 1), OK);
    done(&mut h, 1, (6, 10), put(1, 2), OK);
    let stale = done(&mut h, 2, (11, 12), get(1), read(Some(1)));
    let report = assert_not_linearizable(&h);
    assert_eq!(report.key, 1);
    assert_eq!(report.prefix.len(), 2);
    assert_eq!(report.value_after_prefix, Some(2));
    assert_eq!(report.blocked.id, stale);
    assert_eq!(report.deadline, 12);
    assert_eq!(
        report.candidates,
        vec![Candidate {
            operation: *h.get(stale).unwrap(),
            verdict: Verdict::WrongOutput {
                model: read(Some(2))
            },
        }]
    );
    assert_eq!(
        report.to_string(),
        "key 1: no linearization of its operations up to t=12
  longest linearizable prefix (2 ops; then key 1 = Some(2)):
    client 1 [t=0..t=5] put(k=1, v=1) -> ok
    client 1 [t=6..t=10] put(k=1, v=2) -> ok
  then none of these can come next, yet `client 2 [t=11..t=12] get(k=1) -> Some(1)` must take effect by t=12:
    client 2 [t=11..t=12] get(k=1) -> Some(1)  [model gives Some(2)]"
    );
}

#[test]
fn linearizability_stale_read_of_absent_key() {
    let mut h = History::new();
    done(&mut h, 1, (0, 5), put(1, 1), OK);
    done(&mut h, 2, (6, 7), get(1), read(None));
    let report = assert_not_linearizable(&h);
    assert_eq!(report.prefix.len(), 1);
}

#[test]
fn linearizability_reads_disagree_on_write_order() {
    let mut h = History::new();
    done(&mut h, 1, (0, 10), put(1, 1), OK);
    done(&mut h, 2, (0, 10), put(1, 2), OK);
    done(&mut h, 3, (11, 12), get(1), read(Some(1)));
    done(&mut h, 4, (13, 14), get(1), read(Some(2)));
    let report = assert_not_linearizable(&h);
    assert_eq!(report.deadline, 14);
    assert_eq!(report.value_after_prefix, Some(1));
}

#[test]
fn linearizability_lost_update() {
    let mut h = History::new();
    done(&mut h, 1, (0, 1), put(1, 0), OK);
    let a = done(
        &mut h,
        2,
        (2, 10),
        cas(1, Some(0), Some(1)),
        Output::Cas(true),
    );
    let b = done(
        &mut h,
        3,
        (3, 11),
        cas(1, Some(0), Some(2)),
        Output::Cas(true),
    );
    let report = assert_not_linearizable(&h);
    assert_eq!(report.key, 1);
    // The search gets furthest with `a` first; then `b` must fail, but claims success.
    assert_eq!(report.deadline, 11);
    assert_eq!(report.blocked.id, b);
    assert_eq!(report.prefix.last().map(|o| o.id), Some(a));
    assert_eq!(
        report.candidates,
        vec![Candidate {
            operation: *h.get(b).unwrap(),
            verdict: Verdict::WrongOutput {
                model: Output::Cas(false)
            },
        }]
    );
}

#[test]
fn linearizability_read_of_a_value_never_written() {
    let mut h = History::new();
    done(&mut h, 1, (0, 5), put(1, 1), OK);
    done(&mut h, 2, (1, 6), get(1), read(Some(9)));
    let report = assert_not_linearizable(&h);
    // The search gets furthest with the write placed first; then the read cannot follow.
    assert_eq!(report.prefix.len(), 1);
    assert_eq!(report.deadline, 6);

    let mut h = History::new();
    done(&mut h, 2, (1, 6), get(1), read(Some(9)));
    let report = assert_not_linearizable(&h);
    assert!(report.prefix.is_empty());
    assert!(report
        .to_string()
        .contains("longest linearizable prefix: empty (key 1 = None)"));
}

#[test]
fn linearizability_only_the_bad_key_is_reported() {
    let mut h = History::new();
    for key in 0..5 {
        done(&mut h, key, (10 * key, 10 * key + 5), put(key, key), OK);
        done(
            &mut h,
            key + 10,
            (10 * key + 1, 10 * key + 3),
            get(key),
            read(None),
        );
    }
    // Key 3: a read after the write completed misses it.
    done(&mut h, 7, (100, 101), get(3), read(None));
    for key in 0..5 {
        if key != 3 {
            done(&mut h, 8, (102 + key, 103 + key), get(key), read(Some(key)));
        }
    }
    let report = assert_not_linearizable(&h);
    assert_eq!(report.key, 3);
    assert!(report.to_string().starts_with("key 3: "));
    let result = check(&h, Budget::default());
    assert!(
        result.to_string().starts_with("not linearizable: key 3: "),
        "{result}"
    );
}

// ---------------------------------------------------------------- indeterminate operations

#[test]
fn linearizability_indeterminate_write_observed_later() {
    let mut h = History::new();
    timed_out(&mut h, 1, 0, put(1, 5));
    done(&mut h, 2, (10, 11), get(1), read(Some(5)));
    assert_linearizable(&h);

    // It may take effect long after the client gave up, after other operations.
    let mut h = History::new();
    timed_out(&mut h, 1, 0, put(1, 5));
    done(&mut h, 2, (10, 11), get(1), read(None));
    done(&mut h, 2, (12, 13), put(1, 6), OK);
    done(&mut h, 3, (14, 15), get(1), read(Some(6)));
    done(&mut h, 3, (16, 17), get(1), read(Some(5)));
    assert_linearizable(&h);
}

#[test]
fn linearizability_indeterminate_write_never_observed() {
    let mut h = History::new();
    timed_out(&mut h, 1, 0, put(1, 5));
    done(&mut h, 2, (10, 11), get(1), read(None));
    done(&mut h, 2, (12, 13), put(1, 6), OK);
    done(&mut h, 3, (14, 15), get(1), read(Some(6)));
    assert_linearizable(&h);
}

#[test]
fn linearizability_indeterminate_write_takes_effect_only_once() {
    let mut h = History::new();
    done(&mut h, 1, (0, 1), put(1, 1), OK);
    timed_out(&mut h, 2, 2, put(1, 2));
    done(&mut h, 3, (10, 11), get(1), read(Some(2)));
    done(&mut h, 3, (12, 13), get(1), read(Some(1)));
    let report = assert_not_linearizable(&h);
    assert_eq!(report.deadline, 13);
    let text = report.to_string();
    assert!(text.contains("-> indeterminate"), "{text}");
}

#[test]
fn linearizability_indeterminate_cas_and_delete() {
    let mut h = History::new();
    done(&mut h, 1, (0, 1), put(1, 1), OK);
    timed_out(&mut h, 2, 2, cas(1, Some(1), Some(2)));
    timed_out(&mut h, 3, 3, delete(1));
    timed_out(&mut h, 4, 4, get(1));
    done(&mut h, 5, (10, 11), get(1), read(Some(2)));
    done(&mut h, 5, (12, 13), get(1), read(None));
    assert_linearizable(&h);

    // The CAS cannot succeed once the key is gone, and nothing else writes 2.
    let mut h = History::new();
    done(&mut h, 1, (0, 1), put(1, 1), OK);
    done(&mut h, 3, (2, 3), delete(1), OK);
    timed_out(&mut h, 2, 4, cas(1, Some(1), Some(2)));
    done(&mut h, 5, (10, 11), get(1), read(Some(2)));
    assert_not_linearizable(&h);
}

#[test]
fn linearizability_pending_operations_are_indeterminate() {
    let mut h = History::new();
    h.invoke(1, 0, put(1, 5));
    done(&mut h, 2, (10, 11), get(1), read(Some(5)));
    assert_linearizable(&h);
}

// ---------------------------------------------------------------- values nobody observes

#[test]
fn linearizability_unobserved_values_still_fail_a_cas() {
    // 1 is compared with, 2 is observed by no one: the search writes a stand-in for 2,
    // which must still differ from 1.
    let mut h = History::new();
    done(&mut h, 1, (0, 1), put(1, 1), OK);
    done(&mut h, 1, (2, 3), put(1, 2), OK);
    done(
        &mut h,
        2,
        (4, 5),
        cas(1, Some(1), Some(9)),
        Output::Cas(true),
    );
    let report = assert_not_linearizable(&h);
    // The report shows the value written, not the stand-in.
    assert_eq!(report.value_after_prefix, Some(2));

    // ... and from absence: a CAS from absent fails after an unobserved write.
    let mut h = History::new();
    timed_out(&mut h, 1, 0, put(1, 2));
    done(&mut h, 2, (4, 5), cas(1, None, Some(9)), Output::Cas(false));
    assert_linearizable(&h);
    let mut h = History::new();
    done(&mut h, 2, (4, 5), cas(1, None, Some(9)), Output::Cas(false));
    timed_out(&mut h, 1, 6, put(1, 2));
    assert_not_linearizable(&h);
}

#[test]
fn linearizability_the_stand_in_value_is_not_an_observed_one() {
    // Values near the top of the range are observed: the stand-in must avoid them.
    let mut h = History::new();
    done(&mut h, 1, (0, 1), put(1, Value::MAX), OK);
    done(&mut h, 1, (2, 3), put(1, Value::MAX - 1), OK);
    done(&mut h, 2, (4, 5), get(1), read(Some(Value::MAX)));
    let report = assert_not_linearizable(&h);
    assert_eq!(report.value_after_prefix, Some(Value::MAX - 1));

    let mut h = History::new();
    done(&mut h, 1, (0, 1), put(1, Value::MAX - 2), OK);
    done(
        &mut h,
        2,
        (2, 3),
        cas(1, Some(Value::MAX), None),
        Output::Cas(true),
    );
    done(
        &mut h,
        2,
        (4, 5),
        cas(1, Some(Value::MAX - 1), None),
        Output::Cas(false),
    );
    assert_not_linearizable(&h);
}

// ---------------------------------------------------------------- many indeterminate writes

/// `n` writes that time out, all invoked at the start, then a read of each value in turn
/// (each write took effect late, just before its read), then optionally a read of a value
/// never written.
fn late_writes(n: u64, bad_read: bool) -> History {
    let mut h = History::new();
    for i in 0..n {
        timed_out(&mut h, i, i, put(1, i + 1));
    }
    for i in 0..n {
        done(
            &mut h,
            100,
            (1000 + 10 * i, 1001 + 10 * i),
            get(1),
            read(Some(i + 1)),
        );
    }
    if bad_read {
        done(&mut h, 100, (5000, 5001), get(1), read(Some(9999)));
    }
    h
}

#[test]
fn linearizability_many_indeterminate_writes_are_decided() {
    // Every subset of the writes that timed out, in every order, is a configuration of
    // its own: before the search pruned dominated configurations and tried determinate
    // operations first, none of these was decided within 100 million steps.
    let budget = Budget::steps(100_000);
    assert!(check(&late_writes(24, false), budget).is_linearizable());
    let report = check(&late_writes(24, true), budget)
        .report()
        .cloned()
        .expect("a read of a value never written");
    assert_eq!(report.deadline, 5001);
    assert_eq!(report.value_after_prefix, Some(24));

    // The same writes, with the impossible read before all the others.
    let mut h = History::new();
    for i in 0..24 {
        timed_out(&mut h, i, i, put(1, i + 1));
    }
    done(&mut h, 100, (500, 501), get(1), read(Some(9999)));
    let report = check(&h, budget)
        .report()
        .cloned()
        .expect("not linearizable");
    assert_eq!(report.deadline, 501);

    // Indeterminate writes of values nobody reads are all alike.
    let mut h = History::new();
    for i in 0..40 {
        timed_out(&mut h, i, i, put(1, 100 + i));
        timed_out(&mut h, i, i, cas(1, None, Some(200 + i)));
    }
    timed_out(&mut h, 50, 50, delete(1));
    done(
        &mut h,
        100,
        (500, 501),
        cas(1, None, Some(1)),
        Output::Cas(false),
    );
    done(&mut h, 100, (502, 503), get(1), read(None));
    assert!(check(&h, budget).is_linearizable());
}

/// Whether some order of `h`'s operations (all on one key) explains every output: every
/// order is tried, with the plain model, without the search's abstraction or pruning
/// (it only remembers the (placed operations, value) pairs that failed).
fn brute_force(h: &History) -> bool {
    fn explain(
        ops: &[Operation],
        placed: u64,
        value: Option<Value>,
        failed: &mut std::collections::HashSet<(u64, Option<Value>)>,
    ) -> bool {
        let unplaced = |i: usize| placed & (1 << i) == 0;
        // The determinate operations still to place.
        let open: Vec<usize> = (0..ops.len())
            .filter(|&i| unplaced(i) && ops[i].output().is_some())
            .collect();
        if open.is_empty() {
            return true;
        }
        if failed.contains(&(placed, value)) {
            return false;
        }
        for (i, o) in ops.iter().enumerate() {
            // `o` comes next only if no operation still to place completed before it began.
            let preceded = open
                .iter()
                .any(|&j| ops[j].completed().is_some_and(|c| c < o.invoked));
            if !unplaced(i) || preceded {
                continue;
            }
            let (after, output) = o.op.apply(value);
            if o.output().is_some_and(|recorded| recorded != output) {
                continue;
            }
            if explain(ops, placed | 1 << i, after, failed) {
                return true;
            }
        }
        failed.insert((placed, value));
        false
    }
    let ops = h.operations();
    assert!(ops.len() <= 64);
    explain(ops, 0, None, &mut Default::default())
}

/// A random history of `n` operations on key 1 with values 1 to 3: each takes effect at a
/// random point of its interval, or (some that time out) at any later time or never; then, half the time, the
/// recorded output of a read or compare-and-set is replaced by a random one.
fn small_history(seed: u64, n: usize) -> History {
    let mut rng = Rng(seed);
    let mut planned = Vec::new();
    for _ in 0..n {
        let invoked = rng.below(20);
        let completed = invoked + rng.below(10);
        let point = invoked + rng.below(completed - invoked + 1);
        let value = |rng: &mut Rng| (rng.below(4) > 0).then(|| 1 + rng.below(3));
        let op = match rng.below(4) {
            0 => get(1),
            1 => put(1, 1 + rng.below(3)),
            2 => delete(1),
            _ => cas(1, value(&mut rng), value(&mut rng)),
        };
        let timed_out = rng.chance(500);
        let applied = !timed_out || rng.chance(700);
        // An operation that timed out may take effect long after.
        let point = if timed_out {
            invoked + rng.below(40)
        } else {
            point
        };
        planned.push((point, invoked, completed, op, timed_out, applied));
    }
    let mut model = Reference::default();
    let mut outputs = vec![None; n];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| planned[i].0);
    for i in order {
        if planned[i].5 {
            outputs[i] = Some(model.apply(planned[i].3));
        }
    }
    let answered: Vec<usize> = (0..n)
        .filter(|&i| {
            !planned[i].4 && matches!(planned[i].3, Op::Get { .. } | Op::CompareAndSet { .. })
        })
        .collect();
    let corrupt = (rng.chance(500) && !answered.is_empty())
        .then(|| answered[rng.below(answered.len() as u64) as usize]);
    let mut h = History::new();
    for (i, &(_, invoked, completed, op, timed_out, _)) in planned.iter().enumerate() {
        let id = h.invoke(i as ClientId, invoked, op);
        match outputs[i] {
            Some(mut output) if !timed_out => {
                if corrupt == Some(i) {
                    output = match op {
                        Op::Get { .. } => read((rng.below(4) > 0).then(|| 1 + rng.below(3))),
                        Op::CompareAndSet { .. } => Output::Cas(rng.chance(500)),
                        Op::Put { .. } | Op::Delete { .. } => output,
                    };
                }
                h.complete(id, completed, output).unwrap();
            }
            _ => h.timeout(id).unwrap(),
        }
    }
    h
}

#[test]
fn linearizability_agrees_with_trying_every_order() {
    let (mut linearizable, mut not) = (0, 0);
    for seed in 0..10_000 {
        let h = small_history(seed, 12);
        let expected = brute_force(&h);
        let result = check(&h, Budget::unlimited());
        assert_eq!(
            result.is_linearizable(),
            expected,
            "seed {seed}: {result}\n{h}"
        );
        if let Some(report) = result.report() {
            assert_report_is_sound(&h, report);
            not += 1;
        } else {
            linearizable += 1;
        }
    }
    // Both verdicts are well represented.
    println!("{linearizable} linearizable, {not} not");
    assert!(
        linearizable > 2_000 && not > 1_000,
        "{linearizable} / {not}"
    );
}

// ---------------------------------------------------------------- reports

#[test]
fn linearizability_report_elides_a_long_prefix() {
    let mut h = History::new();
    for i in 0..30 {
        done(&mut h, 1, (2 * i, 2 * i + 1), put(1, i), OK);
    }
    done(&mut h, 2, (100, 101), get(1), read(Some(3)));
    let report = assert_not_linearizable(&h);
    assert_eq!(report.prefix.len(), 30);
    let short = report.to_string();
    assert!(
        short.contains("... 20 earlier ops ({:#} shows them)"),
        "{short}"
    );
    assert!(!short.contains("v=19)"), "{short}");
    assert!(short.contains("v=20)"), "{short}");
    let long = format!("{report:#}");
    assert!(
        long.contains("v=0)") && !long.contains("earlier ops"),
        "{long}"
    );
}

#[test]
fn linearizability_report_shows_the_smallest_failing_window() {
    // Key 1 is fine until the stale read at t=51..52; later operations are irrelevant.
    let mut h = History::new();
    done(&mut h, 1, (0, 10), put(1, 1), OK);
    done(&mut h, 2, (5, 20), get(1), read(None));
    done(&mut h, 3, (30, 40), put(1, 2), OK);
    let stale = done(&mut h, 4, (51, 52), get(1), read(Some(1)));
    done(&mut h, 1, (60, 70), put(1, 3), OK);
    done(&mut h, 2, (61, 71), get(1), read(Some(3)));
    let report = assert_not_linearizable(&h);
    assert_eq!(report.blocked.id, stale);
    assert_eq!(report.deadline, 52);
    assert_eq!(report.prefix.len(), 3);
    assert_eq!(report.candidates.len(), 1);
    println!("{report}");
}

// ---------------------------------------------------------------- the budget

#[test]
fn linearizability_budget_exhausted_gives_unknown() {
    // Forty concurrent writes and a read of a value none of them wrote: proving that no
    // order works means exploring every subset of the writes.
    let mut h = History::new();
    for client in 0..40 {
        done(&mut h, client, (0, 100), put(7, client), OK);
    }
    done(&mut h, 99, (0, 100), get(7), read(Some(1000)));
    done(&mut h, 1, (0, 1), put(6, 1), OK);
    assert_eq!(
        check(&h, Budget::steps(100_000)),
        CheckResult::Unknown { keys: vec![7] }
    );
    let result = check(
        &h,
        Budget::until(Instant::now() + Duration::from_millis(50)),
    );
    assert_eq!(result, CheckResult::Unknown { keys: vec![7] });
    assert_eq!(
        result.to_string(),
        "unknown: search budget exhausted for keys [7]"
    );

    // A deadline in the past decides nothing.
    let mut h = History::new();
    done(&mut h, 1, (0, 1), put(1, 1), OK);
    done(&mut h, 1, (0, 1), put(2, 1), OK);
    let past = Budget::steps(1_000).with_deadline(Instant::now());
    assert_eq!(check(&h, past), CheckResult::Unknown { keys: vec![1, 2] });
    assert!(check(&h, Budget::unlimited()).is_linearizable());
}

// ---------------------------------------------------------------- randomized histories

/// A small deterministic PRNG (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        search::splitmix64(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// The reference model, written independently of [`Op::apply`].
#[derive(Default)]
struct Reference(HashMap<Key, Value>);

impl Reference {
    fn apply(&mut self, op: Op) -> Output {
        match op {
            Op::Put { key, value } => {
                self.0.insert(key, value);
                Output::Done
            }
            Op::Get { key } => Output::Read(self.0.get(&key).copied()),
            Op::Delete { key } => {
                self.0.remove(&key);
                Output::Done
            }
            Op::CompareAndSet { key, expected, new } => {
                if self.0.get(&key).copied() != expected {
                    return Output::Cas(false);
                }
                match new {
                    Some(value) => self.0.insert(key, value),
                    None => self.0.remove(&key),
                };
                Output::Cas(true)
            }
        }
    }
}

struct Workload {
    ops: usize,
    keys: u64,
    clients: u64,
    values: u64,
    timeout_per_mille: u64,
}

/// A value below `values`, or `None` (absent) one time in `values + 1`.
fn random_value(rng: &mut Rng, values: u64) -> Option<Value> {
    (rng.below(values + 1) > 0).then(|| rng.below(values))
}

fn random_op(rng: &mut Rng, w: &Workload, model: &Reference) -> Op {
    let key = rng.below(w.keys);
    match rng.below(20) {
        0..=7 => get(key),
        8..=12 => put(key, rng.below(w.values)),
        13..=14 => delete(key),
        _ => {
            let current = model.0.get(&key).copied();
            let expected = if rng.chance(500) {
                current
            } else {
                random_value(rng, w.values)
            };
            cas(key, expected, random_value(rng, w.values))
        }
    }
}

/// Clients run `w.ops` random operations concurrently, each taking effect on the
/// reference model at some tick between its invocation and completion; some time out,
/// before or after taking effect, and an operation that timed out before taking effect
/// may still do so later, or never.
fn concurrent_history(seed: u64, w: &Workload) -> History {
    #[derive(Clone, Copy)]
    enum Client {
        Idle,
        Invoked(OpId, Op),
        Applied(OpId, Output),
    }
    let mut rng = Rng(seed);
    let mut history = History::new();
    let mut model = Reference::default();
    let mut clients = vec![Client::Idle; w.clients as usize];
    let mut lost: Vec<Op> = Vec::new();
    let (mut started, mut time) = (0, 0);
    while started < w.ops || clients.iter().any(|c| !matches!(c, Client::Idle)) {
        time += 1 + rng.below(3);
        if !lost.is_empty() && rng.chance(100) {
            let op = lost.swap_remove(rng.below(lost.len() as u64) as usize);
            if rng.chance(500) {
                model.apply(op);
            }
        }
        let c = rng.below(w.clients);
        let client = &mut clients[c as usize];
        *client = match *client {
            Client::Idle if started < w.ops => {
                started += 1;
                let op = random_op(&mut rng, w, &model);
                Client::Invoked(history.invoke(c, time, op), op)
            }
            Client::Idle => Client::Idle,
            Client::Invoked(id, op) if rng.chance(w.timeout_per_mille / 2) => {
                history.timeout(id).unwrap();
                lost.push(op);
                Client::Idle
            }
            Client::Invoked(id, op) => Client::Applied(id, model.apply(op)),
            Client::Applied(id, _) if rng.chance(w.timeout_per_mille / 2) => {
                history.timeout(id).unwrap();
                Client::Idle
            }
            Client::Applied(id, output) => {
                history.complete(id, time, output).unwrap();
                Client::Idle
            }
        };
    }
    history
}

/// A sequential execution against the reference model, one operation every 10 ticks;
/// then each interval is stretched randomly around its linearization point, so that
/// operations overlap (up to about `2 * stretch / 10` at a time) while the sequential
/// order remains a valid linearization.
fn perturbed_sequential_history(seed: u64, w: &Workload, stretch: u64) -> History {
    let mut rng = Rng(seed);
    let mut model = Reference::default();
    let mut history = History::new();
    for i in 0..w.ops as u64 {
        let point = stretch + 10 * i;
        let op = random_op(&mut rng, w, &model);
        let output = model.apply(op);
        let id = history.invoke(rng.below(w.clients), point - rng.below(stretch), op);
        if rng.chance(w.timeout_per_mille) {
            history.timeout(id).unwrap();
        } else {
            history
                .complete(id, point + rng.below(stretch), output)
                .unwrap();
        }
    }
    history
}

/// The same history, with one operation's outcome replaced.
fn with_outcome(h: &History, target: OpId, outcome: Outcome) -> History {
    let mut copy = History::new();
    for o in h.operations() {
        let id = copy.invoke(o.client, o.invoked, o.op);
        match if o.id == target { outcome } else { o.outcome } {
            Outcome::Pending => {}
            Outcome::Indeterminate => copy.timeout(id).unwrap(),
            Outcome::Ok { completed, output } => copy.complete(id, completed, output).unwrap(),
        }
    }
    copy
}

const SMALL: Workload = Workload {
    ops: 200,
    keys: 3,
    clients: 5,
    values: 4,
    timeout_per_mille: 60,
};

#[test]
fn linearizability_random_concurrent_histories_are_linearizable() {
    for seed in 0..300 {
        let h = concurrent_history(seed, &SMALL);
        let result = check(&h, Budget::default());
        assert!(result.is_linearizable(), "seed {seed}: {result}");
    }
}

#[test]
fn linearizability_random_perturbed_histories_are_linearizable() {
    for seed in 0..300 {
        let h = perturbed_sequential_history(seed, &SMALL, 30);
        let result = check(&h, Budget::default());
        assert!(result.is_linearizable(), "seed {seed}: {result}");
    }
}

#[test]
fn linearizability_random_histories_with_a_corrupted_read_are_caught() {
    for seed in 0..100 {
        let h = concurrent_history(seed, &SMALL);
        let Some(victim) = h
            .operations()
            .iter()
            .rev()
            .find(|o| matches!(o.op, Op::Get { .. }) && o.completed().is_some())
        else {
            continue;
        };
        let outcome = Outcome::Ok {
            completed: victim.completed().unwrap(),
            output: read(Some(SMALL.values + 1)),
        };
        let bad = with_outcome(&h, victim.id, outcome);
        match check(&bad, Budget::default()) {
            CheckResult::NotLinearizable(report) => {
                assert_eq!(report.key, victim.op.key(), "seed {seed}");
                assert_eq!(report.blocked.id, victim.id, "seed {seed}");
            }
            other => panic!("seed {seed}: expected a violation, got {other}"),
        }
    }
}

#[test]
fn linearizability_large_history() {
    let large = Workload {
        ops: 10_000,
        keys: 20,
        clients: 5,
        values: 4,
        timeout_per_mille: 10,
    };
    for (name, h) in [
        ("concurrent", concurrent_history(7, &large)),
        ("perturbed", perturbed_sequential_history(7, &large, 30)),
    ] {
        let start = Instant::now();
        let result = check(&h, Budget::default());
        // Timing is printed, never asserted: these machines are shared and noisy.
        println!("{name}: {} ops checked in {:?}", h.len(), start.elapsed());
        assert!(result.is_linearizable(), "{name}: {result}");
    }
}

/// Whether some operation of `key` in `h` reads `value` or compares with it (`None` is
/// always observed).
fn observed(h: &History, key: Key, value: Option<Value>) -> bool {
    value.is_none()
        || h.operations().iter().any(|o| {
            o.op.key() == key
                && match o.op {
                    Op::Get { .. } => o.output() == Some(read(value)),
                    Op::CompareAndSet { expected, .. } => expected == value,
                    Op::Put { .. } | Op::Delete { .. } => false,
                }
        })
}

/// Checks that `report` explains why `h` is not linearizable, and that its window is the
/// smallest: the key's operations invoked by the deadline, with those completing after it
/// left pending, are linearizable; with the blocked one completed (and the others
/// completing after it keeping their outputs, but no deadline) they are not.
/// (Assumes no two events of the history happen at the same time.)
#[track_caller]
fn assert_report_is_sound(h: &History, report: &Report) {
    let key = report.key;
    let mut value = None;
    for (i, o) in report.prefix.iter().enumerate() {
        assert_eq!(o.op.key(), key);
        let (after, output) = o.op.apply(value);
        assert!(o.output().is_none_or(|recorded| recorded == output), "{o}");
        value = after;
        for later in &report.prefix[i + 1..] {
            assert!(
                later.completed().is_none_or(|c| c >= o.invoked),
                "{later} before {o}"
            );
        }
    }
    assert_eq!(value, report.value_after_prefix);
    assert_eq!(Some(report.deadline), report.blocked.completed());
    assert!(report
        .candidates
        .iter()
        .any(|c| c.operation == report.blocked));
    for candidate in &report.candidates {
        let o = candidate.operation;
        assert!(o.invoked <= report.deadline && !report.prefix.contains(&o));
        let (after, output) = o.op.apply(value);
        match candidate.verdict {
            Verdict::WrongOutput { model } => {
                assert_eq!(model, output);
                assert_ne!(o.output(), Some(output));
            }
            Verdict::NoEffect => assert!(o.output().is_none() && after == value, "{o}"),
            Verdict::Unobserved => assert!(
                o.output().is_none()
                    && after != value
                    && !observed(h, key, after)
                    && !observed(h, key, value),
                "{o}"
            ),
            // Whether no order through it gets further is what `window` checks below.
            Verdict::DeadEnd => assert!(o.output().is_none() && after != value, "{o}"),
        }
    }
    let window = |include_blocked: bool| {
        let mut truncated = History::new();
        for o in h.operations() {
            if o.op.key() != key || o.invoked > report.deadline {
                continue;
            }
            let id = truncated.invoke(o.client, o.invoked, o.op);
            if let Outcome::Ok { completed, output } = o.outcome {
                if completed < report.deadline || o.id == report.blocked.id && include_blocked {
                    truncated.complete(id, completed, output).unwrap();
                } else if include_blocked {
                    truncated.complete(id, Time::MAX, output).unwrap();
                }
            }
        }
        check(&truncated, Budget::default())
    };
    let before = window(false);
    assert!(before.is_linearizable(), "{before}");
    let at = window(true);
    assert!(at.report().is_some(), "{at}");
}

#[test]
fn linearizability_random_corruptions_get_sound_reports() {
    let mut violations = 0;
    for seed in 0..400 {
        let h = concurrent_history(seed, &SMALL);
        let mut rng = Rng(seed ^ 0xc0ffee);
        let victim = h.operations()[rng.below(h.len() as u64) as usize];
        let Some(completed) = victim.completed() else {
            continue;
        };
        let output = match victim.op {
            Op::Get { .. } => read(random_value(&mut rng, SMALL.values)),
            Op::CompareAndSet { .. } => Output::Cas(rng.chance(500)),
            Op::Put { .. } | Op::Delete { .. } => continue,
        };
        let bad = with_outcome(&h, victim.id, Outcome::Ok { completed, output });
        match check(&bad, Budget::default()) {
            CheckResult::Linearizable => {}
            CheckResult::NotLinearizable(report) => {
                violations += 1;
                assert_eq!(report.key, victim.op.key(), "seed {seed}");
                assert_report_is_sound(&bad, &report);
            }
            unknown @ CheckResult::Unknown { .. } => panic!("seed {seed}: {unknown}"),
        }
    }
    // Most corruptions make the history wrong (the rest happen to be consistent).
    assert!(violations > 100, "only {violations} violations");
}
