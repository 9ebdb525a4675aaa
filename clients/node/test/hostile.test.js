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

test('queue replies that break section 19 fail only their own operation; the client goes on', async (t) => {
  const { encode } = require('@msgpack/msgpack');
  const port = await freePortBlock(1);
  const router = new zmq.Router({ linger: 0 });
  await router.bind(`tcp://127.0.0.1:${port}`);
  let inboxSid = null;
  const pubs = [];
  const serve = (async () => {   // a fake node: answers every queue request and confirm with what `answer` says
    for await (const [id, frame] of router) {
      const cmd = P.unpack(frame);
      if (cmd[0] === P.HELLO) await router.send([id, P.pack([P.WELCOME, 1, { ports: [port], shard: { hash: 'crc32', count: 1 }, max_payload: 1024, worker: 0 }])]);
      else if (cmd[0] === P.SUB) {
        if (cmd[2].endsWith('.q.*')) inboxSid = cmd[1];
        await router.send([id, P.pack([P.OK, cmd[4]])]);
      } else if (cmd[0] === P.PING) await router.send([id, P.pack([P.PONG, cmd[1]])]);
      else if (cmd[0] === P.PUB) {
        for (let i = 1; i < cmd.length; i += 3) {
          const meta = cmd[i + 2];
          pubs.push({ name: cmd[i], payload: cmd[i + 1], meta });
          if (!meta || !meta[1]) continue;
          const replies = answer(cmd[i], meta);
          for (const [name, payload] of replies) await router.send([id, P.pack([P.MSG, inboxSid, name, payload, null])]);
        }
      }
    }
  })().catch(() => {});
  let answer = () => [];
  const c = await tscale.connect(`127.0.0.1:${port}`, { connectTimeout: 5000 });
  t.after(async () => { await c.close(0); router.close(); await serve; });
  c.on('error', () => {});

  answer = (name, meta) => [[meta[1], Buffer.from([0xc1])]];                      // not msgpack
  await assert.rejects(c.queueInfo('q', 3000), /undecodable reply/);
  answer = (name, meta) => [[meta[1], encode({ ok: 'not a map' })]];
  await assert.rejects(c.queueInfo('q', 3000), /unexpected reply/);
  answer = (name, meta) => [[meta[1], encode({ msgs: [[1, 'a.b', 'text, not bin', null, 1, 0]], done: true })]];
  await assert.rejects(c.consumer('q', 'g').fetch(5, 100), /malformed messages/);
  answer = (name, meta) => [[meta[0]['Tscale-Confirm'], encode({ acks: [[meta[1], 'q', 'seven', false]], errors: 3 })],
    [meta[1], encode({ queue: 5 })]];
  await assert.rejects(c.publish('a.b', 'x', { confirm: true, timeout: 3000 }), /unexpected confirm/);
  answer = (name, meta) => [[meta[0]['Tscale-Confirm'], encode({ acks: [[meta[1], 'q', 7, false]], errors: [] })]];
  const ack = await c.publish('a.b', 'y', { confirm: true, timeout: 3000 });
  assert.deepEqual({ ...ack }, { queue: 'q', seq: 7, duplicate: false });
  assert.equal(c._confirmsOut, 0, 'every confirm slot released');
  await c.flush(5000);
  assert.equal(c.badFrames, 0, 'the frames were good; only their payloads were not');
});
