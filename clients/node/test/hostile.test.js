'use strict';
// The client's inbound boundary: a fake node (a real zeromq ROUTER in this process)
// sends frames that break the protocol.  The client drops and counts each one, keeps
// the good events of a MSG frame, and goes on serving.
const test = require('node:test');
const assert = require('node:assert/strict');
const zmq = require('zeromq');
const tscale = require('..');
const P = require('../lib/protocol');
const { freePortBlock, waitUntil } = require('./helpers');

test('frames that break the protocol are dropped and counted; the client keeps serving and answers PING', async (t) => {
  const port = await freePortBlock(1);
  const router = new zmq.Router({ linger: 0 });
  await router.bind(`tcp://127.0.0.1:${port}`);
  let peer = null;
  const seen = [];
  const serve = (async () => {   // a minimal node: WELCOME, OK, PONG
    for await (const [id, frame] of router) {
      const cmd = P.unpack(frame);
      seen.push(cmd);
      peer = id;
      if (cmd[0] === P.HELLO) await router.send([id, P.pack([P.WELCOME, 1, { ports: [port], shard: { hash: 'crc32', count: 1 }, max_payload: 1024, worker: 0 }])]);
      else if (cmd[0] === P.SUB) await router.send([id, P.pack([P.OK, cmd[4]])]);
      else if (cmd[0] === P.PING) await router.send([id, P.pack([P.PONG, cmd[1]])]);
    }
  })().catch(() => {});
  const c = await tscale.connect(`127.0.0.1:${port}`, { connectTimeout: 5000 });
  t.after(async () => { await c.close(0); router.close(); await serve; });
  const errors = [];
  c.on('error', (e) => errors.push(e.message));
  const sub = await c.subscribe('a.*');
  const sid = sub.sid;
  const deep = Buffer.concat([Buffer.alloc(100000, 0x91), Buffer.from([0xc0])]);   // 100,000 nested arrays
  const hostile = [
    Buffer.from([0xc1]),                                     // not msgpack
    Buffer.from('92a161a162', 'hex'),                        // an array not starting with an int
    P.pack([]),
    P.pack([P.MSG, sid, 'a.b', Buffer.from('x')]),           // 3 items, not a quadruple
    P.pack([P.WELCOME, 1, { ports: ['x'], shard: { count: 1 } }]),
    P.pack([P.WELCOME, 1, { ports: [port], shard: { hash: 'crc32', count: 2 }, max_payload: 1, worker: 0 }]),
    P.pack([P.ERR, 5, 'x', null, true]),
    P.pack([P.STATUS_REPLY, 1, 'not a map']),
    P.pack([99, 'a code from the future']),
    P.pack([P.OK]),
    deep,
    Buffer.from('dd7fffffff', 'hex'),                        // an array claiming 2^31 items
  ];
  // One MSG frame: good, bad payload (str), bad meta, bad headers, bad name, good.
  const mixed = P.pack([P.MSG,
    sid, 'a.one', Buffer.from('1'), null,
    sid, 'a.two', 'text, not bin', null,
    sid, 'a.three', Buffer.from('3'), [null],
    sid, 'a.four', Buffer.from('4'), [{ k: 1 }, null],
    sid, 5, Buffer.from('5'), null,
    sid, 'a.six', Buffer.from('6'), [{ k: 'v' }, 'r.1']]);
  for (const f of hostile) await router.send([peer, f]);
  await router.send([peer, mixed]);
  const got = [await sub.nextMsg(5000), await sub.nextMsg(5000)];
  assert.deepEqual(got.map((m) => [m.name, m.data.toString(), m.headers, m.reply]),
    [['a.one', '1', null, null], ['a.six', '6', { k: 'v' }, 'r.1']]);
  await waitUntil(() => c.badFrames === hostile.length + 4, `every bad frame counted (have ${c.badFrames})`);
  assert.equal(errors.length, c.badFrames, 'each one reported to the error listener');
  assert.match(c.lastError.message, /dropped a frame/);
  await c.flush(5000);                                       // still talking to the node
  c.publish('a.b', 'after');
  await waitUntil(() => seen.some((cmd) => cmd[0] === P.PUB && cmd[1] === 'a.b'), 'a publish after the attack');
  assert.deepEqual(c.info.ports, [port], 'a bad WELCOME changed nothing');
  await router.send([peer, P.pack([P.PING, 0])]);              // the node's liveness probe
  await waitUntil(() => seen.some((cmd) => cmd[0] === P.PONG && cmd[1] === 0), 'PONG to the node\'s PING');
});
