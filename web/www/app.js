// The page of the interactive model: draws the state the wasm module (real coracle nodes on
// a simulated network) gives once a frame, and turns clicks into its inputs. Everything
// Raft is in the module; this file only draws and listens.

import init, { Model } from './pkg/coracle_web.js';

const SVG = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);

// ----- looks -----------------------------------------------------------------------------

const KINDS = {
  PreVote: { color: '#8b5cf6', r: 7, label: 'P', name: 'pre-vote request' },
  PreVoteResponse: { color: '#8b5cf6', r: 6, response: true, name: 'pre-vote answer' },
  RequestVote: { color: '#f59e0b', r: 7, label: 'V', name: 'vote request' },
  RequestVoteResponse: { color: '#f59e0b', r: 6, response: true, name: 'vote answer' },
  Heartbeat: { color: '#10b981', r: 4, name: 'heartbeat (AppendEntries, no entry)' },
  AppendEntries: { color: '#047857', r: 8, count: true, name: 'AppendEntries (number of entries)' },
  AppendEntriesResponse: { color: '#047857', r: 5, response: true, name: 'AppendEntries answer' },
  InstallSnapshot: { color: '#2563eb', r: 8, shape: 'square', label: 'S', name: 'snapshot chunk' },
  InstallSnapshotResponse: { color: '#2563eb', r: 6, shape: 'square', response: true, name: 'snapshot answer' },
  TimeoutNow: { color: '#dc2626', r: 9, shape: 'diamond', label: '!', name: 'TimeoutNow' },
  ReadIndex: { color: '#64748b', r: 6, name: 'ReadIndex' },
  ReadIndexResponse: { color: '#64748b', r: 6, response: true, name: 'ReadIndex answer' },
};
const TERM_COLORS = ['#93c5fd', '#fca5a5', '#86efac', '#fcd34d', '#c4b5fd', '#f9a8d4',
  '#67e8f9', '#fdba74', '#a5b4fc', '#bef264'];
const termColor = (t) => (t === 0 ? '#e2e8f0' : TERM_COLORS[(t - 1) % TERM_COLORS.length]);
const ROLE_FILL = {
  follower: '#f1f5f9', 'pre-candidate': '#fef3c7', candidate: '#fcd34d',
  leader: '#6ee7b7', down: '#475569',
};

// The ring of nodes.
const CX = 300, CY = 280, RING = 205, NODE_R = 36, LANE_GAP = 5;
// The logs: a label column, then one column per index.
const LABEL_W = 64, BOX_W = 19, ROW_H = 46, LOG_TOP = 24;

// ----- state of the page -----------------------------------------------------------------

let model = null;
let state = null;
let playing = true;
let speed = 0.1;
let lastFrame = null;
let dragging = false;
let lanes = new Map();   // "a-b" -> { hit, line, p0, p1 }
let nodeEls = [];        // per node: { g, body, timer, name, term, vote, title }
let msgEls = new Map();  // message id -> element
let lostEls = new Map(); // lost message id -> { el, born }
let logSignature = '';
let narrationSignature = '';
let notesSignature = '';
const frameStats = { work: [], interval: [] };

function el(tag, attrs = {}, parent = null) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function setAttr(e, k, v) {
  const s = String(v);
  if (e.getAttribute(k) !== s) e.setAttribute(k, s);
}
function setText(e, s) {
  if (e.textContent !== s) e.textContent = s;
}
function showError(text) {
  const e = $('error');
  if (text) { e.textContent = text; e.hidden = false; } else { e.textContent = ''; e.hidden = true; }
}
function say(text) { setText($('message'), text || ''); }
const seconds = (us) => (us / 1e6).toFixed(3) + ' s';

// ----- geometry --------------------------------------------------------------------------

function nodeXY(id, n) {
  const a = -Math.PI / 2 + (2 * Math.PI * (id - 1)) / n;
  return [CX + RING * Math.cos(a), CY + RING * Math.sin(a)];
}

