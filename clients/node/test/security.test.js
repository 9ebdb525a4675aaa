'use strict';
// Credentials at the ZeroMQ handshake (docs/SECURITY.md) against real nodes: CURVE with a
// fresh client key, CURVE with client keys listed in a users file, PLAIN users with passwords
// and permissions.  Refusals must be a ConnectError with a reason, well within connectTimeout.
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const tscale = require('..');
const { keys } = tscale;
const { Node, PYTHON, REPO, waitUntil, uniq, nameFor, serverKeyOf, hashPassword } = require('./helpers');

let curve, keyed, users, tokened;
const carol = keys.newClientPair();       // listed in the CURVE node's users file, limited to c.>
const ops = keys.newClientPair();         // listed, no limits

async function curveNode() {
  const n = new Node({ workers: 2, extra: ['--curve'] });
  n.creds = { serverKey: await serverKeyOf(n.dataDir) };   // `tscale keys` creates the node key before the start
  return n.start();
}

async function keyedNode() {
  const n = new Node({ workers: 1 });
  const file = path.join(n.dir, 'users.toml');
  fs.writeFileSync(file, `[users.carol]\nkey = "${carol[0]}"\npublish = { allow = ["c.>"] }\nsubscribe = { allow = ["c.>", "_INBOX.>"] }\n\n` +
    `[users.ops]\nkey = "${ops[0]}"\n`);
  n.extra = ['--curve', '--users-file', file];
  n.creds = { serverKey: await serverKeyOf(n.dataDir), clientKey: ops[1] };
  return n.start();
}

async function usersNode() {
  const n = new Node({ workers: 2 });
  const [alice, bob] = await Promise.all([hashPassword('alice-pw'), hashPassword('bob-pw')]);
  const file = path.join(n.dir, 'users.toml');
  fs.writeFileSync(file, `[users.alice]\npassword = "${alice}"\npublish = { allow = ["orders.>"], deny = ["orders.secret.>"] }\n` +
    `subscribe = { allow = ["orders.>", "_INBOX.>"], deny = ["orders.secret.>"] }\n\n[users.bob]\npassword = "${bob}"\n`);
  n.extra = ['--users-file', file];
  n.creds = { user: 'bob', password: 'bob-pw' };
  return n.start();
}

async function tokenCurveNode() {
  const n = new Node({ workers: 1, token: 'tök-3n', extra: ['--curve'] });
  n.creds.serverKey = await serverKeyOf(n.dataDir, { TSCALE_TOKEN: 'tök-3n' });   // derived from the token
  return n.start();
}

test.before(async () => {
  [curve, keyed, users, tokened] = await Promise.all([curveNode(), keyedNode(), usersNode(), tokenCurveNode()]);
});
test.after(async () => {
  await Promise.all([curve, keyed, users, tokened].map((n) => n && n.stop()));
});

/** connect must fail with a ConnectError whose message matches `why`, in well under its timeout. */
async function refused(addr, opts, why) {
  const t0 = Date.now();
  await assert.rejects(tscale.connect(addr, { connectTimeout: 8000, ...opts }), (e) => {
    assert.ok(e instanceof tscale.ConnectError, `a ConnectError, not ${e && e.constructor.name}: ${e && e.message}`);
    assert.match(e.message, why);
    return true;
  });
  const ms = Date.now() - t0;
  assert.ok(ms < 4000, `refused after ${ms} ms: the handshake's failure is reported, not the timeout`);
}

test('key derivation matches tscale/keys.py; malformed keys are refused before connecting', async () => {
  const py = execFileSync(PYTHON, ['-c', 'import sys, json; from tscale import keys; ' +
    'print(json.dumps([keys.token_client_pair(sys.argv[1]), keys.pair_from_secret(sys.argv[2])]))', 'tök-3n', carol[1]],
  { cwd: REPO }).toString();
  assert.deepEqual(JSON.parse(py), [keys.tokenClientPair('tök-3n'), carol]);
  assert.equal(keys.z85Encode(Buffer.from('864fd26fb559f75b', 'hex')), 'HelloWorld');   // ZeroMQ RFC 32
  assert.deepEqual(keys.z85Decode('HelloWorld'), Buffer.from('864fd26fb559f75b', 'hex'));
  await assert.rejects(tscale.connect(curve.addr, { serverKey: 'short' }), /serverKey must be/);
  await assert.rejects(tscale.connect(curve.addr, { serverKey: curve.creds.serverKey, clientKey: 'short' }), /clientKey/);
  await assert.rejects(tscale.connect(curve.addr, { serverKey: curve.creds.serverKey,
    clientKey: { publicKey: ops[0], secretKey: carol[1] } }), /not one CURVE key pair/);
});

test('CURVE: a fresh client key pair connects, routes to both workers and answers requests', async () => {
  const c = await tscale.connect(curve.addr, { serverKey: curve.creds.serverKey, name: 'curve-node' });
  try {
    const p = uniq('cv');
    const sub = await c.subscribe(`${p}.>`);
    await c.subscribe(`${p}.double`, { callback: (m) => m.respond(Buffer.concat([m.data, m.data])) });
    for (let k = 0; k < 2; k++) c.publish(nameFor(k, 2, p), Buffer.alloc(4096, k));
    const names = new Set([(await sub.nextMsg(5000)).name, (await sub.nextMsg(5000)).name]);
    assert.deepEqual(names, new Set([nameFor(0, 2, p), nameFor(1, 2, p)]));
    assert.equal((await c.request(`${p}.double`, 'ab', { timeout: 5000 })).data.toString(), 'abab');
    const sec = (await c.status()).security;
    assert.equal(sec.clients, 'curve');
    assert.equal(sec.server_key, curve.creds.serverKey);
  } finally {
    await c.close();
  }
});

