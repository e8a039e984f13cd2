//! A survivor restarted as a new cluster of one (a host's recovery after losing a quorum
//! for good, `coracle node --force-new-cluster`): its log with a configuration entry of
//! [`sole_voter`] appended in a new term. Not a rule of the paper (it breaks the old
//! cluster's quorum on purpose), but what the core must do with such a log: elect the node
//! alone and commit every entry it holds, those it never learned were committed too.

use crate::host::*;
use coracle::membership::sole_voter;
use coracle::{Entry, EntryKind, HardState, LogStorage, Role};

#[test]
fn a_survivor_made_sole_voter_elects_itself_and_commits_its_whole_log() {
    // Node 2 of {1, 2, 3}: four entries, none known to be committed (a follower learns the
    // commit index only with the next AppendEntries, which never came).
    let mut log = log_with_terms(&[1, 1, 2, 2], 2);
    log.append(&Entry {
        index: 5,
        term: 3,
        kind: EntryKind::Membership,
        data: &sole_voter(2),
    })
    .unwrap();
    log.set_hard_state(HardState {
        current_term: 3,
        voted_for: None,
    });
    let mut c = Cluster::empty();
    c.add(
        default_config(2),
        store_of(&log),
        &[1, 2, 3],
        coracle::VecLog::new,
    );
    c.node_mut(2).skip_vote_guard();
    let members: Vec<_> = c.node(2).members().map(|m| (m.id, m.voter)).collect();
    assert_eq!(members, [(2, true)], "the appended configuration is in use");
    c.run(100);
    let n = c.node(2);
    assert_eq!(n.role(), Role::Leader);
    assert!(n.term() > 3);
    assert_eq!(n.commit_index(), 6, "its whole log and its term's no-op");
    assert_eq!(c.commands(2), [vec![0], vec![1], vec![2], vec![3]]);
    // It takes writes alone.
    let p = c.propose(2, b"after");
    c.stabilize();
    assert!(c.node(2).commit_index() >= p.index, "{p:?}");
}