// The lane a -> b: beside the straight line between them, on the sender's right, so the two
// directions of a link are two lanes.
function laneEnds(a, b, n) {
  const [ax, ay] = nodeXY(a, n), [bx, by] = nodeXY(b, n);
  const len = Math.hypot(bx - ax, by - ay);
  const dx = (bx - ax) / len, dy = (by - ay) / len;
  const nx = -dy * LANE_GAP, ny = dx * LANE_GAP;
  const inset = NODE_R + 5;
  return [[ax + dx * inset + nx, ay + dy * inset + ny], [bx - dx * inset + nx, by - dy * inset + ny]];
}

function arcPath(cx, cy, r, frac) {
  if (frac <= 0) return '';
  if (frac >= 0.999) {
    return `M ${cx} ${cy - r} A ${r} ${r} 0 1 1 ${cx} ${cy + r} A ${r} ${r} 0 1 1 ${cx} ${cy - r}`;
  }
  const a = -Math.PI / 2 + 2 * Math.PI * frac;
  const x = cx + r * Math.cos(a), y = cy + r * Math.sin(a);
  return `M ${cx} ${cy - r} A ${r} ${r} 0 ${frac > 0.5 ? 1 : 0} 1 ${x.toFixed(2)} ${y.toFixed(2)}`;
}

// ----- the cluster drawing ---------------------------------------------------------------

function buildCluster(n) {
  const laneLayer = $('layer-lanes'), nodeLayer = $('layer-nodes');
  laneLayer.replaceChildren(); nodeLayer.replaceChildren();
  $('layer-messages').replaceChildren(); $('layer-lost').replaceChildren();
  lanes = new Map(); nodeEls = []; msgEls = new Map(); lostEls = new Map();
  for (let a = 1; a <= n; a++) {
    for (let b = 1; b <= n; b++) {
      if (a === b) continue;
      const [p0, p1] = laneEnds(a, b, n);
      const attrs = { x1: p0[0], y1: p0[1], x2: p1[0], y2: p1[1] };
      const hit = el('line', { ...attrs, class: 'lane-hit', id: `lane-${a}-${b}`, 'data-from': a, 'data-to': b }, laneLayer);
      const title = el('title', {}, hit);
      const line = el('line', { ...attrs, class: 'lane' }, laneLayer);
      hit.addEventListener('click', (ev) => onLaneClick(a, b, ev.shiftKey || ev.altKey));
      lanes.set(`${a}-${b}`, { hit, line, title, p0, p1 });
    }
  }
  for (let id = 1; id <= n; id++) {
    const [x, y] = nodeXY(id, n);
    const g = el('g', { class: 'node', id: `node-${id}`, 'data-id': id }, nodeLayer);
    const title = el('title', {}, g);
    const body = el('circle', { class: 'body', cx: x, cy: y, r: NODE_R }, g);
    const timer = el('path', { class: 'timer', d: '' }, g);
    const name = el('text', { class: 'name', x, y: y - 7 }, g);
    name.textContent = `S${id}`;
    const term = el('text', { class: 'term', x, y: y + 9 }, g);
    const vote = el('text', { class: 'vote', x, y: y + 22 }, g);
    g.addEventListener('click', () => onNodeClick(id));
    nodeEls.push({ g, body, timer, name, term, vote, title, x, y });
  }
  logSignature = '';
}

function drawNodes(s) {
  for (const node of s.nodes) {
    const e = nodeEls[node.id - 1];
    if (!e) continue;
    const classes = ['node', node.role.replace(' ', '-')];
    if (!node.up) classes.push('down');
    if (node.member !== 'voter') classes.push(node.member);
    setAttr(e.g, 'class', classes.join(' '));
    setAttr(e.g, 'data-role', node.role);
    setAttr(e.g, 'data-term', node.term);
    setAttr(e.body, 'fill', ROLE_FILL[node.role] || '#fff');
    setAttr(e.body, 'stroke', node.up ? termColor(node.term) : '#1e293b');
    setText(e.term, node.up ? `term ${node.term}` : `down · term ${node.term}`);
    let sub = '';
    if (node.role === 'leader') sub = 'leader';
    else if (node.member === 'learner') sub = 'learner';
    else if (node.member === 'outside') sub = 'not a member';
    else if (node.vote !== null) sub = `voted S${node.vote}`;
    setText(e.vote, sub);
    setText(e.title, `S${node.id}: ${node.up ? node.role : 'crashed'}, term ${node.term}` +
      (node.vote !== null ? `, voted for S${node.vote}` : '') +
      `, commit ${node.commit}, applied ${node.applied}` +
      (node.state ? `, state ${node.state}` : '') +
      ` (${node.member}). Click to ${node.up ? 'crash' : 'restart'} it.`);
    let frac = 0;
    if (node.up && node.timer && node.member === 'voter') {
      const [set, fires] = node.timer;
      frac = Math.max(0, Math.min(1, (fires - s.t) / Math.max(1, fires - set)));
    }
    setAttr(e.timer, 'd', arcPath(e.x, e.y, NODE_R + 7, frac));
    setAttr(e.timer, 'data-timer', frac.toFixed(4));
  }
}

