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
