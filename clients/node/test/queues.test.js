'use strict';
// Durable queues (docs/QUEUES.md) from the Node client against real nodes: confirmed publish
// (pipelined, idempotent with msgId), consume with ack / nak / term, redelivery after ack_wait,
// typed errors, and the Python client and CLI on the other side of a queue both ways.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const tscale = require('..');
const { Node, Py, waitUntil, uniq, cli } = require('./helpers');

let node, broken, c;
const procs = [];
/** A queue name (A-Z a-z 0-9 _ -) and a subject prefix of its own. */
const qname = (p) => { const id = uniq(p).replace(/[^A-Za-z0-9_-]/g, '_'); return [id, `${id}.ev`]; };

test.before(async () => {
  node = new Node({ workers: 2 });
  // A node whose only worker's queue database is not an sqlite file: its queues are unavailable.
  broken = new Node({ workers: 1 });
  fs.mkdirSync(path.join(broken.dataDir, 'queues'), { recursive: true });
  fs.writeFileSync(path.join(broken.dataDir, 'queues', 'w0.db'), Buffer.alloc(8192, 'not sqlite '));
  await Promise.all([node.start(), broken.start()]);
  c = await tscale.connect(node.addr, { name: 'node-queues' });
});
test.after(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  if (c) await c.close();
  await Promise.all([node, broken].map((n) => n && n.stop()));
});

test('confirmed publish (pipelined, msgId dedupe), then fetch and ack; info, list, purge, remove', async () => {
  const [q, subj] = qname('jobs');
  const info = await c.queueAdd(q, `${subj}.>`, { ackWait: 30, maxDeliver: 5 });
  assert.equal(info.config.name, q);
  assert.deepEqual(info.config.subjects, [`${subj}.>`]);
  assert.equal(info.config.ack_wait, 30);
  // a window of confirms: 300 publishes in flight without awaiting each
  const N = 300;
  const acks = await Promise.all(Array.from({ length: N }, (_, i) =>
    c.publish(`${subj}.${i % 3}`, `job-${i}`, { confirm: true, headers: { i: String(i) }, msgId: `m${i}` })));
  assert.ok(acks.every((a) => a instanceof tscale.PubAck && a.queue === q && a.duplicate === false));
  assert.deepEqual(acks.map((a) => a.seq).sort((a, b) => a - b), Array.from({ length: N }, (_, i) => i + 1));
  const again = await c.publish(`${subj}.0`, 'job-0 again', { confirm: true, msgId: 'm0' });
  assert.deepEqual({ ...again }, { queue: q, seq: acks[0].seq, duplicate: true });

  const cons = c.consumer(q, 'workers');
  const got = [];
  while (got.length < N) {
    const msgs = await cons.fetch(100, 5000);
    for (const m of msgs) {
      assert.ok(m instanceof tscale.QueueMsg);
      assert.equal(m.deliveries, 1);
      got.push(m);
      m.ack();
    }
  }
  assert.deepEqual(got.map((m) => m.seq), Array.from({ length: N }, (_, i) => i + 1), 'first deliveries in sequence order');
  const bySeq = new Map(acks.map((a, i) => [a.seq, i]));
  for (const m of got) {
    const i = bySeq.get(m.seq);
    assert.equal(m.name, `${subj}.${i % 3}`);
    assert.ok(Buffer.isBuffer(m.data) && m.data.toString() === `job-${i}`);
    assert.deepEqual(m.headers, { i: String(i), 'Tscale-Msg-Id': `m${i}` });
    assert.equal(typeof m.time, 'number');
  }
  assert.deepEqual(await cons.fetch(10, 200), [], 'nothing left');
  await c.flush();   // the acks are fire-and-forget events: flush orders them before the info request
  const g = (await c.queueInfo(q)).groups.workers;
  assert.equal(g.acked, N);
  assert.equal(g.ack_pending, 0);
  assert.ok((await c.queueList()).some((d) => d.config.name === q));
  assert.equal(await c.queuePurge(q), N);
  await c.queueRemove(q);
  await assert.rejects(c.queueInfo(q), tscale.QueueNotFound);
});