// Each lane's tooltip says what is in flight on it (messages themselves let clicks through
// to the lanes under them).
function drawLanes(s) {
  const cut = new Set(s.cut.map(([a, b]) => `${a}-${b}`));
  const inFlight = new Map();
  for (const m of s.msgs) {
    const key = `${m.from}-${m.to}`;
    inFlight.set(key, (inFlight.get(key) || '') + `\n${m.kind}: ${m.text}`);
  }
  for (const [key, lane] of lanes) {
    const isCut = cut.has(key);
    setAttr(lane.line, 'class', isCut ? 'lane cut' : 'lane');
    setAttr(lane.hit, 'data-cut', isCut);
    const [a, b] = key.split('-');
    setText(lane.title, `S${a}→S${b} ${isCut ? 'cut' : 'up'}: click to ${isCut ? 'heal' : 'cut'} ` +
      `this direction, shift-click both${inFlight.get(key) || ''}`);
  }
}

function makeMessage(m) {
  const k = KINDS[m.kind] || { color: '#64748b', r: 6, name: m.kind };
  const g = el('g', { class: 'msg', 'data-kind': m.kind });
  const fill = k.response ? '#fff' : k.color;
  const common = { fill, stroke: k.color, 'stroke-width': k.response ? 2 : 1 };
  if (k.shape === 'square') el('rect', { ...common, x: -k.r, y: -k.r, width: 2 * k.r, height: 2 * k.r }, g);
  else if (k.shape === 'diamond') el('polygon', { ...common, points: `0,${-k.r} ${k.r},0 0,${k.r} ${-k.r},0` }, g);
  else el('circle', { ...common, r: k.r }, g);
  let label = k.label || '';
  if (k.count) label = String(m.entries.length);
  if (k.response && m.ok !== null) label = m.ok ? '✓' : '✗';
  if (label) {
    const t = el('text', { fill: k.response ? (m.ok === false ? '#dc2626' : k.color) : '#fff' }, g);
    t.textContent = label;
  }
  // The entries an AppendEntries carries, coloured by term (the first four).
  m.entries.slice(0, 4).forEach((term, i) => {
    el('rect', { x: k.r + 2 + i * 6, y: -3, width: 5, height: 6, fill: termColor(term), stroke: '#334155', 'stroke-width': 0.5 }, g);
  });
  const title = el('title', {}, g);
  title.textContent = `${m.kind} S${m.from}→S${m.to}: ${m.text}`;
  $('layer-messages').appendChild(g);
  return g;
}

function drawMessages(s) {
  const seen = new Set();
  for (const m of s.msgs) {
    seen.add(m.id);
    let g = msgEls.get(m.id);
    if (!g) { g = makeMessage(m); msgEls.set(m.id, g); }
    const lane = lanes.get(`${m.from}-${m.to}`);
    if (!lane) continue;
    const p = Math.max(0, Math.min(1, (s.t - m.sent) / Math.max(1, m.arrive - m.sent)));
    const x = lane.p0[0] + (lane.p1[0] - lane.p0[0]) * p;
    const y = lane.p0[1] + (lane.p1[1] - lane.p0[1]) * p;
    setAttr(g, 'transform', `translate(${x.toFixed(1)},${y.toFixed(1)})`);
  }
  for (const [id, g] of msgEls) {
    if (!seen.has(id)) { g.remove(); msgEls.delete(id); }
  }
}

