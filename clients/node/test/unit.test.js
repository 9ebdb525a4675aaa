'use strict';
// Sans-I/O parts: codec bytes, shard hash, name rules (checked against the Python rules), batching.
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const P = require('../lib/protocol');
const { ClientCore, BATCH_EVENTS } = require('../lib/core');
const { PYTHON, REPO } = require('./helpers');

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => s.replace(/\s+/g, '');

test('frames encode to the bytes of PROTOCOL.md section 17', () => {
  assert.equal(hex(P.pack([1, 1, { name: 'demo', lang: 'c', version: '0.1', direct: false }])), unhex(`
    93 01 01 84 a4 6e 61 6d 65 a4 64 65 6d 6f a4 6c 61 6e 67 a1 63 a7 76 65 72 73 69 6f 6e a3 30 2e
    31 a6 64 69 72 65 63 74 c2`));
  assert.equal(hex(P.pack([2, 'orders.eu.created', Buffer.from('hi'), null, 'orders.eu.paid', Buffer.from([1, 2]),
    [{ k: 'v' }, '_INBOX.a.1']])), unhex(`
    97 02 b1 6f 72 64 65 72 73 2e 65 75 2e 63 72 65 61 74 65 64 c4 02 68 69 c0 ae 6f 72 64 65 72 73
    2e 65 75 2e 70 61 69 64 c4 02 01 02 92 81 a1 6b a1 76 aa 5f 49 4e 42 4f 58 2e 61 2e 31`));
  assert.equal(hex(P.pack([3, 1, 'orders.*.created', null, 7])),
    unhex('95 03 01 b0 6f 72 64 65 72 73 2e 2a 2e 63 72 65 61 74 65 64 c0 07'));
  assert.deepEqual(P.unpack(Buffer.from('921207', 'hex')), [18, 7]);
  const msg = P.unpack(Buffer.from(unhex('95 11 01 b1 6f 72 64 65 72 73 2e 65 75 2e 63 72 65 61 74 65 64 c4 02 68 69 c0'), 'hex'));
  assert.equal(msg[2], 'orders.eu.created');
  assert.ok(msg[3] instanceof Uint8Array && hex(msg[3]) === '6869', 'a bin payload decodes to bytes, not a string');
  assert.equal(hex(P.pack([4, 1, 8])), '93040108');
  assert.equal(hex(P.pack([8])), '9108');
});

test('unpack refuses what is not a command frame', () => {
  for (const bad of ['c1', '01', '90', '91a161', 'dc', '92c0c0']) assert.equal(P.unpack(Buffer.from(bad, 'hex')), null, bad);
});

test('crc32 and owner match PROTOCOL.md section 8', () => {
  assert.equal(P.crc32(Buffer.from('123456789')), 0xcbf43926);
  assert.equal(P.crc32(Buffer.from('orders.eu.created')), 4155747790);
  assert.equal(P.shardOf('orders.eu.created', 4), 2);
  assert.equal(P.shardOf('greet.en', 2), 1);
  assert.equal(P.shardOf('anything', 1), 0);
});

test('name, pattern and group rules agree with tscale/subjects.py and the worker', () => {
  const samples = ['a', 'a.b', 'a..b', '.a', 'a.', 'a b', 'a\tb', 'a\u0000', 'a*', '*', '>', 'a.>', 'a.>.b', 'a.*.c',
    'a>b', 'ü.ñ', '日本.語', 'x'.repeat(512), 'x'.repeat(513), '😀'.repeat(512), '😀'.repeat(513), '', 'a.b>',
    'g\u00a0h', 'g\u200bh', 'tab\u000b', 'line\u2028', 'ok-group_1'];
  const py = `
import json, sys
from tscale.subjects import group_error, name_error, pattern_error
s = json.loads(sys.stdin.read())
print(json.dumps([[name_error(x) is None, pattern_error(x) is None, group_error(x) is None] for x in s]))`;
  const want = JSON.parse(execFileSync(PYTHON, ['-c', py], { cwd: REPO, input: JSON.stringify(samples) }));
  samples.forEach((s, i) => {
    assert.deepEqual([P.nameError(s) === null, P.patternError(s) === null, P.groupError(s) === null], want[i],
      `rules disagree for ${JSON.stringify(s)}`);
  });
});

