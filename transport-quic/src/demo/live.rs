//! The live view of `coracle demo` (ratatui): each node's process, role, term, leader,
//! commit and applied index, and the recent events; keys to write, crash the leader,
//! restart the nodes that are down, isolate a node and heal.

use super::cluster::Cluster;
use crate::Error;
use coracle::NodeId;
use coracle_quic::protocol::NodeStatus;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Row, Table};
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// Events kept on screen.
const EVENTS: usize = 200;

struct View {
    started: Instant,
    statuses: Vec<Option<NodeStatus>>,
    up: Vec<NodeId>,
    isolated: BTreeSet<NodeId>,
    events: VecDeque<String>,
    written: u64,
}

impl View {
    fn event(&mut self, text: impl Into<String>) {
        let t = self.started.elapsed().as_secs_f64();
        self.events
            .push_front(format!("{t:>8.3} s  {}", text.into()));
        self.events.truncate(EVENTS);
    }

    /// Refreshes the statuses and turns what changed into events.
    fn refresh(&mut self, cluster: &mut Cluster) {
        self.up = cluster.up();
        let now = smol::block_on(cluster.statuses());
        let before = std::mem::replace(&mut self.statuses, now.clone());
        for (i, (old, new)) in before.iter().zip(&now).enumerate() {
            let id = i as NodeId + 1;
            match (old, new) {
                (Some(o), Some(n)) if o.role != n.role || o.term != n.term => {
                    self.events_for_change(id, n)
                }
                (None, Some(n)) => {
                    self.event(format!("node {id} answers: {} in term {}", n.role, n.term))
                }
                (Some(_), None) if self.up.contains(&id) => {
                    self.event(format!("node {id} does not answer"))
                }
                _ => {}
            }
        }
    }

    fn events_for_change(&mut self, id: NodeId, n: &NodeStatus) {
        let leader = n.leader.map_or("none".into(), |l| format!("node {l}"));
        self.event(format!(
            "node {id}: {} in term {} (leader: {leader})",
            n.role, n.term
        ));
    }

    fn leader(&self) -> Option<NodeId> {
        self.statuses
            .iter()
            .flatten()
            .filter(|s| s.role == "Leader")
            .max_by_key(|s| s.term)
            .map(|s| s.id)
    }
}

fn act(view: &mut View, cluster: &mut Cluster, key: KeyCode) -> Result<bool, Error> {
    match key {
        KeyCode::Char('q') | KeyCode::Esc => return Ok(false),
        KeyCode::Char('w') => {
            let up = cluster.up();
            let t = Instant::now();
            let mut ok = 0;
            let mut last = None;
            for _ in 0..10 {
                view.written += 1;
                let key = format!("live/{:06}", view.written);
                match smol::block_on(cluster.write(
                    &key,
                    "written from the demo",
                    &up,
                    &[],
                    Duration::from_secs(2),
                )) {
                    Ok((id, index)) => {
                        ok += 1;
                        last = Some((id, index));
                    }
                    Err(e) => {
                        view.event(format!("write {key} failed: {e}"));
                        break;
                    }
                }
            }
            if let Some((id, index)) = last {
                view.event(format!(
                    "{ok} writes committed by node {id} in {:.1} ms (last index {index})",
                    t.elapsed().as_secs_f64() * 1e3
                ));
            }
        }
        KeyCode::Char('k') => match view.leader() {
            Some(id) => {
                cluster.kill(id)?;
                view.event(format!("crashed the leader, node {id} (SIGKILL)"));
            }
            None => view.event("no leader to crash"),
        },
        KeyCode::Char('r') => {
            for id in 1..=cluster.len() as NodeId {
                if !cluster.is_up(id) {
                    cluster.start(id)?;
                    view.event(format!("restarted node {id} from its data directory"));
                }
            }
        }
        KeyCode::Char('i') => match view.leader() {
            Some(id) => isolate(view, cluster, id)?,
            None => view.event("no leader to isolate (press a node number)"),
        },
        KeyCode::Char(c @ '1'..='9') => {
            let id = NodeId::from(c as u8 - b'0');
            if (id as usize) <= cluster.len() {
                isolate(view, cluster, id)?;
            }
        }
        KeyCode::Char('h') => {
            view.isolated.clear();
            apply_isolation(view, cluster);
            view.event("healed the network");
        }
        _ => {}
    }
    Ok(true)
}

