// The interactive model in a real browser: Debian's headless Chromium, driven by
// playwright-core (no browser download: executablePath is the system's chromium).
// Run by `cargo xtask web-test`, which builds the page, serves it on 127.0.0.1 and sets
// CORACLE_WEB_URL, CORACLE_CHROMIUM and CORACLE_SCREENSHOTS.
//
// Waits are for states of the page, each with a generous bound (the page runs simulated
// time at most at real speed; every bound below is ten times what a run needs or more).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const URL = process.env.CORACLE_WEB_URL;
const CHROMIUM = process.env.CORACLE_CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.CORACLE_SCREENSHOTS || path.resolve('../target/web-screenshots');
const FULL_SPEED = '100';

let browser;

before(async () => {
  assert.ok(URL, 'CORACLE_WEB_URL is not set: run these tests with `cargo xtask web-test`');
  fs.mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // As root Chromium needs --no-sandbox; the rest keeps it off the (closed) network.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
});

// A fresh page on the model, collecting every console error, page error, failed request
// and request that leaves the page's own server.
async function open(query = '') {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1040 } });
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()}`));
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith(URL) && !url.startsWith('data:')) problems.push(`request off the page's server: ${url}`);
  });
  await page.goto(URL + query);
  await page.waitForFunction(() => window.coracleReady === true, null, { timeout: 20_000 });
  return { page, problems };
}

const state = (page) => page.evaluate(() => window.coracleState());

async function setSpeed(page, value) {
  await page.$eval('#speed', (e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }, value);
}

async function seek(page, ms) {
  await page.$eval('#timeline', (e, v) => { e.value = String(v); e.dispatchEvent(new Event('input')); }, ms);
}

async function pause(page) {
  if ((await state(page)).playing) await page.click('#play');
}

async function waitFor(page, predicate, arg, timeout = 30_000) {
  await page.waitForFunction(predicate, arg, { timeout, polling: 50 });
  return state(page);
}

const leaders = (s) => s.nodes.filter((n) => n.role === 'leader');
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });

test('the page loads without a console error, draws every node, and a leader appears', async () => {
  const { page, problems } = await open('?seed=1&nodes=5');
  await setSpeed(page, FULL_SPEED);
  const s = await waitFor(page, () => window.coracleState().nodes.some((n) => n.role === 'leader'));
  const leader = leaders(s)[0];
  assert.equal(await page.locator('#layer-nodes .node').count(), 5);
  assert.equal(await page.getAttribute(`#node-${leader.id}`, 'data-role'), 'leader');
  assert.equal(await page.locator('.lane-hit').count(), 20, 'two lanes per pair of nodes');
  assert.equal(await page.locator('#scenarios button').count(), 12);
  await page.waitForTimeout(300);
  assert.deepEqual(problems, []);
  await shot(page, 'start');
  await page.close();
});