// Lost messages: a red cross where they were, fading out in under a second of real time.
function drawLost(s, now, fresh) {
  const current = new Set();
  for (const l of s.lost) {
    current.add(l.id);
    if (lostEls.has(l.id)) continue;
    const lane = lanes.get(`${l.from}-${l.to}`);
    if (fresh || !lane) { lostEls.set(l.id, { el: null, born: 0 }); continue; }
    const x = lane.p0[0] + (lane.p1[0] - lane.p0[0]) * l.at;
    const y = lane.p0[1] + (lane.p1[1] - lane.p0[1]) * l.at;
    const t = el('text', { class: 'lost', x, y }, $('layer-lost'));
    t.textContent = '✕';
    el('title', {}, t).textContent = `${l.kind} S${l.from}→S${l.to} lost`;
    lostEls.set(l.id, { el: t, born: now });
  }
  for (const [id, entry] of lostEls) {
    if (entry.el) {
      const age = now - entry.born;
      if (age > 900) { entry.el.remove(); entry.el = null; } else setAttr(entry.el, 'opacity', (1 - age / 900).toFixed(2));
    }
    if (!current.has(id) && !entry.el) lostEls.delete(id);
  }
}

// ----- the logs --------------------------------------------------------------------------

function drawLogs(s) {
  const leader = s.nodes.filter((n) => n.role === 'leader').sort((a, b) => b.term - a.term)[0];
  const signature = JSON.stringify([s.from, s.nodes.map((n) => [n.log, n.logFrom, n.commit, n.applied,
    n.snapshot, n.first, n.up, n.role, n.member]), leader ? [leader.id, leader.progress] : null]);
  if (signature === logSignature) return;
  logSignature = signature;
  const cols = s.window;
  const from = s.from;
  const parts = [];
  for (let c = 0; c < cols; c++) {
    const index = from + c;
    if (index % 5 === 0 || c === 0) {
      parts.push(`<text class="index-label" x="${LABEL_W + c * BOX_W + (BOX_W - 3) / 2}" y="${LOG_TOP - 8}">${index}</text>`);
    }
  }
  const progress = new Map();
  if (leader) for (const [peer, next, match, st] of leader.progress) progress.set(peer, { next, match, st });
  s.nodes.forEach((node, row) => {
    const y = LOG_TOP + row * ROW_H;
    const roleMark = node.up ? (node.role === 'leader' ? ' L' : node.member === 'learner' ? ' l' : '') : ' ↓';
    parts.push(`<text class="row-label${node.up ? '' : ' down'}" x="4" y="${y + 14}">S${node.id}${roleMark}</text>`);
    parts.push(`<g id="log-${node.id}" data-commit="${node.commit}" data-applied="${node.applied}" data-last="${node.last}" opacity="${node.up ? 1 : 0.55}">`);
    // Compacted indexes still in the window: covered by the snapshot.
    for (let index = from; index < node.first && index <= node.snapshot; index++) {
      const x = LABEL_W + (index - from) * BOX_W;
      parts.push(`<rect x="${x}" y="${y}" width="${BOX_W - 3}" height="20" fill="#e2e8f0" stroke="#94a3b8"><title>index ${index}: in the snapshot (compacted)</title></rect>`);
    }
    node.log.forEach(([term, kind], k) => {
      const index = node.logFrom + k;
      const x = LABEL_W + (index - from) * BOX_W;
      const committed = index <= node.commit;
      const what = kind === 'n' ? 'a leader\'s no-op' : kind === 'm' ? 'a membership change' : 'a command';
      parts.push(`<g class="entry" data-index="${index}" data-term="${term}"><rect x="${x}" y="${y}" width="${BOX_W - 3}" height="20" fill="${termColor(term)}" stroke="#334155" stroke-width="${committed ? 1.4 : 0.8}" ${committed ? '' : 'stroke-dasharray="3 2" fill-opacity="0.5"'}><title>index ${index}, term ${term}: ${what}${committed ? ', committed' : ''}</title></rect>`);
      if (kind === 'm') parts.push(`<rect x="${x}" y="${y}" width="${BOX_W - 3}" height="4" fill="#1e293b"/>`);
      parts.push(`<text x="${x + (BOX_W - 3) / 2}" y="${y + 11}" ${kind === 'n' ? 'font-style="italic" fill="#475569"' : ''}>${term}</text></g>`);
    });
    if (node.commit >= from) {
      const x = LABEL_W + (node.commit - from + 1) * BOX_W - 2;
      parts.push(`<line class="commit-mark" data-index="${node.commit}" x1="${x}" y1="${y - 3}" x2="${x}" y2="${y + 23}" stroke="#0f172a" stroke-width="2.5"><title>commit index ${node.commit}</title></line>`);
    }
    if (node.applied >= from) {
      const w = (node.applied - from + 1) * BOX_W - 3;
      parts.push(`<rect class="applied-mark" data-index="${node.applied}" x="${LABEL_W}" y="${y + 23}" width="${w}" height="3" fill="#059669"><title>applied through ${node.applied}</title></rect>`);
    }
    const p = progress.get(node.id);
    if (p && node.id !== leader.id) {
      for (const [index, letter, color, what] of [[p.match, 'm', '#2563eb', 'matchIndex'], [p.next, 'n', '#ea580c', 'nextIndex']]) {
        if (index < from || index >= from + cols) continue;
        const x = LABEL_W + (index - from) * BOX_W + (BOX_W - 3) / 2;
        parts.push(`<text class="marker" data-what="${what}" data-index="${index}" x="${x}" y="${y + 38}" fill="${color}" font-size="10" font-weight="700" text-anchor="middle">▲${letter}<title>the leader's ${what} for S${node.id}: ${index}</title></text>`);
      }
    }
    parts.push('</g>');
  });
  const svg = $('logs');
  setAttr(svg, 'viewBox', `0 0 ${LABEL_W + cols * BOX_W + 4} ${LOG_TOP + s.nodes.length * ROW_H + 4}`);
  svg.innerHTML = parts.join('');
  const table = $('progress');
  if (leader) {
    const cells = leader.progress.map(([peer, next, match, st]) =>
      `<td>S${peer}: next ${next}, match ${match} <small>(${st})</small></td>`).join('');
    table.innerHTML = `<table><tr><th>S${leader.id} leads term ${leader.term}:</th>${cells}</tr></table>`;
  } else {
    table.textContent = 'No leader.';
  }
}

