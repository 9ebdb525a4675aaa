'use strict';
// A network blip: the client's TCP connection is cut on its side only, the node keeps
// its end open (a NAT reset whose RST never reaches the node).  The client reconnects
// with its fixed routing id and, because the node's ROUTER sets ROUTER_HANDOVER, is
// served again at once with its subscription (without handover it was not served for
// 30 s in this setup).  A TCP proxy on 127.0.0.2 sits in front of a 1-worker node
// listening on 127.0.0.1 with the same port, so WELCOME's port leads back to the proxy.
const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const tscale = require('..');
const { Node, waitUntil } = require('./helpers');

test('after a one-sided TCP cut the client is served again with its subscription', async (t) => {
  const node = await new Node({ workers: 1 }).start();
  const pairs = [];
  const proxy = net.createServer((down) => {
    const up = net.connect(node.port, '127.0.0.1');
    pairs.push({ down, up });
    down.on('data', (d) => up.write(d));
    up.on('data', (d) => { if (!down.destroyed) down.write(d); });
    down.on('error', () => {});
    up.on('error', () => {});
  });
  await new Promise((resolve) => proxy.listen(node.port, '127.0.0.2', resolve));
  const c = await tscale.connect(`127.0.0.2:${node.port}`, { name: 'blip' });
  const pub = await tscale.connect(node.addr, { name: 'blip-pub' });
  t.after(async () => {
    await c.close(0);
    await pub.close(0);
    for (const { up, down } of pairs) { up.destroy(); down.destroy(); }
    proxy.close();
    await node.stop();
  });
  const sub = await c.subscribe('blip.x');
  pub.publish('blip.x', 'before');
  assert.equal((await sub.nextMsg(5000)).data.toString(), 'before');
  assert.equal(pairs.length, 1);

  pairs[0].down.resetAndDestroy();   // the client sees a reset; the node's side stays open
  let n = 0;
  const m = await waitUntil(async () => {
    pub.publish('blip.x', String(n++));
    const r = await sub.next(50).catch(() => null);
    return r && r.value;
  }, 'an event through the new connection', 20000, 0);
  assert.equal(m.name, 'blip.x');
  assert.ok(pairs.length >= 2, 'the client came back through a new TCP connection');
});