test('clicking the leader crashes it and a new leader of a higher term appears', async () => {
  const { page, problems } = await open('?seed=2&nodes=5');
  await setSpeed(page, FULL_SPEED);
  const before = await waitFor(page, () => window.coracleState().nodes.some((n) => n.role === 'leader'));
  const old = leaders(before)[0];
  // Paused at the click, to know the moment of the crash to go back to.
  await pause(page);
  await page.click(`#node-${old.id}`);
  const crashed = await state(page);
  await page.click('#play');
  assert.equal(crashed.nodes[old.id - 1].up, false);
  assert.match(await page.getAttribute(`#node-${old.id}`, 'class'), /\bdown\b/);
  const after = await waitFor(page, ([id, term]) => window.coracleState().nodes
    .some((n) => n.role === 'leader' && n.id !== id && n.term > term), [old.id, old.term]);
  const next = leaders(after).find((n) => n.id !== old.id);
  assert.ok(next.term > old.term);
  assert.equal(await page.getAttribute(`#node-${next.id}`, 'data-role'), 'leader');
  assert.ok(Number(await page.getAttribute(`#node-${next.id}`, 'data-term')) > old.term);
  await shot(page, 'leader-crashed');
  // Back in time: before the click the old leader leads again, and forward it is gone.
  await pause(page);
  const end = (await state(page)).t;
  await seek(page, Math.floor(crashed.t / 1000) - 1);
  const past = await state(page);
  assert.equal(past.nodes[old.id - 1].role, 'leader');
  assert.equal(await page.getAttribute(`#node-${old.id}`, 'data-role'), 'leader');
  await seek(page, Math.floor(end / 1000));
  const again = await state(page);
  assert.equal(again.nodes[old.id - 1].up, false, 'the recorded crash replays');
  assert.equal(leaders(again)[0].id, next.id, 'the same seed and actions: the same leader');
  // A click on the crashed node restarts it: it follows the new leader in its term.
  await page.click(`#node-${old.id}`);
  assert.equal((await state(page)).nodes[old.id - 1].up, true);
  assert.doesNotMatch(await page.getAttribute(`#node-${old.id}`, 'class'), /\bdown\b/);
  await page.click('#play');
  const back = await waitFor(page, ([id, leader]) => {
    const n = window.coracleState().nodes[id - 1];
    return n.up && n.leader === leader && n.role === 'follower';
  }, [old.id, next.id]);
  assert.equal(back.nodes[old.id - 1].term, leaders(back)[0].term);
  assert.deepEqual(problems, []);
  await page.close();
});

test('pause stops time, step moves one event, and the slowest speed is a hundredth of real time', async () => {
  const { page, problems } = await open('?seed=6&nodes=3');
  await pause(page);
  const paused = await state(page);
  await page.waitForTimeout(300);
  assert.equal((await state(page)).t, paused.t, 'no time passes while paused');
  await page.click('#step');
  const stepped = await state(page);
  assert.equal(stepped.playing, false);
  assert.ok(stepped.events > paused.events && stepped.t >= paused.t, 'one event later');
  // 0.01x: one second of real time is 10 ms of simulated time (bound: 200 ms, generous
  // for a loaded machine's frame clock).
  await setSpeed(page, '0');
  await page.click('#play');
  const before = await state(page);
  await page.waitForTimeout(1000);
  const after = await state(page);
  assert.ok(after.t > before.t && after.t - before.t < 200_000, `${after.t - before.t} µs`);
  assert.equal(await page.textContent('#speed-label'), '0.010×');
  assert.deepEqual(problems, []);
  await page.close();
});

test('the same seed replays the same run, clicks included; another seed plays another', async () => {
  const { page, problems } = await open('?seed=11&nodes=5');
  // From time 0: 300 events, a crash of S1, 300 more; what the page then shows.
  const run = async (seed) => {
    await page.fill('#seed', seed);
    await page.click('#start');
    await pause(page);
    await seek(page, 0);
    return page.evaluate(() => {
      const step = (k) => { for (let i = 0; i < k; i++) document.getElementById('step').click(); };
      step(300);
      document.getElementById('node-1').dispatchEvent(new MouseEvent('click'));
      step(300);
      const { t, events, nodes, msgs, cut, sent } = window.coracleState();
      return { t, events, nodes, msgs, cut, sent };
    });
  };
  const first = await run('11');
  assert.equal(first.events, 600);
  assert.equal(first.nodes[0].up, false);
  assert.deepEqual(await run('11'), first);
  assert.notDeepEqual(await run('12'), first);
  assert.deepEqual(problems, []);
  await page.close();
});

