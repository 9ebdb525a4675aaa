'use strict';
// Credentials a client presents at the ZeroMQ handshake (docs/SECURITY.md, docs/PROTOCOL.md
// section 1 "Security"), sans-I/O: the Node twin of tscale/client_core.py `Credentials` and
// tscale/keys.py.  No cryptography of our own: CURVE is libzmq's (through zeromq.js); the
// token-derived key pair is HMAC-SHA256 and X25519 from node:crypto, as tscale/keys.py does
// with HMAC-SHA256 and zmq.curve_public.
const crypto = require('node:crypto');
const { TscaleError } = require('./errors');

const Z85 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';
const Z85_INDEX = new Map([...Z85].map((ch, i) => [ch, i]));
const LABEL_TOKEN_CLIENT = 'tscale token client curve v1';
// DER prefixes of an X25519 private key (PKCS#8) around its 32 raw bytes.
const X25519_PKCS8 = Buffer.from('302e020100300506032b656e04220420', 'hex');

/** Z85 (ZeroMQ RFC 32) of bytes whose length is a multiple of 4. */
function z85Encode(bytes) {
  if (bytes.length % 4) throw new TscaleError('z85: length must be a multiple of 4');
  let out = '';
  for (let i = 0; i < bytes.length; i += 4) {
    let v = ((bytes[i] << 24) | (bytes[i + 1] << 16) | (bytes[i + 2] << 8) | bytes[i + 3]) >>> 0;
    let chunk = '';
    for (let j = 0; j < 5; j++) { chunk = Z85[v % 85] + chunk; v = Math.floor(v / 85); }
    out += chunk;
  }
  return out;
}

/** Bytes of a Z85 string, or null if it is not Z85 (length not a multiple of 5, other characters, overflow). */
function z85Decode(text) {
  if (typeof text !== 'string' || text.length % 5) return null;
  const out = Buffer.alloc((text.length / 5) * 4);
  for (let i = 0, o = 0; i < text.length; i += 5, o += 4) {
    let v = 0;
    for (let j = 0; j < 5; j++) {
      const d = Z85_INDEX.get(text[i + j]);
      if (d === undefined) return null;
      v = v * 85 + d;
    }
    if (v > 0xffffffff) return null;
    out.writeUInt32BE(v, o);
  }
  return out;
}

/** True for a Z85 CURVE key: 40 characters that decode to 32 bytes. */
function validKey(text) {
  return typeof text === 'string' && text.length === 40 && z85Decode(text) !== null;
}

/** [public, secret] (Z85) of a Z85 CURVE secret key (X25519, as zmq_curve_public). */
function pairFromSecret(secret) {
  const raw = z85Decode(secret);
  const priv = crypto.createPrivateKey({ key: Buffer.concat([X25519_PKCS8, raw]), format: 'der', type: 'pkcs8' });
  const pub = crypto.createPublicKey(priv).export({ format: 'der', type: 'spki' }).subarray(-32);
  return [z85Encode(pub), secret];
}

/** The client key pair every holder of the token uses on a CURVE node (tscale/keys.py token_client_pair). */
function tokenClientPair(token) {
  return pairFromSecret(z85Encode(crypto.createHmac('sha256', Buffer.from(String(token), 'utf8'))
    .update(LABEL_TOKEN_CLIENT).digest()));
}

/** A fresh key pair (a node that asks nothing of its clients only encrypts). */
function newClientPair() {
  return pairFromSecret(z85Encode(crypto.randomBytes(32)));
}

/**
 * What to present at the handshake, from the client options:
 *  - serverKey (the node's CURVE public key) turns CURVE on; the client key pair is
 *    clientKey (a Z85 secret key, or {publicKey, secretKey}), else the pair derived from
 *    token, else a fresh pair;
 *  - without serverKey: PLAIN with user/password, or with the token (user "token");
 *    else nothing (NULL).
 * Returns {curve, mechanism, sockopts} where sockopts are zeromq.js socket options.
 */
function credentials({ token = null, serverKey = null, clientKey = null, user = null, password = null } = {}) {
  if (serverKey) {
    if (!validKey(serverKey)) throw new TscaleError('serverKey must be a 40-character Z85 CURVE public key (`tscale keys`)');
    let pub, sec;
    if (clientKey) {
      const secret = typeof clientKey === 'object' ? clientKey.secretKey : clientKey;
      if (!validKey(secret)) throw new TscaleError('clientKey must be a 40-character Z85 CURVE secret key (or {publicKey, secretKey})');
      [pub, sec] = pairFromSecret(secret);
      if (typeof clientKey === 'object' && clientKey.publicKey != null && clientKey.publicKey !== pub) {
        throw new TscaleError('clientKey: publicKey and secretKey are not one CURVE key pair');
      }
    } else if (token) {
      [pub, sec] = tokenClientPair(token);
    } else {
      [pub, sec] = newClientPair();
    }
    return { curve: true, mechanism: 'curve', publicKey: pub,
      sockopts: { curveServerKey: serverKey, curvePublicKey: pub, curveSecretKey: sec } };
  }
  if (clientKey) throw new TscaleError('clientKey needs serverKey (the node\'s CURVE public key)');
  if (user != null || token) {
    const [u, p] = user != null ? [String(user), password == null ? '' : String(password)] : ['token', String(token)];
    return { curve: false, mechanism: 'plain', sockopts: { plainUsername: u, plainPassword: p } };
  }
  return { curve: false, mechanism: 'null', sockopts: {} };
}

/**
 * A readable reason for a failed ZeroMQ security handshake (a zeromq.js socket event), given
 * the mechanism we ran ('null', 'plain', 'curve'), or null for other events and for the temporary ZAP status 300 (libzmq retries).
 */
function handshakeError(event, server, mechanism) {
  const curve = mechanism === 'curve';
  if (event.type === 'handshake:error:auth') {
    const status = event.error && event.error.status;
    if (status === 300) return null;   // "try again later": the node is rate-limiting password checks
    return `the node at ${server} refused our credentials (ZAP status ${status}): wrong token, user/password or client key`;
  }
  if (event.type !== 'handshake:error:protocol' && event.type !== 'handshake:error:other') return null;
  const code = event.error && event.error.code ? ` [${event.error.code}]` : '';
  if (curve) {
    return `the security handshake with ${server} failed${code}: wrong server key, or the node does not run --curve?`;
  }
  if (mechanism === 'plain') {
    return `the security handshake with ${server} failed${code}: the node runs CURVE (give its public key as serverKey, see \`tscale keys\`)`;
  }
  return `the security handshake with ${server} failed${code}: the node asks for credentials ` +
    '(token, or user and password; a CURVE node needs serverKey, see `tscale keys`)';
}

module.exports = { z85Encode, z85Decode, validKey, pairFromSecret, tokenClientPair, newClientPair, credentials, handshakeError };
