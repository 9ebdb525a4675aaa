'use strict';
// A worker SIGKILLed under a connected Node client: the supervisor restarts it and
// the client, by itself, says HELLO again and restores its subscriptions there.
const test = require('node:test');
const assert = require('node:assert/strict');
const tscale = require('..');
const { Node, Py, waitUntil, uniq, nameFor } = require('./helpers');


for (const token of [null, 's3cret']) {
  test(`a SIGKILLed worker comes back and the node client resumes subscriptions and requests${token ? ' (--token node)' : ''}`, async (t) => {
    const node = await new Node({ workers: 2, token }).start();
    const c = await tscale.connect(node.addr, { name: 'node-restart', token });
    let server;
    t.after(async () => {
      if (server) await server.stop();
      await c.close();
      await node.stop();
    });
    const p = uniq('rs');
    const victim = nameFor(1, 2, p);          // owned by the worker we kill
    const wild = await c.subscribe(`${p}.*`);
    const lit = await c.subscribe(victim);
    const svcName = nameFor(1, 2, `${p}.svc`);
    await c.subscribe(svcName, { callback: (m) => m.respond(m.data) });
    const reconnects = [];
    c.on('reconnect', (k) => reconnects.push(k));

    const before = await node.workerPids();
    process.kill(before[1], 'SIGKILL');
    await waitUntil(async () => {
      const pids = await node.workerPids();
      return pids[1] && pids[1] !== before[1];
    }, 'the supervisor to restart worker 1', 30000, 100);
    await waitUntil(() => reconnects.includes(1), 'the client to reconnect to worker 1');

    // Events published before the new worker has our HELLO and SUBs may be lost (at most
    // once), so publish until one arrives, then check both subscriptions and a request.
    let n = 0;
    await waitUntil(async () => {
      c.publish(victim, String(n++));
      const r = await wild.next(100).catch(() => null);
      return r && r.value && r.value.name === victim;
    }, 'an event on the restarted worker', 20000, 0);
    const m = await lit.nextMsg(5000);
    assert.equal(m.name, victim);
    const r = await c.request(svcName, 'back', { timeout: 5000 });
    assert.equal(r.data.toString(), 'back');

    // The python client sees the restored subscription too (it is the node's state, not ours).
    if (!token) {
      server = new Py(node.addr, 'request', svcName, '6f6b');
      assert.deepEqual(await server.line((l) => l.data !== undefined || l.error, 'reply'), { data: '6f6b', headers: null });
    }
  });
}