// ----- panels ----------------------------------------------------------------------------

function drawNarration(s) {
  const sc = s.scenario;
  const signature = sc ? `${sc.id}|${sc.lines.length}|${sc.done}|${sc.ok}` : 'none';
  if (signature === narrationSignature) return;
  narrationSignature = signature;
  const list = $('narration'), verdict = $('verdict');
  list.replaceChildren();
  verdict.className = '';
  verdict.textContent = '';
  if (!sc) {
    setText($('narration-title'), 'Narration');
    setText($('narration-summary'), 'Pick a scenario: it sets up the situation and tells what happens as it plays.');
    return;
  }
  const info = scenarios.find((x) => x.id === sc.id);
  setText($('narration-title'), sc.title);
  setText($('narration-summary'), info ? info.summary : '');
  for (const [at, line] of sc.lines) {
    const li = document.createElement('li');
    const time = document.createElement('time');
    time.textContent = seconds(at);
    li.append(time, line);
    list.appendChild(li);
  }
  if (sc.done) {
    verdict.className = sc.ok ? 'ok' : 'failed';
    verdict.textContent = sc.ok ? '✓ The run ended as narrated.' : `✗ Not as narrated: ${sc.error}`;
  }
}

function drawNotes(s) {
  const signature = s.notes.length ? `${s.notes.length}|${s.notes[s.notes.length - 1].join('|')}` : '';
  if (signature === notesSignature) return;
  notesSignature = signature;
  const list = $('notes');
  list.replaceChildren();
  for (const [at, text] of [...s.notes].reverse()) {
    const li = document.createElement('li');
    const time = document.createElement('time');
    time.textContent = seconds(at);
    li.append(time, text);
    list.appendChild(li);
  }
}

function drawCounts(s) {
  setText($('counts'), s.sent.length ? 'messages sent: ' + s.sent.map(([k, c]) => `${k} ${c}`).join(', ') : '');
}