test('links are cut one way by a click, both ways by a shift-click, and healed', async () => {
  const { page, problems } = await open('?seed=3&nodes=4');
  await pause(page);
  await page.click('#lane-1-2');
  let s = await state(page);
  assert.deepEqual(s.cut, [[1, 2]]);
  assert.match(await page.getAttribute('#lane-1-2 + .lane', 'class'), /\bcut\b/);
  await page.click('#lane-3-4', { modifiers: ['Shift'] });
  s = await state(page);
  assert.deepEqual(s.cut, [[1, 2], [3, 4], [4, 3]]);
  await page.click('#lane-1-2');
  assert.deepEqual((await state(page)).cut, [[3, 4], [4, 3]]);
  await page.click('#heal');
  assert.deepEqual((await state(page)).cut, []);
  assert.deepEqual(problems, []);
  await page.close();
});

test('a client write commits on every node', async () => {
  const { page, problems } = await open('?seed=4&nodes=3');
  await setSpeed(page, FULL_SPEED);
  await waitFor(page, () => window.coracleState().nodes.some((n) => n.role === 'leader' && n.commit >= 1));
  await page.click('#write');
  await page.click('#write');
  const s = await waitFor(page, () => window.coracleState().nodes.every((n) => n.applied >= 3));
  assert.ok(s.nodes.every((n) => n.state === s.nodes[0].state && n.state.length > 0));
  assert.match(await page.textContent('#message'), /written to S\d at index/);
  assert.deepEqual(problems, []);
  await page.close();
});

// Steps a paused page one event at a time (the Step button) until its scenario is over,
// and returns what was drawn on the way: every message kind seen in flight, whether each
// AppendEntries showed its entry count and their terms, and whether the election timer
// arcs only shrank while their timer stood (and did shrink).
function stepThrough(page, maxSteps) {
  return page.evaluate((maxSteps) => {
    const seen = {};
    let badCount = 0, shrank = 0, grew = 0;
    let before = new Map();
    for (let i = 0; i < maxSteps && !(window.coracleState().scenario?.done); i++) {
      document.getElementById('step').click();
      const s = window.coracleState();
      for (const g of document.querySelectorAll('#layer-messages .msg')) {
        seen[g.dataset.kind] = (seen[g.dataset.kind] || 0) + 1;
      }
      for (const m of s.msgs.filter((x) => x.kind === 'AppendEntries')) {
        const label = [...document.querySelectorAll('#layer-messages .msg[data-kind=AppendEntries] text')]
          .some((t) => t.textContent === String(m.entries.length));
        if (!label || m.entries.length === 0) badCount++;
      }
      const now = new Map();
      for (const n of s.nodes) {
        const frac = document.getElementById(`node-${n.id}`).querySelector('.timer').dataset.timer;
        if (n.timer === null || frac === undefined) continue;
        now.set(n.id, [`${n.timer[0]}-${n.timer[1]}`, Number(frac)]);
        const was = before.get(n.id);
        if (was && was[0] === `${n.timer[0]}-${n.timer[1]}`) {
          if (Number(frac) < was[1]) shrank++;
          if (Number(frac) > was[1]) grew++;
        }
      }
      before = now;
    }
    return { seen, badCount, shrank, grew, done: !!window.coracleState().scenario?.done };
  }, maxSteps);
}