test('the confirm window bounds outstanding confirms and keeps them pipelined', async () => {
  const [q, subj] = qname('win');
  const w = await tscale.connect(node.addr, { confirmWindow: 8 });
  try {
    await w.queueAdd(q, `${subj}.*`);
    let maxOut = 0;
    const ps = Array.from({ length: 200 }, (_, i) => {
      const p = w.publish(`${subj}.x`, String(i), { confirm: true });
      maxOut = Math.max(maxOut, w._confirmsOut);
      return p;
    });
    const acks = await Promise.all(ps);
    assert.deepEqual(acks.map((a) => a.seq), Array.from({ length: 200 }, (_, i) => i + 1), 'one name, one publisher: stored in order');
    assert.ok(maxOut <= 8, `at most 8 outstanding (${maxOut})`);
    assert.equal(w._confirmsOut, 0);
    await w.queueRemove(q);
  } finally {
    await w.close();
  }
});

test('an unacked delivery comes back after ack_wait; nak redelivers, term never does', async () => {
  const [q, subj] = qname('redo');
  await c.queueAdd(q, `${subj}.*`, { ackWait: 0.5 });
  for (const x of ['a', 'b', 'c']) await c.publish(`${subj}.${x}`, x, { confirm: true });
  const cons = c.consumer(q, 'g');
  const [a, b, cc] = await cons.fetch(3, 5000);
  assert.deepEqual([a, b, cc].map((m) => [m.data.toString(), m.deliveries]), [['a', 1], ['b', 1], ['c', 1]]);
  b.nak();            // at once
  cc.term();          // never again
  // a: neither acked nor answered; it comes back once ack_wait (0.5 s) has passed
  const seen = new Map();
  await waitUntil(async () => {
    for (const m of await cons.fetch(10, 1000)) {
      seen.set(m.data.toString(), m.deliveries);
      m.ack();
    }
    return seen.has('a') && seen.has('b');
  }, 'a redelivered after ack_wait and b after its nak', 15000, 0);
  assert.deepEqual(Object.fromEntries(seen), { a: 2, b: 2 }, 'c was terminated and never redelivered');
  assert.deepEqual(await cons.fetch(10, 800), []);
  await c.flush();
  const g = (await c.queueInfo(q)).groups.g;
  assert.equal(g.acked, 2);
  assert.equal(g.terminated, 1);
  assert.equal(g.redelivered, 2);

  // nak with a delay: not before it
  await c.publish(`${subj}.d`, 'd', { confirm: true });
  const [d] = await cons.fetch(1, 5000);
  const t0 = Date.now();
  d.nak(700);
  let back = [];
  while (back.length === 0) back = await cons.fetch(1, 3000);
  assert.equal(back[0].seq, d.seq);
  assert.ok(Date.now() - t0 >= 600, `redelivered after ${Date.now() - t0} ms, not before the 700 ms delay`);
  back[0].inProgress();
  back[0].ack();
  await c.queueRemove(q);
});

test('async iteration over a consumer, and break ends it', async () => {
  const [q, subj] = qname('iter');
  await c.queueAdd(q, `${subj}.>`);
  await Promise.all(Array.from({ length: 25 }, (_, i) => c.publish(`${subj}.n`, String(i), { confirm: true })));
  const out = [];
  for await (const m of c.consumer(q, 'it', { batch: 7 })) {
    out.push(Number(m.data.toString()));
    m.ack();
    if (out.length === 25) break;
  }
  assert.deepEqual(out, Array.from({ length: 25 }, (_, i) => i));
  // an iteration waiting on an empty queue ends when its client closes
  const other = await tscale.connect(node.addr);
  const it = other.consumer(q, 'it')[Symbol.asyncIterator]();
  const pending = it.next();
  await waitUntil(() => other._qHandlers.size > 0, 'the fetch in flight');
  await other.close();
  assert.deepEqual(await pending, { value: undefined, done: true });
  await assert.rejects(c.publish(`${subj}.n`, 'x', { confirm: true, reply: 'r.1' }), /reply name of its own/);
  await c.queueRemove(q);
});