fn isolate(view: &mut View, cluster: &mut Cluster, id: NodeId) -> Result<(), Error> {
    view.isolated.insert(id);
    apply_isolation(view, cluster);
    view.event(format!("isolated node {id} from the others"));
    Ok(())
}

/// Sends every running node its fault-injection order from `view.isolated`.
fn apply_isolation(view: &mut View, cluster: &mut Cluster) {
    let all: Vec<NodeId> = (1..=cluster.len() as NodeId).collect();
    for id in cluster.up() {
        let peers: Vec<NodeId> = if view.isolated.contains(&id) {
            all.iter().copied().filter(|&p| p != id).collect()
        } else {
            view.isolated.iter().copied().filter(|&p| p != id).collect()
        };
        if let Err(e) = smol::block_on(cluster.isolate(id, peers)) {
            view.event(format!("node {id} did not take the isolation order: {e}"));
        }
    }
}

fn draw(frame: &mut ratatui::Frame<'_>, view: &View, cluster: &Cluster) {
    let [title, table, events, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(cluster.len() as u16 + 3),
        Constraint::Min(3),
        Constraint::Length(2),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            " coracle demo: {} nodes on 127.0.0.1, election timeout {} ms, data in {}",
            cluster.len(),
            cluster.election_timeout().as_millis(),
            cluster.dir().display()
        )))
        .style(Style::default().add_modifier(Modifier::BOLD)),
        title,
    );
    let header = Row::new([
        "node", "address", "process", "role", "term", "leader", "commit", "applied", "last",
        "network",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = (1..=cluster.len() as NodeId).map(|id| {
        let i = id as usize - 1;
        let up = view.up.contains(&id);
        let net = if view.isolated.contains(&id) {
            "isolated"
        } else {
            "connected"
        };
        let addr = cluster.addrs()[i].to_string();
        match view.statuses.get(i).and_then(|s| s.as_ref()) {
            Some(s) => {
                let color = match s.role.as_str() {
                    "Leader" => Color::Green,
                    "Follower" => Color::Reset,
                    _ => Color::Yellow,
                };
                Row::new([
                    id.to_string(),
                    addr,
                    "running".into(),
                    s.role.clone(),
                    s.term.to_string(),
                    s.leader.map_or("-".into(), |l| l.to_string()),
                    s.commit.to_string(),
                    s.applied.to_string(),
                    s.last_index.to_string(),
                    net.into(),
                ])
                .style(Style::default().fg(color))
            }
            None => Row::new([
                id.to_string(),
                addr,
                if up { "silent" } else { "down" }.into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                net.into(),
            ])
            .style(Style::default().fg(Color::Red)),
        }
    });
    let widths = [
        Constraint::Length(5),
        Constraint::Length(22),
        Constraint::Length(8),
        Constraint::Length(13),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::default().borders(Borders::ALL).title(" nodes ")),
        table,
    );
    let items: Vec<ListItem<'_>> = view
        .events
        .iter()
        .map(|e| ListItem::new(e.as_str()))
        .collect();
    frame.render_widget(
        List::new(items).block(Block::default().borders(Borders::ALL).title(" events ")),
        events,
    );
    frame.render_widget(
        Paragraph::new(vec![
            Line::from(
                " w: write 10 keys   k: crash the leader   r: restart the nodes that are down",
            ),
            Line::from(" i: isolate the leader   1-9: isolate that node   h: heal   q: quit"),
        ])
        .style(Style::default().fg(Color::Cyan)),
        help,
    );
}

/// Shows the cluster live until the user quits.
pub fn run(cluster: &mut Cluster) -> Result<(), Error> {
    let mut view = View {
        started: Instant::now(),
        statuses: vec![None; cluster.len()],
        up: Vec::new(),
        isolated: BTreeSet::new(),
        events: VecDeque::new(),
        written: 0,
    };
    for id in 1..=cluster.len() as NodeId {
        cluster.start(id)?;
    }
    view.event(format!(
        "started {} node processes; logs in {}",
        cluster.len(),
        cluster.dir().display()
    ));
    let mut terminal = ratatui::init();
    let result = (|| -> Result<(), Error> {
        loop {
            view.refresh(cluster);
            terminal.draw(|f| draw(f, &view, cluster))?;
            if event::poll(Duration::from_millis(150))? {
                if let Event::Key(k) = event::read()? {
                    if k.kind == KeyEventKind::Press && !act(&mut view, cluster, k.code)? {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}