function drawTimeline(s) {
  const bar = $('timeline');
  setAttr(bar, 'max', Math.round(s.end / 1000));
  if (!dragging) bar.value = Math.round(s.t / 1000);
  setText($('time-label'), `t = ${seconds(s.t)} of ${seconds(s.end)}`);
}

function draw(now, fresh = false) {
  state = JSON.parse(model.state());
  drawLanes(state);
  drawNodes(state);
  drawMessages(state);
  drawLost(state, now, fresh);
  drawLogs(state);
  drawNarration(state);
  drawNotes(state);
  drawCounts(state);
  drawTimeline(state);
}

// ----- the frame loop --------------------------------------------------------------------

function record(list, value) {
  list.push(value);
  if (list.length > 600) list.shift();
}

function frame(now) {
  const started = performance.now();
  try {
    if (model) {
      if (playing && lastFrame !== null) {
        // A hidden tab or a slow frame does not make the simulation jump.
        const dt = Math.min(now - lastFrame, 100);
        model.advance(dt * speed);
      }
      draw(now);
    }
  } catch (e) {
    playing = false;
    showPlaying();
    showError(`The model stopped: ${e.message || e}`);
  }
  if (lastFrame !== null) record(frameStats.interval, now - lastFrame);
  lastFrame = now;
  record(frameStats.work, performance.now() - started);
  requestAnimationFrame(frame);
}

// ----- inputs ----------------------------------------------------------------------------

let scenarios = [];

function showPlaying() {
  const b = $('play');
  b.textContent = playing ? 'Pause' : 'Play';
  b.classList.toggle('active', !playing);
}

function use(newModel, text) {
  model = newModel;
  state = JSON.parse(model.state());
  buildCluster(state.n);
  narrationSignature = '';
  notesSignature = '';
  $('nodes').value = String(state.n);
  showError(null);
  say(text);
  draw(performance.now(), true);
}

// A new run from the seed and node fields; on refusal, the reason (the run shown goes on).
function tryStartFree() {
  try {
    use(new Model($('seed').value, $('nodes').value), `Started ${$('nodes').value.trim()} nodes from seed ${$('seed').value.trim()}.`);
    return null;
  } catch (e) {
    return `${e.message || e}`;
  }
}

// The scenario `id` from the seed field; on refusal, the reason.
function tryStartScenario(id) {
  try {
    use(Model.scenario(id, $('seed').value), '');
    playing = true;
    showPlaying();
    return null;
  } catch (e) {
    return `${e.message || e}`;
  }
}

const unchanged = (refused) => { if (refused) showError(`${refused} (the run goes on unchanged).`); };
function startFree() { unchanged(tryStartFree()); }
function startScenario(id) { unchanged(tryStartScenario(id)); }

function act(f) {
  if (!model) return;
  try { say(f()); draw(performance.now()); } catch (e) { showError(`${e.message || e}`); }
}

function onNodeClick(id) { act(() => model.toggle_node(id)); }

function onLaneClick(a, b, both) {
  act(() => {
    if (!both) return model.toggle_link(a, b);
    const cut = new Set(state.cut.map(([x, y]) => `${x}-${y}`));
    const wantCut = !(cut.has(`${a}-${b}`) && cut.has(`${b}-${a}`));
    const said = [];
    if (cut.has(`${a}-${b}`) !== wantCut) said.push(model.toggle_link(a, b));
    if (cut.has(`${b}-${a}`) !== wantCut) said.push(model.toggle_link(b, a));
    return said.join('; ');
  });
}

function setSpeedFromSlider() {
  const v = Number($('speed').value);
  speed = Math.pow(10, -2 + (2 * v) / 100);
  setText($('speed-label'), `${speed < 0.1 ? speed.toFixed(3) : speed.toFixed(2)}×`);
}

