'use strict';
// Cross-language checks: the Node client and the Python client (tscale/client.py) on one node.
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const tscale = require('..');
const { Node, Py, waitUntil, uniq } = require('./helpers');

let node, c;
const procs = [];
const py = (...args) => { const p = new Py(node.addr, ...args); procs.push(p); return p; };
test.before(async () => {
  node = await new Node({ workers: 2 }).start();
  c = await tscale.connect(node.addr, { name: 'node-cross' });
});
test.after(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  if (c) await c.close();
  if (node) await node.stop();
});

// Payloads with every byte value, empty ones, and headers with non-ASCII text.
function events(prefix, n) {
  return Array.from({ length: n }, (_, i) => ({
    name: `${prefix}.${i % 7}`,
    data: i === 0 ? Buffer.alloc(0) : i === 1 ? Buffer.from(Array.from({ length: 256 }, (_, b) => b)) : crypto.randomBytes(1 + (i * 37) % 500),
    headers: i % 3 === 0 ? null : { seq: String(i), 'clé': 'välue ✓', empty: '' },
    reply: i % 5 === 0 ? `${prefix}.reply.${i}` : null,
  }));
}

// One publisher, one subscriber: order holds per name (not across names, which may
// have different owner workers), so compare name by name; `got` carries hex payloads.
function samePerName(got, sent) {
  assert.equal(got.length, sent.length);
  for (const n of new Set(sent.map((e) => e.name))) {
    const want = sent.filter((e) => e.name === n).map((e) => [e.data.toString('hex'), e.headers, e.reply]);
    assert.deepEqual(got.filter((e) => e.name === n).map((e) => [e.data, e.headers, e.reply]), want, `events on ${n}`);
  }
}

test('python publishes, node receives: byte-exact payloads, headers and reply names', async () => {
  const p = uniq('py2node');
  const sub = await c.subscribe(`${p}.*`);
  const sent = events(p, 60);
  const pub = py('pub');
  await pub.ready();
  for (const e of sent) pub.send({ name: e.name, data: e.data.toString('hex'), headers: e.headers, reply: e.reply });
  pub.send('flush');
  const got = [];
  while (got.length < sent.length) {
    const m = await sub.nextMsg(10000);
    got.push({ name: m.name, data: m.data.toString('hex'), headers: m.headers, reply: m.reply });
  }
  samePerName(got, sent);
  await sub.unsubscribe();
});

test('node publishes, python receives: byte-exact payloads, headers and reply names', async () => {
  const p = uniq('node2py');
  const sub = py('sub', `${p}.*`);
  await sub.ready();
  const sent = events(p, 60);
  for (const e of sent) c.publish(e.name, e.data, { headers: e.headers, reply: e.reply });
  await waitUntil(() => sub.events().length >= sent.length, 'every event at the python subscriber');
  samePerName(sub.events(), sent);
});

test('a queue group with a node member and a python member: each event exactly once', async () => {
  const name = `${uniq('qg')}.jobs`;
  const pyMember = py('sub', name, 'mixed');
  await pyMember.ready();
  const mine = [];
  const nodeMember = await c.subscribe(name, { queue: 'mixed', callback: (m) => mine.push(Number(m.data.toString())) });
  const N = 2000;
  for (let i = 0; i < N; i++) c.publish(name, String(i));
  await waitUntil(() => mine.length + pyMember.events().length >= N, 'every job delivered once');
  await c.flush();
  const at = pyMember.lines.length;
  pyMember.send('count');
  const { count } = await pyMember.line((l) => l.count !== undefined, 'count', at);
  const theirs = pyMember.events().map((e) => Number(Buffer.from(e.data, 'hex').toString()));
  assert.equal(count, theirs.length);
  assert.equal(mine.length + theirs.length, N, 'no job twice');
  assert.deepEqual([...mine, ...theirs].sort((a, b) => a - b), Array.from({ length: N }, (_, i) => i));
  assert.ok(mine.length > 0 && theirs.length > 0, `both members served: node ${mine.length}, python ${theirs.length}`);
  await nodeMember.unsubscribe();
});

test('request/reply both ways: node asks python, python asks node', async () => {
  const p = uniq('rr');
  const server = py('serve', `${p}.py`);
  await server.ready();
  const data = crypto.randomBytes(64);
  const r = await c.request(`${p}.py`, data, { timeout: 5000 });
  assert.ok(r.data.equals(Buffer.concat([Buffer.from('py:'), data])));
  assert.deepEqual(r.headers, { by: 'python' });

  const svc = await c.subscribe(`${p}.node`, { callback: (m) => m.respond(Buffer.concat([Buffer.from('js:'), m.data]), { headers: { by: 'node' } }) });
  const asker = py('request', `${p}.node`, 'c0ffee');
  const ans = await asker.line((l) => l.data !== undefined || l.error, 'reply');
  assert.deepEqual(ans, { data: Buffer.from('js:').toString('hex') + 'c0ffee', headers: { by: 'node' } });
  await svc.unsubscribe();

  const nobody = py('request', `${p}.nobody`, '00');
  assert.deepEqual(await nobody.line((l) => l.data !== undefined || l.error, 'reply'), { error: 'NoResponders' });
  await assert.rejects(c.request(`${p}.nobody`, 'x', { timeout: 5000 }), tscale.NoResponders);
});
