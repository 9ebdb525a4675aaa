'use strict';
// Client protocol state, sans-I/O (the Node twin of tscale/client_core.py).
//
// It knows the node's shard map (from WELCOME), numbers subscriptions and
// requests, builds frames, and batches outgoing events per worker so that each
// event goes straight to the worker that owns its name.  lib/client.js around
// it only moves frames between sockets and promises.
const crypto = require('node:crypto');
const P = require('./protocol');
const { TscaleError, ServerError } = require('./errors');

const BATCH_EVENTS = 1000;          // events per PUB frame at most
const BATCH_BYTES = 1 << 20;        // payload bytes per PUB frame at most (one large event may exceed it)
const BATCH_LEN = 1 + 3 * BATCH_EVENTS;
const OWNER_CACHE_MAX = 100000;

/** A received event.  `data` is a Buffer (a view on the received frame: no copy). */
class Msg {
  constructor(name, data, headers, reply, sid, client) {
    this.name = name;
    this.data = data;
    this.headers = headers;
    this.reply = reply;
    this.sid = sid;
    this._client = client;
  }
  get subject() { return this.name; }
  /** Publish `data` to this event's reply name. */
  respond(data, opts = {}) {
    if (!this.reply) throw new TscaleError('this event has no reply name');
    this._client.publish(this.reply, data, { headers: opts.headers });
  }
  toString() { return `Msg(${this.name}, ${this.data.length} bytes)`; }
}

function toBytes(data) {
  if (data instanceof Uint8Array) return data;   // Buffer is a Uint8Array
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  if (data == null) return EMPTY;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw new TscaleError('payload must be a Buffer, Uint8Array, ArrayBuffer or string');
}
const EMPTY = new Uint8Array(0);

function checkHeaders(headers) {
  if (headers == null) return null;
  if (typeof headers !== 'object' || Array.isArray(headers)) throw new TscaleError('headers must be an object of string to string');
  for (const k in headers) {
    if (typeof headers[k] !== 'string') throw new TscaleError(`header ${JSON.stringify(k)} must be a string`);
  }
  return headers;
}

class ClientCore {
  constructor({ name = '', lang = 'node', version = '0' } = {}) {
    this.name = name;
    this.lang = lang;
    this.version = version;
    this.workers = 1;
    this.ports = [];
    this.maxPayload = 1 << 20;
    this.info = {};
    this.subs = new Map();             // sid -> {sid, pattern, queue, targets, confirm}
    this.nextSid = 1;
    this.nextReqId = 1;
    this.inboxPrefix = '_INBOX.' + crypto.randomBytes(8).toString('hex') + '.';
    this.ownerCache = new Map();
    this.out = [[P.PUB]];
    this.outBytes = [0];
  }

  // -- handshake ------------------------------------------------------------
  // (Credentials are not part of HELLO: the ZeroMQ handshake carries them, lib/keys.js.)
  hello(direct = true) {
    return P.pack([P.HELLO, P.VERSION, { name: this.name, lang: this.lang,
      version: this.version, direct }]);
  }

  /** Take in a WELCOME.  Throws if the node came back with another worker count. */
  welcome(cmd) {
    const info = cmd[2];
    if (!info || typeof info !== 'object' || !Array.isArray(info.ports) || !info.shard) {
      throw new TscaleError('WELCOME without ports or shard map');
    }
    if (this.ports.length && info.ports.length !== this.ports.length) {
      throw new TscaleError('the node restarted with a different worker count; reconnect the client');
    }
    this.info = info;
    this.maxPayload = info.max_payload;
    this.ports = info.ports;
    this.workers = info.shard.count;
    if (this.out.length !== this.workers) {
      this.out = Array.from({ length: this.workers }, () => [P.PUB]);
      this.outBytes = new Array(this.workers).fill(0);
      this.ownerCache.clear();
    }
  }

  // -- events ---------------------------------------------------------------
  owner(name) {
    let k = this.ownerCache.get(name);
    if (k === undefined) {
      const e = P.nameError(name);
      if (e) throw new TscaleError(e);
      k = P.shardOf(name, this.workers);
      if (this.ownerCache.size > OWNER_CACHE_MAX) this.ownerCache.clear();
      this.ownerCache.set(name, k);
    }
    return k;
  }

  /** Queue one event in its owner's batch; returns the owner, or -1-owner if that batch is full. */
  addEvent(name, data, headers, reply) {
    const bytes = toBytes(data);
    if (bytes.length > this.maxPayload) {
      throw new TscaleError(`payload of ${bytes.length} bytes exceeds the node's max_payload ${this.maxPayload}`);
    }
    if (reply != null) {
      const e = P.nameError(reply);
      if (e) throw new TscaleError(`reply: ${e}`);
    }
    const k = this.owner(name);
    const meta = headers == null && reply == null ? null : [checkHeaders(headers), reply == null ? null : reply];
    const buf = this.out[k];
    buf.push(name, bytes, meta);
    const n = (this.outBytes[k] += bytes.length);
    return n >= BATCH_BYTES || buf.length >= BATCH_LEN ? -1 - k : k;
  }

  /** The pending PUB frame for worker k, or null if it holds no event. */
  takeBatch(k) {
    const buf = this.out[k];
    if (buf.length === 1) return null;
    const frame = P.pack(buf);
    buf.length = 1;
    this.outBytes[k] = 0;
    return frame;
  }

  pending(k) { return this.out[k].length > 1; }

  // -- subscriptions ----------------------------------------------------------
  newSub(pattern, queue = null, confirm = null) {
    const e = P.patternError(pattern) || (queue != null ? P.groupError(queue) : null);
    if (e) throw new TscaleError(e);
    if (confirm !== null && confirm !== 'node' && confirm !== 'cluster') {
      throw new TscaleError("confirm must be 'node' (default) or 'cluster'");
    }
    const sid = this.nextSid++;
    // A literal name lives on its owner only; a wildcard on every worker (section 8).
    const targets = P.isLiteral(pattern) ? [P.shardOf(pattern, this.workers)]
      : Array.from({ length: this.workers }, (_, i) => i);
    const s = { sid, pattern, queue: queue ?? null, targets, confirm: confirm === 'cluster' ? 'cluster' : null };
    this.subs.set(sid, s);
    return s;
  }

  subFrame(s, req) {
    if (s.confirm && req != null) return P.pack([P.SUB, s.sid, s.pattern, s.queue, req, { confirm: s.confirm }]);
    return P.pack([P.SUB, s.sid, s.pattern, s.queue, req]);
  }

  unsubFrame(sid, req) { return P.pack([P.UNSUB, sid, req]); }

  /** Frames to send first after worker k (re)connects: HELLO, then every SUB it holds. */
  resumeFrames(k) {
    const frames = [this.hello()];
    for (const s of this.subs.values()) if (s.targets.includes(k)) frames.push(this.subFrame(s, null));
    return frames;
  }

  nextReq() { return this.nextReqId++; }

  static errorOf(cmd) {
    return new ServerError(String(cmd[1]), String(cmd[2]), cmd[4] === true);
  }

  static isNoResponders(headers) {
    return headers != null && headers[P.STATUS_HEADER] === P.NO_RESPONDERS_STATUS;
  }
}

module.exports = { ClientCore, Msg, toBytes, BATCH_EVENTS, BATCH_BYTES };