function buildLegend() {
  const legend = $('legend');
  const items = [];
  for (const [kind, k] of Object.entries(KINDS)) {
    if (kind.startsWith('ReadIndex')) continue;
    const shape = k.shape === 'square'
      ? `<rect x="${8 - k.r}" y="${8 - k.r}" width="${2 * k.r}" height="${2 * k.r}"`
      : k.shape === 'diamond'
        ? `<polygon points="8,${8 - k.r} ${8 + k.r},8 8,${8 + k.r} ${8 - k.r},8"`
        : `<circle cx="8" cy="8" r="${k.r}"`;
    items.push(`<span><svg width="16" height="16">${shape} fill="${k.response ? '#fff' : k.color}" stroke="${k.color}" stroke-width="${k.response ? 2 : 1}"/></svg> ${k.name}</span>`);
  }
  items.push('<span>boxes: log entries coloured by term (dashed: not committed), black bar: commit index, green bar: applied, ▲m / ▲n: the leader\'s matchIndex / nextIndex for that follower; arc around a node: its election timer</span>');
  legend.innerHTML = items.join('');
}

function wire() {
  $('play').addEventListener('click', () => { playing = !playing; showPlaying(); });
  $('step').addEventListener('click', () => {
    playing = false; showPlaying();
    act(() => (model.step() ? '' : 'Nothing left to happen.'));
  });
  $('speed').addEventListener('input', setSpeedFromSlider);
  $('start').addEventListener('click', () => { startFree(); });
  for (const id of ['seed', 'nodes']) {
    $(id).addEventListener('keydown', (e) => { if (e.key === 'Enter') startFree(); });
  }
  $('write').addEventListener('click', () => act(() => model.write()));
  $('heal').addEventListener('click', () => act(() => model.heal()));
  const bar = $('timeline');
  bar.addEventListener('pointerdown', () => { dragging = true; });
  bar.addEventListener('pointerup', () => { dragging = false; });
  bar.addEventListener('input', () => {
    playing = false; showPlaying();
    act(() => { model.seek(Number(bar.value)); return ''; });
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === ' ' && !(e.target instanceof HTMLInputElement)) {
      e.preventDefault(); playing = !playing; showPlaying();
    }
  });
  const panel = $('scenarios');
  for (const sc of scenarios) {
    const b = document.createElement('button');
    b.id = `scenario-${sc.id}`;
    b.textContent = sc.title;
    b.title = sc.summary;
    b.addEventListener('click', () => startScenario(sc.id));
    panel.appendChild(b);
  }
}

// For the browser tests and the curious: the state drawn last, and frame timings.
window.coracleState = () => ({
  ...state,
  playing,
  speed,
  error: $('error').hidden ? null : $('error').textContent,
});
window.coracleFrameStats = (reset = false) => {
  const summary = (xs) => {
    const sorted = [...xs].sort((a, b) => a - b);
    const mean = xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    return { mean, p50: sorted[Math.floor(sorted.length * 0.5)] || 0, p95: sorted[Math.floor(sorted.length * 0.95)] || 0, max: sorted[sorted.length - 1] || 0 };
  };
  const out = { frames: frameStats.work.length, work: summary(frameStats.work), interval: summary(frameStats.interval) };
  if (reset) { frameStats.work = []; frameStats.interval = []; }
  return out;
};

async function main() {
  await init();
  scenarios = JSON.parse(Model.scenarios());
  const params = new URLSearchParams(location.search);
  if (params.has('seed')) $('seed').value = params.get('seed');
  if (params.has('nodes')) $('nodes').value = params.get('nodes');
  // What the address asks for and cannot be: said on the page once a run has started.
  const refused = [];
  if (params.has('speed')) {
    const v = params.get('speed');
    if (/^\s*\d{1,3}\s*$/.test(v) && Number(v) <= 100) $('speed').value = v.trim();
    else refused.push(`speed "${v}" refused: give a whole number from 0 (a hundredth of real time) to 100 (real time)`);
  }
  setSpeedFromSlider();
  buildLegend();
  wire();
  let why = params.has('scenario') ? tryStartScenario(params.get('scenario')) : 'no scenario asked';
  if (why !== null) {
    if (params.has('scenario')) refused.push(`${why}; a free run instead`);
    why = tryStartFree();
    if (why !== null) {
      $('seed').value = '1';
      $('nodes').value = '5';
      tryStartFree();
      refused.push(`${why}; 5 nodes from seed 1 instead`);
    }
  }
  if (refused.length) showError(refused.join('. ') + '.');
  window.coracleReady = true;
  requestAnimationFrame(frame);
}

main().catch((e) => showError(`The model could not start: ${e.message || e}`));