// The logs as drawn match the state: one box per entry with its term and colour (one
// colour per term), dashed when not committed, the commit and applied marks, and the
// leader's nextIndex and matchIndex per follower, in the marks and in the table.
async function checkLogsDrawn(page) {
  const s = await state(page);
  const drawn = await page.evaluate(() => [...document.querySelectorAll('#logs g[id^=log-]')].map((g) => ({
    id: Number(g.id.slice(4)),
    entries: [...g.querySelectorAll('.entry')].map((e) => {
      const r = e.querySelector('rect');
      return [Number(e.dataset.index), Number(e.dataset.term), r.getAttribute('fill'), r.hasAttribute('stroke-dasharray')];
    }),
    commit: g.querySelector('.commit-mark')?.dataset.index,
    applied: g.querySelector('.applied-mark')?.dataset.index,
    markers: [...g.querySelectorAll('.marker')].map((m) => [m.dataset.what, Number(m.dataset.index)]),
  })));
  assert.equal(drawn.length, s.nodes.length);
  const colour = new Map();
  for (const n of s.nodes) {
    const row = drawn.find((d) => d.id === n.id);
    assert.deepEqual(row.entries.map(([i, t]) => [i, t]), n.log.map(([t], k) => [n.logFrom + k, t]), `S${n.id}'s boxes`);
    for (const [index, term, fill, dashed] of row.entries) {
      if (!colour.has(term)) colour.set(term, fill);
      assert.equal(colour.get(term), fill, `term ${term} has one colour`);
      assert.equal(dashed, index > n.commit, `S${n.id} index ${index}: dashed iff not committed`);
    }
    if (n.commit >= s.from) assert.equal(Number(row.commit), n.commit, `S${n.id}'s commit mark`);
    if (n.applied >= s.from) assert.equal(Number(row.applied), n.applied, `S${n.id}'s applied mark`);
  }
  const fills = [...colour.values()];
  assert.equal(new Set(fills).size, fills.length, 'different terms, different colours');
  const leader = leaders(s).sort((a, b) => b.term - a.term)[0];
  if (leader) {
    const table = await page.textContent('#progress');
    for (const [peer, next, match] of leader.progress) {
      const row = drawn.find((d) => d.id === peer);
      const inWindow = (i) => i >= s.from && i < s.from + s.window;
      const want = [['matchIndex', match], ['nextIndex', next]].filter(([, i]) => inWindow(i));
      assert.deepEqual(row.markers, want, `the leader's marks under S${peer}`);
      assert.ok(table.includes(`S${peer}: next ${next}, match ${match}`), table);
    }
  }
  return s;
}

test('the drawing: every message kind in flight, shrinking timer arcs, logs by term, commit, applied, next and match', async () => {
  const { page, problems } = await open('?seed=1');
  const seen = {};
  for (const id of ['replica-crash', 'transfer', 'figure-7']) {
    await page.click(`#scenario-${id}`);
    await pause(page);
    const run = await stepThrough(page, 20_000);
    assert.ok(run.done, `${id}: the scenario ended within 20,000 steps`);
    assert.equal(run.badCount, 0, `${id}: every AppendEntries shows its entry count`);
    assert.ok(run.shrank > 0 && run.grew === 0, `${id}: timer arcs shrink (${run.shrank} shrank, ${run.grew} grew)`);
    for (const [k, c] of Object.entries(run.seen)) seen[k] = (seen[k] || 0) + c;
    await checkLogsDrawn(page);
    await shot(page, `drawing-${id}`);
  }
  for (const kind of ['PreVote', 'PreVoteResponse', 'RequestVote', 'RequestVoteResponse', 'Heartbeat',
    'AppendEntries', 'AppendEntriesResponse', 'InstallSnapshot', 'InstallSnapshotResponse', 'TimeoutNow']) {
    assert.ok(seen[kind] > 0, `${kind} was drawn in flight: ${JSON.stringify(seen)}`);
  }
  // Mid-run, with uncommitted entries: a minority leader's write in the network split.
  await page.click('#scenario-net-split');
  await waitFor(page, () => window.coracleState().scenario.lines.length >= 2);
  await pause(page);
  const s = await checkLogsDrawn(page);
  assert.ok(s.nodes.some((n) => n.last > n.commit), 'an uncommitted entry is drawn');
  // The leader has no election timer: no arc.
  const leader = leaders(s)[0];
  assert.equal(await page.getAttribute(`#node-${leader.id} .timer`, 'd'), '');
  assert.deepEqual(problems, []);
  await page.close();
});