test('CURVE: a wrong server key, or none, fails fast with a clear ConnectError', async () => {
  await refused(curve.addr, { serverKey: keys.newClientPair()[0] }, /wrong server key/);
  await refused(curve.addr, {}, /asks for credentials.*serverKey/);
  await refused(curve.addr, { token: 'x' }, /node runs CURVE/);
});

test('CURVE with a token: the client key pair derived from the token is accepted, another token is not', async () => {
  const { serverKey } = tokened.creds;
  await refused(tokened.addr, { serverKey, token: 'other' }, /refused our credentials/);
  await refused(tokened.addr, { serverKey }, /refused our credentials/);   // a fresh key: not the token's
  const c = await tscale.connect(tokened.addr, { serverKey, token: 'tök-3n' });
  try {
    const sub = await c.subscribe('tk.*');
    c.publish('tk.x', 'derived');
    assert.equal((await sub.nextMsg(5000)).data.toString(), 'derived');
    assert.equal((await c.status()).security.clients, 'curve');
  } finally {
    await c.close();
  }
});

test('CURVE users by key: a listed clientKey is served with its permissions, an unknown key is refused', async () => {
  await refused(keyed.addr, { serverKey: keyed.creds.serverKey }, /refused our credentials/);   // a fresh, unlisted key
  const admin = await tscale.connect(keyed.addr, keyed.creds);
  const c = await tscale.connect(keyed.addr, { serverKey: keyed.creds.serverKey, clientKey: { publicKey: carol[0], secretKey: carol[1] } });
  try {
    const p = `c.${uniq('k')}`;
    const spy = await admin.subscribe('>');
    const errors = [];
    c.on('error', (e) => errors.push(e));
    c.publish(`${p}.1`, 'hi');
    c.publish('x.y', 'denied');
    await c.flush();
    assert.equal((await spy.nextMsg(5000)).name, `${p}.1`);
    await waitUntil(() => errors.length >= 1, 'the permission_denied error');
    assert.ok(errors[0] instanceof tscale.ServerError);
    assert.equal(errors[0].code, 'permission_denied');
    assert.equal(errors[0].fatal, false);
    admin.publish(`${p}.2`, 'fence');
    assert.equal((await spy.nextMsg(5000)).name, `${p}.2`, 'the denied event was not delivered');
  } finally {
    await c.close();
    await admin.close();
  }
});

test('PLAIN users: the right password connects; a wrong password or an unknown user fails fast', async () => {
  await refused(users.addr, { user: 'bob', password: 'nope' }, /refused our credentials/);
  await refused(users.addr, { user: 'mallory', password: 'x' }, /refused our credentials/);
  await refused(users.addr, {}, /asks for credentials/);
  await refused(users.addr, { serverKey: keys.newClientPair()[0] }, /wrong server key, or the node does not run --curve/);
  const c = await tscale.connect(users.addr, { user: 'bob', password: 'bob-pw' });
  try {
    const sub = await c.subscribe('pw.*');
    c.publish('pw.x', 'y');
    assert.equal((await sub.nextMsg(5000)).data.toString(), 'y');
  } finally {
    await c.close();
  }
});

test('permission_denied surfaces: a refused subscribe rejects, a refused publish is an error event', async () => {
  const bob = await tscale.connect(users.addr, users.creds);
  const alice = await tscale.connect(users.addr, { user: 'alice', password: 'alice-pw', name: 'alice' });
  try {
    const spy = await bob.subscribe('orders.>');
    for (const pattern of ['>', 'orders.secret.plan', 'billing.*']) {
      await assert.rejects(alice.subscribe(pattern), (e) => {
        assert.ok(e instanceof tscale.ServerError);
        assert.equal(e.code, 'permission_denied');
        assert.ok(e.message.includes(pattern));
        return true;
      });
    }
    const mine = await alice.subscribe('orders.eu');
    const errors = [];
    alice.on('error', (e) => errors.push(e));
    alice.publish('orders.secret.plan', '1');
    alice.publish('orders.eu', '2');
    await alice.flush();
    assert.equal((await spy.nextMsg(5000)).data.toString(), '2', 'only the allowed event is delivered');
    assert.equal((await mine.nextMsg(5000)).data.toString(), '2');
    await waitUntil(() => errors.length >= 1, 'the permission_denied error event');
    assert.equal(errors[0].code, 'permission_denied');
    assert.match(errors[0].message, /orders\.secret\.plan/);
    assert.equal(alice.lastError, errors[errors.length - 1]);
    // alice may still make requests: her inbox is allowed, and bob answers
    await bob.subscribe('orders.echo', { callback: (m) => m.respond(m.data) });
    assert.equal((await alice.request('orders.echo', 'ping', { timeout: 5000 })).data.toString(), 'ping');
  } finally {
    await alice.close();
    await bob.close();
  }
});
