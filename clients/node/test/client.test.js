'use strict';
// The Node client against a real 2-worker node: what a user of the package observes.
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const tscale = require('..');
const { Node, waitUntil, uniq, nameFor } = require('./helpers');

let node, c;
test.before(async () => {
  node = await new Node({ workers: 2 }).start();
  c = await tscale.connect(node.addr, { name: 'node-test' });
});
test.after(async () => {
  if (c) await c.close();
  if (node) await node.stop();
});


test('WELCOME gives the shard map; the client holds one connection per worker', async () => {
  assert.deepEqual(c.info.ports, [node.port, node.port + 1]);
  assert.deepEqual(c.info.shard, { hash: 'crc32', count: 2 });
  // Figures of other workers in STATUS are up to about 1 s old.
  await waitUntil(async () => (await c.status()).workers.every((w) => w.clients >= 1),
    'every worker to count a connection of ours');
});

test('wildcard and literal subscriptions get events owned by either worker, bytes and headers exact', async () => {
  const p = uniq();
  const names = [nameFor(0, 2, `${p}.a`), nameFor(1, 2, `${p}.b`)];
  const wild = await c.subscribe(`${p}.>`);
  const lit = await c.subscribe(names[1]);
  const sent = names.map((n) => ({ name: n, data: crypto.randomBytes(300), headers: { 'k-ü': 'v\u00e9', e: '' } }));
  for (const e of sent) c.publish(e.name, e.data, { headers: e.headers });
  const got = [await wild.nextMsg(5000), await wild.nextMsg(5000)];   // the two names have different owners:
  got.sort((a, b) => a.name.localeCompare(b.name));                   // no order between them
  got.forEach((m, i) => {
    assert.equal(m.name, sent[i].name);
    assert.ok(m.data.equals(sent[i].data));
    assert.deepEqual(m.headers, sent[i].headers);
    assert.equal(m.reply, null);
  });
  const m = await lit.nextMsg(5000);
  assert.equal(m.name, names[1]);
  assert.notEqual(m.sid, wild.sid);
  await wild.unsubscribe();
  await lit.unsubscribe();
  const ended = await wild.next(1000);
  assert.equal(ended.done, true, 'an unsubscribed iterator ends');
});

test('a burst of publishes arrives complete and in order per name', async () => {
  const name = `${uniq()}.burst`;
  const sub = await c.subscribe(name);
  const N = 20000;
  for (let i = 0; i < N; i++) c.publish(name, Buffer.from(String(i)));
  let i = 0;
  for await (const m of sub) {
    assert.equal(m.data.toString(), String(i));
    if (++i === N) break;   // break ends the loop and unsubscribes
  }
  assert.equal(sub.dropped, 0);
});

test('a queue group gives each event to exactly one member', async () => {
  const name = `${uniq()}.work`;
  const got = [[], []];
  const members = await Promise.all([0, 1].map((j) => c.subscribe(name, { queue: 'workers',
    callback: (m) => got[j].push(Number(m.data.toString())) })));
  const N = 1000;
  for (let i = 0; i < N; i++) c.publish(name, String(i));
  await waitUntil(() => got[0].length + got[1].length >= N, 'every event delivered');
  await c.flush();
  assert.equal(got[0].length + got[1].length, N);
  assert.deepEqual([...got[0], ...got[1]].sort((a, b) => a - b), Array.from({ length: N }, (_, i) => i));
  assert.ok(got[0].length > 0 && got[1].length > 0, `both members served: ${got[0].length}/${got[1].length}`);
  for (const s of members) await s.unsubscribe();
});

test('request/reply, no responders, and a ">" monitor turning no-responders into a timeout', async () => {
  const p = uniq();
  const svc = await c.subscribe(`${p}.echo`, { callback: (m) => m.respond(Buffer.concat([Buffer.from('re:'), m.data]),
    { headers: { 'x-seen': m.headers.h } }) });
  const r = await c.request(`${p}.echo`, 'hi', { headers: { h: '1' }, timeout: 5000 });
  assert.equal(r.data.toString(), 're:hi');
  assert.deepEqual(r.headers, { 'x-seen': '1' });
  const many = await Promise.all(Array.from({ length: 50 }, (_, i) => c.request(`${p}.echo`, String(i), { headers: { h: '' }, timeout: 5000 })));
  assert.deepEqual(many.map((m) => m.data.toString()), Array.from({ length: 50 }, (_, i) => `re:${i}`));
  await assert.rejects(c.request(`${p}.nobody`, 'x', { timeout: 5000 }), tscale.NoResponders);
  const monitor = await c.subscribe('>', { callback: () => {} });
  await assert.rejects(c.request(`${p}.nobody`, 'x', { timeout: 300 }), tscale.TimeoutError);
  await monitor.unsubscribe();
  await svc.unsubscribe();
});

test('bad input is refused before it leaves, and the client keeps serving', async () => {
  assert.throws(() => c.publish('a b', 'x'), tscale.TscaleError);
  assert.throws(() => c.publish('a.*', 'x'), /wildcard/);
  assert.throws(() => c.publish('a.b', Buffer.alloc(c.maxPayload + 1)), /max_payload/);
  assert.throws(() => c.publish('a.b', 42), /payload must be/);
  await assert.rejects(c.subscribe('a.>.b'), /last token/);
  await assert.rejects(c.subscribe('a', { queue: 'g\u0007' }), /queue group/);
  const name = `${uniq()}.after`;
  const sub = await c.subscribe(name);
  c.publish(name, 'still fine');
  assert.equal((await sub.nextMsg(5000)).data.toString(), 'still fine');
  await sub.unsubscribe();
});

test('a node started with --token refuses a wrong token and serves the right one', async () => {
  const secured = await new Node({ workers: 2, token: 's3cret' }).start();
  try {
    // The token is checked at the ZeroMQ handshake (PLAIN): a wrong one is never served, and the
    // client reports the handshake's refusal at once rather than waiting for its timeout.
    const t0 = Date.now();
    await assert.rejects(tscale.connect(secured.addr, { token: 'wrong', connectTimeout: 8000 }),
      (e) => e instanceof tscale.ConnectError && /refused our credentials/.test(e.message));
    assert.ok(Date.now() - t0 < 4000, 'refused before the connect timeout');
    const ok = await tscale.connect(secured.addr, { token: 's3cret' });
    const sub = await ok.subscribe('tok.*');
    ok.publish('tok.x', 'y');
    assert.equal((await sub.nextMsg(5000)).data.toString(), 'y');
    await ok.close();
  } finally {
    await secured.stop();
  }
});