// What each scenario's narration claims at its end, read from the page's state and DOM
// (apart from the model's own verdict).
const CLAIMS = {
  'replica-crash': (s) => {
    assert.equal(leaders(s).length, 1);
    assert.ok(s.nodes.every((n) => n.up && n.applied === leaders(s)[0].commit), 'every node caught up');
    assert.ok(s.sent.some(([k, c]) => k === 'InstallSnapshot' && c > 0), 'a snapshot was sent');
  },
  'leader-crash': (s) => {
    const first = Number(/S(\d+) was elected leader of term (\d+)/.exec(s.scenario.lines[0][1])[2]);
    assert.equal(leaders(s).length, 1);
    assert.ok(leaders(s)[0].term > first, 'the new leader has a higher term');
    assert.ok(s.nodes.every((n) => n.up && n.term === leaders(s)[0].term));
  },
  'net-split': (s) => {
    assert.equal(leaders(s).length, 1);
    const l = leaders(s)[0];
    assert.ok(s.nodes.every((n) => n.last === l.last && n.commit === l.commit), 'the logs agree');
    assert.deepEqual(s.cut, []);
    // The minority leader's write (narrated with its index and term) was rolled back.
    const [, old] = /^S(\d+) leads term/.exec(s.scenario.lines[0][1]).map(Number);
    const [, index, term] = /at index (\d+) \(term (\d+)\)/.exec(s.scenario.lines[1][1]).map(Number);
    const n = s.nodes[old - 1];
    assert.notEqual(n.log[index - n.logFrom][0], term, `S${old}'s entry ${index} of term ${term} was replaced`);
    assert.ok(n.role === 'follower' && n.leader === l.id);
  },
  'two-leaders': (s) => {
    const ls = leaders(s);
    assert.equal(ls.length, 2, 'two leaders at once');
    assert.notEqual(ls[0].term, ls[1].term, 'in different terms');
    const [old, young] = ls.sort((a, b) => a.term - b.term);
    assert.ok(old.commit < old.last, 'the old leader\'s write is not committed');
    assert.equal(young.commit, young.last, 'the new leader\'s write is committed');
  },
  'node-start': (s) => {
    const five = s.nodes[4];
    assert.ok(five.up && five.role === 'follower');
    assert.equal(five.applied, leaders(s)[0].commit);
  },
  'cold-start': (s) => {
    assert.equal(leaders(s).length, 1);
    assert.ok(s.nodes.every((n) => n.up && n.applied === n.last && n.applied >= 4));
    assert.ok(s.nodes.every((n) => n.state === s.nodes[0].state));
  },
  'figure-7': (s) => {
    assert.equal(leaders(s)[0].id, 1);
    const terms = (n) => n.log.map(([t]) => t).join(',');
    assert.equal(terms(s.nodes[0]), `1,1,1,4,4,5,5,6,6,6,${s.nodes[0].term}`);
    assert.ok(s.nodes.every((n) => terms(n) === terms(s.nodes[0]) && n.commit === 11));
  },
  'figure-8': (s) => {
    // The entry of S3, S4 or S5's term (narrated) replaced S1's older one at index 2.
    const winner = s.scenario.lines.map(([, l]) => /wins term (\d+) and appends its no-op at index 2/.exec(l)).find(Boolean);
    const atTwo = s.nodes.map((n) => n.log[2 - n.logFrom][0]);
    assert.deepEqual(atTwo, s.nodes.map(() => Number(winner[1])), 'index 2 holds the newer term everywhere');
    const old = Number(/S1 leads term (\d+)/.exec(s.scenario.lines[0][1])[1]);
    assert.ok(Number(winner[1]) > old);
    const commit = Number(/Yet S1's commit index is (\d+)/.exec(s.scenario.lines.map(([, l]) => l).join(' '))[1]);
    assert.ok(commit < 2, 'S1 never counted the old entry as committed');
  },
  'partial-prevote': (s) => {
    const first = Number(/leads term (\d+)/.exec(s.scenario.lines[0][1])[1]);
    assert.equal(leaders(s).length, 1);
    assert.ok(s.nodes.every((n) => n.term === first), 'no term moved');
  },
  'partial-no-prevote': (s) => {
    const first = Number(/leads term (\d+)/.exec(s.scenario.lines[0][1])[1]);
    assert.equal(leaders(s).length, 1);
    assert.ok(leaders(s)[0].term > first, 'the leader was deposed');
  },
  'transfer': (s) => {
    const [, from, term] = /S(\d+) leads term (\d+)/.exec(s.scenario.lines[0][1]).map(Number);
    assert.equal(leaders(s).length, 1);
    assert.notEqual(leaders(s)[0].id, from);
    assert.equal(leaders(s)[0].term, term + 1);
    assert.ok(s.sent.some(([k]) => k === 'TimeoutNow'));
  },
  'learner': (s) => {
    assert.equal(s.nodes.length, 4);
    assert.equal(s.nodes[3].member, 'voter');
    assert.equal(s.nodes[3].applied, leaders(s)[0].commit);
  },
};

test('every scenario ends in the state its narration claims', async () => {
  const { page, problems } = await open('?seed=1');
  await setSpeed(page, FULL_SPEED);
  const ids = await page.$$eval('#scenarios button', (bs) => bs.map((b) => b.id.replace('scenario-', '')));
  assert.deepEqual(ids.sort(), Object.keys(CLAIMS).sort());
  for (const id of ids) {
    await page.click(`#scenario-${id}`);
    const s = await waitFor(page, (want) => {
      const sc = window.coracleState().scenario;
      return sc && sc.id === want && sc.done;
    }, id, 60_000);
    assert.equal(s.scenario.ok, true, `${id}: ${s.scenario.error}`);
    assert.match(await page.textContent('#verdict'), /ended as narrated/);
    assert.equal(await page.locator('#narration li').count(), s.scenario.lines.length);
    CLAIMS[id](s);
    await shot(page, `scenario-${id}`);
  }
  assert.deepEqual(problems, []);
  await page.close();
});

test('a nonsense seed or node count is refused with a message, and the run goes on', async () => {
  const { page, problems } = await open('?seed=5&nodes=3');
  for (const [seed, nodes, words] of [['banana', '5', /seed "banana" refused/], ['-1', '5', /seed/],
    ['1', '12', /node count "12" refused/], ['1', '', /node count/], ['1', '2.5', /node count/],
    ['99999999999999999999999', '3', /seed/]]) {
    await page.fill('#seed', seed);
    await page.fill('#nodes', nodes);
    const before = await state(page);
    await page.click('#start');
    assert.equal(await page.isVisible('#error'), true);
    assert.match(await page.textContent('#error'), words);
    await page.waitForTimeout(150);
    const after = await state(page);
    assert.ok(after.t > before.t, 'the run goes on');
    assert.equal(after.n, 3, 'the old run is still shown');
  }
  await page.fill('#seed', 'nope');
  await page.click('#scenario-leader-crash');
  assert.match(await page.textContent('#error'), /seed "nope" refused/);
  await page.fill('#seed', '7');
  await page.fill('#nodes', '4');
  await page.click('#start');
  assert.equal(await page.isVisible('#error'), false);
  assert.equal((await state(page)).n, 4);
  await page.close();
  // Nonsense in the address: the page starts with the defaults and says why.
  const other = await open('?seed=x&nodes=99');
  assert.match(await other.page.textContent('#error'), /refused/);
  assert.equal((await state(other.page)).n, 5);
  await other.page.close();
  assert.deepEqual(problems, []);
  assert.deepEqual(other.problems, []);
});

test('nonsense in the address (scenario, speed) is refused with a message, and a run starts', async () => {
  for (const [query, words] of [['?scenario=nonsense', /there is no scenario "nonsense"/],
    ['?speed=fast', /speed "fast" refused/], ['?speed=101', /speed "101" refused/],
    ['?scenario=leader-crash&seed=x', /seed "x" refused/]]) {
    const { page, problems } = await open(query);
    assert.equal(await page.isVisible('#error'), true, query);
    assert.match(await page.textContent('#error'), words);
    const before = await state(page);
    await page.waitForTimeout(150);
    assert.ok((await state(page)).t > before.t, `${query}: a run goes on`);
    assert.deepEqual(problems, []);
    await page.close();
  }
  const { page, problems } = await open('?scenario=transfer&seed=3&speed=100');
  assert.equal(await page.isVisible('#error'), false);
  const s = await state(page);
  assert.equal(s.scenario.id, 'transfer');
  assert.equal(s.speed, 1);
  assert.deepEqual(problems, []);
  await page.close();
});

test('a storm of random clicks never stops the page, and it never shows two leaders of one term', async () => {
  const { page, problems } = await open('?seed=8&nodes=5');
  await setSpeed(page, FULL_SPEED);
  // A fixed sequence (xorshift from a constant): nodes, lanes (one way and both), writes,
  // heal, step, pause/play, the timeline back and forth, a new run of another size.
  let x = 0x2545F491;
  const next = (n) => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return (x >>> 0) % n; };
  for (let i = 0; i < 250; i++) {
    const s = await state(page);
    const a = 1 + next(s.n), b = 1 + ((a + next(s.n - 1)) % s.n);
    switch (next(10)) {
      case 0: case 1: await page.click(`#node-${a}`, { force: true }); break;
      case 2: case 3: await page.click(`#lane-${a}-${b}`, { force: true, modifiers: next(2) ? ['Shift'] : [] }); break;
      case 4: await page.click('#write'); break;
      case 5: await page.click('#heal'); break;
      case 6: await page.click('#step'); break;
      case 7: await page.click('#play'); break;
      case 8: await seek(page, next(Math.max(1, Math.round(s.end / 1000)))); break;
      default:
        if (next(4) === 0) {
          await page.fill('#nodes', String(3 + next(5)));
          await page.click('#start');
        } else await page.waitForTimeout(40);
    }
    const now = await state(page);
    const terms = now.nodes.filter((n) => n.up && n.role === 'leader').map((n) => n.term);
    assert.equal(new Set(terms).size, terms.length, `step ${i}: two leaders in one term ${terms}`);
    assert.equal(now.error, null, `step ${i}`);
  }
  assert.deepEqual(problems, []);
  await page.close();
});