test('core batches per owner: a full batch is announced, frames carry at most 1000 events', () => {
  const core = new ClientCore();
  core.welcome([16, 1, { ports: [1, 2], shard: { hash: 'crc32', count: 2 }, max_payload: 1024 }]);
  const name = 'greet.en';   // owner 1 of 2
  const frames = [];
  for (let i = 0; i < 2500; i++) {
    const k = core.addEvent(name, Buffer.from([i & 255]), null, null);
    if (k < 0) frames.push(core.takeBatch(-1 - k));
  }
  assert.equal(core.takeBatch(0), null, 'nothing was batched for the other worker');
  frames.push(core.takeBatch(1));
  assert.equal(core.takeBatch(1), null, 'taking a batch empties it');
  const decoded = frames.map((f) => P.unpack(f));
  assert.deepEqual(decoded.map((f) => (f.length - 1) / 3), [BATCH_EVENTS, BATCH_EVENTS, 500]);
  const payloads = decoded.flatMap((f) => f.filter((_, j) => j % 3 === 2).map((b) => b[0]));
  assert.deepEqual(payloads, Array.from({ length: 2500 }, (_, i) => i & 255), 'every event once, in order');
  assert.throws(() => core.addEvent(name, Buffer.alloc(1025), null, null), /max_payload/);
  assert.throws(() => core.addEvent('bad name', 'x', null, null), /whitespace/);
  assert.throws(() => core.addEvent('a.*', 'x', null, null), /wildcard/);
  assert.throws(() => core.addEvent(name, 'x', { k: 1 }, null), /must be a string/);
  assert.throws(() => core.newSub('a.>.b'), /last token/);
  assert.throws(() => core.newSub('a', 'has space'), /queue group/);
  assert.deepEqual(core.newSub('greet.en').targets, [1], 'a literal name is subscribed on its owner only');
  assert.deepEqual(core.newSub('greet.*').targets, [0, 1], 'a wildcard on every worker');
});

test('core refuses a WELCOME with another worker count after the first', () => {
  const core = new ClientCore();
  core.welcome([16, 1, { ports: [1, 2], shard: { hash: 'crc32', count: 2 }, max_payload: 10 }]);
  assert.throws(() => core.welcome([16, 1, { ports: [1, 2, 3], shard: { hash: 'crc32', count: 3 }, max_payload: 10 }]),
    /different worker count/);
});

test('queue replies pass a decoder: malformed ones fail only their own operation', () => {
  const Q = require('../lib/queues');
  const { encode } = require('@msgpack/msgpack');
  // confirm batches: good entries settle, bad ones are skipped, garbage gives nothing
  const batch = Q.decodeConfirmBatch(encode({ acks: [['r1', 'q', 3, false], ['r2', 'q', '4', false], 'x'],
    errors: [['r3', 'storage_full', 'disk full'], [1, 2, 3]] }));
  assert.equal(batch.length, 2);
  assert.deepEqual({ ...batch[0][1] }, { queue: 'q', seq: 3, duplicate: false });
  assert.ok(batch[1][1] instanceof Q.StorageFull && batch[1][1].code === 'storage_full');
  for (const junk of [Buffer.from([0xc1]), encode([1, 2]), encode({ acks: 5 }), Buffer.alloc(0)]) {
    assert.deepEqual(Q.decodeConfirmBatch(junk), []);
  }
  // lone confirms, replies, no responders
  assert.throws(() => Q.decodePubAck('a.b', Buffer.alloc(0), { Status: '503' }), Q.NoQueue);
  assert.throws(() => Q.decodePubAck('a.b', encode({ queue: 'q', seq: -1, duplicate: false }), null), /unexpected confirm/);
  assert.throws(() => Q.decodePubAck('a.b', encode({ error: 'queue_full', message: 'm' }), null), Q.QueueFull);
  assert.throws(() => Q.decodeReply(encode({ error: 'queue_unavailable', message: Q.STARTING }), null, 'x'), Q.QueueUnavailable);
  assert.throws(() => Q.decodeReply(encode({ error: 'brand_new', message: 'm' }), null, 'x'),
    (e) => e instanceof Q.QueueError && e.code === 'brand_new');
  assert.throws(() => Q.decodeReply(Buffer.from([0xc1]), null, 'x'), /undecodable/);
  assert.equal(Q.decodeReply(encode({ ok: 7 }), null, 'x'), 7);
  // fetch chunks
  const item = (seq) => [seq, 'a.b', Buffer.from('x'), null, 1, 1.5];
  let f = new Q.FetchCollector('q', 'g', () => {});
  assert.equal(f.feed(encode({ msgs: [item(1)], done: false }), null), false);
  assert.equal(f.feed(encode({ msgs: [item(2)], done: true }), null), true);
  assert.deepEqual(f.msgs.map((m) => [m.seq, m.data.toString()]), [[1, 'x'], [2, 'x']]);
  assert.equal(f.error, null);
  for (const bad of [encode({ msgs: [[1, 'a.b', 'str payload', null, 1, 1]] }), encode({ msgs: 'x' }), encode([1]), Buffer.from([0xc1])]) {
    f = new Q.FetchCollector('q', 'g', () => {});
    assert.equal(f.feed(bad, null), true);
    assert.ok(f.error instanceof Error && f.msgs.length === 0);
  }
  // answers are requests on $Q.<queue>
  const answers = [];
  const m = new Q.QueueMsg('q', 'g', item(9), (...a) => answers.push(a));
  m.ack(); m.nak(); m.nak(1500); m.inProgress(); m.term();
  assert.deepEqual(answers, [['ack', 9], ['nak', 9, null], ['nak', 9, 1.5], ['wip', 9], ['term', 9]]);
  assert.deepEqual(Q.lsSubjects(2).map((s) => P.shardOf(s, 2)), [0, 1]);
  assert.deepEqual(Q.queueConfig('q', 'a.>, b.*', { ackWait: 2, max_msgs: 5 }),
    { name: 'q', subjects: ['a.>', 'b.*'], ack_wait: 2, max_msgs: 5 });
});