test('errors are typed: unknown queue, no queue, unavailable queue, bad names before sending', async () => {
  await assert.rejects(c.queueInfo(`nope_${process.pid}`), (e) => e instanceof tscale.QueueNotFound && e.code === 'queue_not_found');
  await assert.rejects(c.publish(`${uniq('nobody')}.x`, 'x', { confirm: true }),
    (e) => e instanceof tscale.NoQueue && e instanceof tscale.QueueError && e instanceof tscale.ServerError);
  await assert.rejects(c.queueAdd('bad name', 'x.>'), /queue name must be/);
  await assert.rejects(c.queueAdd('ok', 'x..y'), /empty token/);
  await assert.rejects(c.queueAdd('ok', 'x.>', { ackwait: 3 }), /unknown queue option/);
  assert.throws(() => c.consumer('q', 'bad group'), /group name/);
  await assert.rejects(c.publish('a b', 'x', { confirm: true }), /whitespace/);
  const [q, subj] = qname('cfg');
  await assert.rejects(c.queueAdd(q, `${subj}.>`, { ackWait: -1 }), (e) => e instanceof tscale.BadQueueConfig);
  const b = await tscale.connect(broken.addr);
  try {
    await assert.rejects(b.queueAdd(q, `${subj}.>`), (e) => e instanceof tscale.QueueUnavailable && e.code === 'queue_unavailable');
    const sub = await b.subscribe(`${subj}.*`);           // pub/sub goes on
    b.publish(`${subj}.x`, 'still');
    assert.equal((await sub.nextMsg(5000)).data.toString(), 'still');
  } finally {
    await b.close();
  }
});

test('python publishes with confirm, node consumes and acks', async () => {
  const [q, subj] = qname('py2node');
  await c.queueAdd(q, `${subj}.*`);
  const pub = new Py(node.addr, 'qpub', `${subj}.x`, '40');
  procs.push(pub);
  const { acks } = await pub.line((l) => l.acks, 'the python publisher\'s acks');
  assert.deepEqual(acks.map((a) => [a[0], a[2]]), Array.from({ length: 40 }, () => [q, false]));
  assert.deepEqual(acks.map((a) => a[1]), Array.from({ length: 40 }, (_, i) => i + 1));
  const cons = c.consumer(q, 'js');
  const got = [];
  while (got.length < 40) for (const m of await cons.fetch(40, 5000)) { got.push(m); m.ack(); }
  assert.deepEqual(got.map((m) => [m.seq, m.name, m.data.toString(), m.headers]),
    Array.from({ length: 40 }, (_, i) => [i + 1, `${subj}.x`, `py-${i}`, { i: String(i), 'Tscale-Msg-Id': `py-${i}` }]));
  await c.flush();
  assert.equal((await c.queueInfo(q)).groups.js.acked, 40);
  await c.queueRemove(q);
});

test('node publishes with confirm, `tscale consume` (the Python client) consumes and acks', async () => {
  const [q, subj] = qname('node2py');
  await c.queueAdd(q, `${subj}.>`);
  const payloads = [Buffer.from('plain text'), Buffer.from([0, 1, 2, 255, 254]), Buffer.alloc(0), Buffer.from('ünï ✓')];
  const acks = await Promise.all(payloads.map((d, i) => c.publish(`${subj}.k${i}`, d, { confirm: true, headers: { n: String(i) } })));
  const r = await cli(['consume', q, '--group', 'py', '--count', String(payloads.length), '--timeout', '20', '--json', '--server', node.addr]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((l) => l.seq), acks.map((a) => a.seq));
  lines.forEach((l, i) => {
    assert.equal(l.queue, q);
    assert.equal(l.name, `${subj}.k${i}`);
    assert.deepEqual(l.encoding === 'hex' ? Buffer.from(l.data, 'hex') : Buffer.from(l.data, 'utf8'), payloads[i]);
    assert.deepEqual(l.headers, { n: String(i) });
  });
  await waitUntil(async () => (await c.queueInfo(q)).groups.py.acked === payloads.length, 'the CLI\'s acks');
  await c.queueRemove(q);
});

test('confirm batch and reply names are owned by the worker that answers (no worker-to-worker hop)', async () => {
  const P = require('../lib/protocol');
  const n = c._core.workers;
  assert.equal(n, 2);
  for (const name of ['a.b', 'bench.x', 'orders.eu.created', 'x']) {
    const b = c._qBatchFor(name);
    assert.equal(P.shardOf(b, n), P.shardOf(name, n));
    assert.ok(b.startsWith(c._core.inboxPrefix + 'q.c'));
  }
  for (let k = 0; k < n; k++) assert.equal(P.shardOf(c._qReply(k), n), k);
  // and the confirms still arrive (on a batch name per worker)
  const [q, subj] = qname('owned');
  await c.queueAdd(q, `${subj}.>`);
  const acks = await Promise.all(['a', 'b', 'c', 'd'].map((t) => c.publish(`${subj}.${t}`, Buffer.from(t), { confirm: true })));
  assert.deepEqual(acks.map((a) => a.seq).sort(), [1, 2, 3, 4]);
  await c.queueRemove(q);
});