test('frame time with 7 nodes at full speed (measured, not asserted)', async () => {
  const { page, problems } = await open('?seed=1&nodes=7');
  await setSpeed(page, FULL_SPEED);
  await waitFor(page, () => window.coracleState().nodes.some((n) => n.role === 'leader'));
  // Writes keep AppendEntries with entries in flight too.
  for (let i = 0; i < 10; i++) await page.click('#write');
  await page.waitForTimeout(1000);
  await page.evaluate(() => window.coracleFrameStats(true));
  await page.waitForTimeout(5000);
  const stats = await page.evaluate(() => window.coracleFrameStats());
  const s = await state(page);
  const report = {
    nodes: 7, speed: s.speed, frames: stats.frames,
    work_ms: stats.work, interval_ms: stats.interval,
    fps: 1000 / stats.interval.mean,
  };
  fs.writeFileSync(path.join(SHOTS, 'frame-time.json'), JSON.stringify(report, null, 2));
  console.log(`frame time, 7 nodes, full speed: page work per frame mean ${stats.work.mean.toFixed(2)} ms, ` +
    `p95 ${stats.work.p95.toFixed(2)} ms, max ${stats.work.max.toFixed(2)} ms; frame interval mean ` +
    `${stats.interval.mean.toFixed(2)} ms (${report.fps.toFixed(1)} frames/s), p95 ${stats.interval.p95.toFixed(2)} ms`);
  assert.ok(stats.frames > 0);
  await shot(page, 'seven-nodes');
  assert.deepEqual(problems, []);
  await page.close();
});
