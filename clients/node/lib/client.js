'use strict';
// The Node.js client: one zeromq Dealer per worker of the node (a "direct"
// client, docs/PROTOCOL.md section 8), async/await for everything that waits
// for the node, async iterators for subscriptions.
//
// publish() appends to the owner worker's batch and starts that socket's writer
// if it is idle, so a lone event leaves at once; while a send is in progress
// (until the writer's next turn), further events pile up in the batch, so a
// synchronous burst of publish() calls leaves as a few large frames.  One writer
// per socket sends frames in order (zeromq allows one pending send per socket).
const crypto = require('node:crypto');
const { EventEmitter } = require('node:events');
const zmq = require('zeromq');
const P = require('./protocol');
const { ClientCore, Msg } = require('./core');
const { TscaleError, ConnectError, TimeoutError, NoResponders } = require('./errors');
const { credentials, handshakeError } = require('./keys');
const Q = require('./queues');
const { version } = require('../package.json');

const DEFAULT_PENDING_LIMIT = 65536;   // events queued per iterator subscription, as NATS
const MAX_DOWN_FRAMES = 1024;          // frames kept per worker while it is unreachable

function parseAddress(addr) {
  const a = String(addr).replace(/^tcp:\/\//, '');
  const i = a.lastIndexOf(':');
  if (i < 0) return [a || '127.0.0.1', 7400];
  return [a.slice(0, i).replace(/^\[|\]$/g, '') || '127.0.0.1', Number(a.slice(i + 1))];
}

function deadline(ms, what) {
  let timer;
  const p = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what}: no answer within ${ms} ms`)), ms);
  });
  return [p, () => clearTimeout(timer)];
}

/** A live subscription: `for await (const m of sub)`, or a callback given to subscribe(). */
class Subscription {
  constructor(client, state, callback, pendingLimit) {
    this._client = client;
    this._state = state;
    this._cb = callback || null;
    this._queue = [];
    this._head = 0;
    this._wake = null;
    this._done = false;
    this.pendingLimit = pendingLimit;
    this.dropped = 0;      // events dropped here because the application did not keep up
    this.received = 0;
  }
  get sid() { return this._state.sid; }
  get pattern() { return this._state.pattern; }
  get queue() { return this._state.queue; }
  get pending() { return this._queue.length - this._head; }

  _push(msg) {
    this.received++;
    if (this._cb) {
      try { this._cb(msg); } catch (e) { this._client._asyncError(e); }
    } else if (this._wake) {
      const w = this._wake; this._wake = null; w({ value: msg, done: false });
    } else if (this.pending >= this.pendingLimit) {
      this.dropped++;
    } else {
      this._queue.push(msg);
    }
  }

  _end() {
    this._done = true;
    if (this._wake) { const w = this._wake; this._wake = null; w({ value: undefined, done: true }); }
  }

  /** The next event, or a TimeoutError after `timeoutMs`. */
  async next(timeoutMs) {
    if (this._head < this._queue.length) {
      const value = this._queue[this._head++];
      if (this._head > 1024 && this._head * 2 > this._queue.length) {
        this._queue = this._queue.slice(this._head); this._head = 0;
      }
      return { value, done: false };
    }
    if (this._done) return { value: undefined, done: true };
    if (this._cb) throw new TscaleError('this subscription delivers to a callback');
    if (this._wake) throw new TscaleError('only one reader at a time may wait on a subscription');
    const p = new Promise((resolve) => { this._wake = resolve; });
    if (timeoutMs === undefined) return p;
    const [t, cancel] = deadline(timeoutMs, `next event on ${JSON.stringify(this.pattern)}`);
    try { return await Promise.race([p, t]); } catch (e) { this._wake = null; throw e; } finally { cancel(); }
  }

  /** Resolves with the next event (or throws TimeoutError). */
  async nextMsg(timeoutMs = 1000) {
    const r = await this.next(timeoutMs);
    if (r.done) throw new TscaleError('subscription closed');
    return r.value;
  }

  [Symbol.asyncIterator]() { return this; }
  async return() { await this.unsubscribe(); return { value: undefined, done: true }; }

  async unsubscribe(timeoutMs = 5000) { await this._client._unsubscribe(this, timeoutMs); }
}

/** One worker's socket and its ordered output. */
class Lane {
  constructor(k, sock) {
    this.k = k;
    this.sock = sock;
    this.q = [];             // frames to send, in order
    this.up = true;          // false between a disconnect and the next connect
    this.writing = false;
    this.welcome = null;     // resolve function of a pending handshake
    this.dropped = 0;        // frames given up while the worker was unreachable
  }
}

class Client extends EventEmitter {
  /**
   * Connect to a node (any of its worker addresses, usually the first) and to each of its workers.
   * opts: name, connectTimeout (ms, 5000), reconnectInterval (ms, 50), reconnectMaxInterval (ms, 2000);
   * credentials (docs/SECURITY.md): token; user and password (PLAIN); serverKey (the node's CURVE
   * public key, Z85, from `tscale keys`) with clientKey (a Z85 secret key or {publicKey, secretKey};
   * default: the pair derived from the token, else a fresh pair).
   */
  static async connect(server = process.env.TSCALE_SERVER || '127.0.0.1:7400', opts = {}) {
    const c = new Client(server, opts);
    try {
      await c._handshake(opts.connectTimeout ?? 5000);
    } catch (e) {
      c._destroy();
      throw e;
    }
    return c;
  }

  constructor(server, opts) {
    super();
    this.server = server;
    this._opts = opts;
    this._creds = credentials(opts);   // throws TscaleError for a malformed key
    this._core = new ClientCore({ name: opts.name || '', lang: 'node', version });
    [this._host] = parseAddress(server);
    this._lanes = [];               // by worker index
    this._allLanes = [];            // every socket made, for closing
    this._waiters = new Map();      // req -> {resolve, reject}
    this._subs = new Map();         // sid -> Subscription
    this._inbox = null;             // shared request inbox, made on the first request()
    this._replies = new Map();      // reply name -> {resolve, reject, cancel}
    this._replyCount = 0;
    this._qInbox = null;            // queue inbox subscription (confirms, fetch and admin replies), made on first use
    this._qHandlers = new Map();    // reply name -> {onMsg(msg) -> true when done, fail(error)}
    this._qCount = 0;
    this._qBatches = null;          // per worker, a batch name it owns: where queue homes send batches of confirms
    this._qBatchSet = new Set();
    this.confirmWindow = opts.confirmWindow ?? 1000;  // confirmed publishes outstanding at most
    if (!Number.isInteger(this.confirmWindow) || this.confirmWindow < 1) throw new TscaleError('confirmWindow must be an integer >= 1');
    this._confirmsOut = 0;
    this._confirmWaiting = [];      // confirmed publishes waiting for a window slot, in order
    this._closed = false;
    this.lastError = null;
    this.badFrames = 0;             // frames (or MSG events) from the node that broke the protocol, dropped
  }

  get info() { return { ...this._core.info }; }
  get maxPayload() { return this._core.maxPayload; }
  get closed() { return this._closed; }
  /** Frames given up because their worker stayed unreachable while more than 1024 waited for it. */
  get droppedWhileDown() { return this._allLanes.reduce((n, l) => n + l.dropped, 0); }

  // -- connection --------------------------------------------------------------
  // Credentials travel in the ZeroMQ handshake (docs/PROTOCOL.md section 1, "Security"):
  // CURVE with serverKey, else PLAIN with user/password or the token (user "token"), else NULL.
  _socket() {
    return new zmq.Dealer({
      ...this._creds.sockopts,
      routingId: crypto.randomBytes(12).toString('hex'),   // fixed id: a blip reconnect keeps our state
      linger: 1000,
      immediate: true,          // never queue frames for a connection that is not up (section 15)
      sendHighWaterMark: 1000,
      receiveHighWaterMark: 1000,
      reconnectInterval: this._opts.reconnectInterval ?? 50,
      reconnectMaxInterval: this._opts.reconnectMaxInterval ?? 2000,
      heartbeatInterval: 2000,
      heartbeatTimeout: 6000,
    });
  }

  _connect(lane, port) {
    // The socket's events are watched before it connects, so a refused handshake is seen.
    const onFail = (ev) => this._handshakeFailed(lane, ev);
    for (const t of ['handshake:error:auth', 'handshake:error:protocol', 'handshake:error:other']) lane.sock.events.on(t, onFail);
    lane.sock.connect(`tcp://${this._host.includes(':') ? `[${this._host}]` : this._host}:${port}`);
  }

  /** A refused security handshake: fails a pending connect at once; later (a reconnect) it is reported. */
  _handshakeFailed(lane, ev) {
    if (this._closed) return;
    const why = handshakeError(ev, this.server, this._creds.mechanism);
    if (why === null) return;
    if (lane.welcome) lane.welcome.reject(new ConnectError(why));
    else this._asyncError(new ConnectError(`reconnecting to worker ${lane.k}: ${why}`));
  }

  async _greet(lane, timeoutMs) {
    const [t, cancel] = deadline(timeoutMs, `tscale node at ${this.server}`);
    const got = new Promise((resolve, reject) => { lane.welcome = { resolve, reject }; });
    lane.q.push(this._core.hello());
    this._schedule(lane);
    try {
      return await Promise.race([got, t]);
    } catch (e) {
      if (e instanceof TimeoutError) throw new ConnectError(`no answer from tscale node at ${this.server} within ${timeoutMs} ms`);
      throw e;
    } finally {
      cancel();
      lane.welcome = null;
    }
  }

  _addLane(k, port) {
    const lane = new Lane(k, this._socket());
    this._allLanes.push(lane);
    if (k >= 0) this._lanes[k] = lane;
    this._connect(lane, port);
    this._readLoop(lane);
    return lane;
  }

  async _handshake(timeoutMs) {
    const [, port] = parseAddress(this.server);
    const first = this._addLane(-1, port);
    const welcome = await this._greet(first, timeoutMs);
    this._core.welcome(welcome);
    const me = welcome[2].worker;
    first.k = me;
    this._lanes[me] = first;
    const others = [];
    for (let k = 0; k < this._core.workers; k++) {
      if (k !== me) others.push(this._greet(this._addLane(k, this._core.ports[k]), timeoutMs));
    }
    await Promise.all(others);
    for (const lane of this._lanes) this._watch(lane);
  }

  _watch(lane) {
    const ev = lane.sock.events;
    ev.on('disconnect', () => {
      if (this._closed) return;
      lane.up = false;
      this.emit('disconnect', lane.k);
    });
    ev.on('connect', () => {
      if (this._closed) return;
      // A (re)started worker knows nothing of us: HELLO first, then every SUB it held, then the rest.
      lane.q.unshift(...this._core.resumeFrames(lane.k));
      lane.up = true;
      this._schedule(lane);
      this.emit('reconnect', lane.k);
    });
  }

  async _readLoop(lane) {
    try {
      for await (const [frame] of lane.sock) this._onFrame(lane, frame);
    } catch (e) {
      if (!this._closed) this._asyncError(e);
    }
  }

  // -- output ------------------------------------------------------------------
  _schedule(lane) {
    if (!lane.writing) this._write(lane);
  }

  async _write(lane) {
    if (lane.writing) return;
    lane.writing = true;
    const core = this._core;
    try {
      while (lane.up && !lane.sock.closed) {
        // (lane.k is -1 for the first socket until its WELCOME says which worker it is)
        const f = lane.q.length ? lane.q.shift() : lane.k >= 0 ? core.takeBatch(lane.k) : null;
        if (f === null) break;
        await lane.sock.send(f);
      }
      if (!lane.up) this._trimDown(lane);
    } catch (e) {
      if (!this._closed) this._asyncError(e);
    } finally {
      lane.writing = false;
    }
  }

  /** While its worker is unreachable a lane keeps its newest MAX_DOWN_FRAMES frames (events keep batching). */
  _trimDown(lane) {
    while (lane.q.length > MAX_DOWN_FRAMES) { lane.q.shift(); lane.dropped++; }
  }

  /** Send a frame to worker k behind the events already batched for it (keeps order). */
  _enqueue(k, frame) {
    const lane = this._lanes[k];
    const b = this._core.takeBatch(k);
    if (b) lane.q.push(b);
    lane.q.push(frame);
    this._schedule(lane);
  }

  _call(k, frameFor, timeoutMs, what) {
    const req = this._core.nextReq();
    const [t, cancel] = deadline(timeoutMs, what);
    const p = new Promise((resolve, reject) => { this._waiters.set(req, { resolve, reject }); });
    this._enqueue(k, frameFor(req));
    return Promise.race([p, t]).finally(() => { cancel(); this._waiters.delete(req); });
  }

  // -- input -------------------------------------------------------------------
  _onFrame(lane, frame) {
    const [cmd, why] = P.decodeNodeFrame(frame);
    if (cmd === null) {           // not a frame this client may trust: dropped and counted
      this._badFrame(lane, why);
      return;
    }
    const code = cmd[0];
    if (code === P.MSG) {
      const subs = this._subs;
      for (let i = 1; i < cmd.length; i += 4) {
        const sub = subs.get(cmd[i]);
        if (sub === undefined) continue;   // unsubscribed while in flight
        if (!P.msgEventOk(cmd, i)) {
          this._badFrame(lane, 'MSG event is not (int sid, str name, bin payload, meta)');
          continue;
        }
        const meta = cmd[i + 3];
        const p = cmd[i + 2];
        const data = Buffer.from(p.buffer, p.byteOffset, p.byteLength);
        sub._push(meta ? new Msg(cmd[i + 1], data, meta[0], meta[1], cmd[i], this)
          : new Msg(cmd[i + 1], data, null, null, cmd[i], this));
      }
      return;
    }
    if (code === P.OK || code === P.PONG || code === P.STATUS_REPLY) {
      const w = this._waiters.get(cmd[1]);
      if (w) w.resolve(code === P.STATUS_REPLY ? cmd[2] : undefined);
    } else if (code === P.ERR) {
      const e = ClientCore.errorOf(cmd);
      const w = cmd[3] != null ? this._waiters.get(cmd[3]) : undefined;
      if (w) w.reject(e);
      else if (lane.welcome) lane.welcome.reject(new ConnectError(`node refused the connection: ${e.message}`));
      else this._asyncError(e);
    } else if (code === P.PING) {
      lane.q.push(P.pack([P.PONG, cmd.length > 1 ? cmd[1] : null]));
      this._schedule(lane);
    } else if (code === P.WELCOME) {
      if (lane.welcome) lane.welcome.resolve(cmd);
      else this._rewelcome(cmd);
    }
  }

  _badFrame(lane, why) {
    this.badFrames++;
    this._asyncError(new TscaleError(`dropped a frame from worker ${lane.k}: ${why}`));
  }

  _rewelcome(cmd) {
    try {
      this._core.welcome(cmd);
    } catch (e) {
      this._asyncError(e);
      this.close(0).catch(() => {});
    }
  }

  _asyncError(e) {
    this.lastError = e;
    if (this.listenerCount('error')) this.emit('error', e);
  }

  _check() { if (this._closed) throw new TscaleError('client is closed'); }

  // -- API ---------------------------------------------------------------------
  /**
   * Queue an event for the worker that owns `name`; it leaves at once or with the batch being sent.
   * opts: headers, reply.  With `confirm: true` (and optional msgId, timeout in ms, default 5000)
   * returns a Promise of the PubAck {queue, seq, duplicate} a durable queue gives once the event
   * is committed to disk; up to `confirmWindow` confirmed publishes are outstanding at once
   * (later ones wait for a slot), so a loop of un-awaited confirmed publishes is pipelined.
   */
  publish(name, data, opts) {
    if (opts !== undefined && opts.confirm) return this._publishConfirmed(name, data, opts);
    this._check();
    const core = this._core;
    const k = opts === undefined ? core.addEvent(name, data, null, null)
      : core.addEvent(name, data, opts.headers ?? null, opts.reply ?? null);
    const lane = this._lanes[k < 0 ? -1 - k : k];
    if (k < 0) lane.q.push(core.takeBatch(lane.k));
    if (!lane.writing) this._write(lane);
  }

  /** Resolves once every worker has routed everything this client sent before (PING/PONG). */
  async flush(timeoutMs = 5000) {
    this._check();
    await Promise.all(this._lanes.map((l) => this._call(l.k, (req) => P.pack([P.PING, req]), timeoutMs, 'flush')));
  }

  /**
   * Subscribe to a name or a pattern; resolves once the node has the interest in place.
   * opts: queue (group name), callback (msg => ...), pendingLimit, timeout (ms), confirm ('node' | 'cluster').
   */
  async subscribe(pattern, opts = {}) {
    this._check();
    const state = this._core.newSub(pattern, opts.queue ?? null, opts.confirm ?? null);
    const sub = new Subscription(this, state, opts.callback, opts.pendingLimit ?? DEFAULT_PENDING_LIMIT);
    this._subs.set(state.sid, sub);
    const timeoutMs = opts.timeout ?? (state.confirm ? 10000 : 5000);
    try {
      await Promise.all(state.targets.map((k) => this._call(k, (req) => this._core.subFrame(state, req),
        timeoutMs, `subscribe ${JSON.stringify(pattern)}`)));
    } catch (e) {
      this._subs.delete(state.sid);
      this._core.subs.delete(state.sid);
      throw e;
    }
    return sub;
  }

  async _unsubscribe(sub, timeoutMs) {
    if (!this._subs.delete(sub.sid)) return;
    this._core.subs.delete(sub.sid);
    sub._end();
    if (this._closed) return;
    await Promise.all(sub._state.targets.map((k) => this._call(k, (req) => this._core.unsubFrame(sub.sid, req),
      timeoutMs, 'unsubscribe')));
  }

  async _ensureInbox() {
    if (!this._inbox) {
      // confirm 'cluster': a responder on another node must know the inbox before it answers
      this._inbox = this.subscribe(this._core.inboxPrefix + '*', { callback: (m) => this._onReply(m), confirm: 'cluster' });
      this._inbox.catch(() => { this._inbox = null; });
    }
    return this._inbox;
  }

  _onReply(m) {
    const r = this._replies.get(m.name);
    if (r === undefined) return;
    this._replies.delete(m.name);
    r.cancel();
    if (ClientCore.isNoResponders(m.headers)) r.reject(new NoResponders(`no responders for ${JSON.stringify(r.name)}`));
    else r.resolve(m);
  }

  /** Publish with a reply name and resolve with the first reply (NoResponders, TimeoutError). */
  async request(name, data, opts = {}) {
    this._check();
    await this._ensureInbox();
    const timeoutMs = opts.timeout ?? 1000;
    const reply = this._core.inboxPrefix + (++this._replyCount);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._replies.delete(reply);
        reject(new TimeoutError(`request ${JSON.stringify(name)}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this._replies.set(reply, { name, resolve, reject, cancel: () => clearTimeout(timer) });
      try {
        this.publish(name, data, { headers: opts.headers ?? null, reply });
      } catch (e) {
        clearTimeout(timer);
        this._replies.delete(reply);
        reject(e);
      }
    });
  }

  // -- durable queues (docs/QUEUES.md) ------------------------------------------
  /** The queue inbox, subscribed once with confirm 'cluster': a queue's home on another node must know it. */
  _qReady() {
    if (!this._qInbox) {
      this._qInbox = this.subscribe(this._core.inboxPrefix + 'q.*', { callback: (m) => this._qOnReply(m), confirm: 'cluster' });
      this._qInbox.catch(() => { this._qInbox = null; });
    }
    return this._qInbox;
  }

  /** A fresh reply name on the queue inbox; with `owner`, one that worker owns.  A reply is routed by
   * the owner of its name: a name owned by the worker that answers (the queue's home, the owner of
   * `$Q.<queue>`) reaches this client without a hop over the in-host bus (PROTOCOL.md section 19). */
  _qReply(owner) {
    const n = this._core.workers;
    for (let i = 0; ; i++) {
      const name = `${this._core.inboxPrefix}q.${++this._qCount}`;
      if (owner === undefined || n <= 1 || i >= 64 * n || P.shardOf(name, n) === owner) return name;
    }
  }

  /** The batch name for a confirmed publish of `name`: one owned by the worker the event is sent to. */
  _qBatchFor(name) {
    const n = this._core.workers;
    if (this._qBatches === null || this._qBatches.length !== n) {
      const out = new Array(n).fill(null);
      for (let i = 0, left = n; left > 0 && i < 100000; i++) {
        const b = `${this._core.inboxPrefix}q.c${i}`;
        const k = P.shardOf(b, n);
        if (out[k] === null) { out[k] = b; left--; }
      }
      this._qBatches = out;
      for (const b of out) this._qBatchSet.add(b);
    }
    return this._qBatches[this._core.owner(name) % n];
  }

  _qOnReply(m) {
    if (this._qBatchSet.has(m.name)) {
      for (const [reply, v] of Q.decodeConfirmBatch(m.data)) {
        const h = this._qHandlers.get(reply);
        if (h !== undefined && h.settle) { this._qHandlers.delete(reply); h.settle(v); }
      }
      return;
    }
    const h = this._qHandlers.get(m.name);
    if (h !== undefined && h.onMsg(m)) this._qHandlers.delete(m.name);
  }

  /** Wait for a slot in the confirm window (FIFO); the slot is released when the confirm settles. */
  _confirmSlot() {
    if (this._confirmsOut < this.confirmWindow && this._confirmWaiting.length === 0) {
      this._confirmsOut++;
      return null;
    }
    return new Promise((resolve, reject) => this._confirmWaiting.push({ resolve, reject }));
  }

  _confirmRelease() {
    const next = this._confirmWaiting.shift();
    if (next) next.resolve();   // the slot passes to the next waiting publish
    else this._confirmsOut--;
  }

  async _publishConfirmed(name, data, opts) {
    this._check();
    this._core.owner(name);   // a bad name fails here, before any wait
    if (opts.reply != null) throw new TscaleError('a confirmed publish has a reply name of its own: leave out reply');
    const headers = Q.confirmHeaders(opts.headers ?? null, opts.msgId ?? null, this._qBatchFor(name));
    const timeoutMs = opts.timeout ?? 5000;
    await this._qReady();
    const slot = this._confirmSlot();
    if (slot) await slot;
    const reply = this._qReply();
    return new Promise((resolve, reject) => {
      let done = false;
      const settle = (v) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this._confirmRelease();
        if (v instanceof Error) reject(v); else resolve(v);
      };
      const timer = setTimeout(() => {
        this._qHandlers.delete(reply);
        settle(new TimeoutError(`publish ${JSON.stringify(name)}: no queue confirmed within ${timeoutMs} ms`));
      }, timeoutMs);
      this._qHandlers.set(reply, {
        onMsg: (m) => {
          let v;
          try { v = Q.decodePubAck(name, m.data, m.headers); } catch (e) { v = e; }
          settle(v);
          return true;
        },
        settle,
        fail: settle,
      });
      try {
        this.publish(name, data, { headers, reply });
      } catch (e) {
        this._qHandlers.delete(reply);
        settle(e);
      }
    });
  }

  /** One request on the queue inbox; resolves with the reply event. */
  async _qRequest(subject, payload, timeoutMs) {
    await this._qReady();
    const reply = this._qReply(this._core.owner(subject));   // the home answers: a name it owns
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._qHandlers.delete(reply);
        reject(new TimeoutError(`${subject}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this._qHandlers.set(reply, {
        onMsg: (m) => { clearTimeout(timer); resolve(m); return true; },
        fail: (e) => { clearTimeout(timer); reject(e); },
      });
      try {
        this.publish(subject, payload, { reply });
      } catch (e) {
        clearTimeout(timer);
        this._qHandlers.delete(reply);
        reject(e);
      }
    });
  }

  /** A queue request and its `ok` value; a worker that is still starting is asked again within the timeout. */
  async _qCall(subject, op, fields, timeoutMs = 5000) {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = await this._qRequest(subject, Q.request(op, fields), Math.max(100, end - Date.now()));
      try {
        return Q.decodeReply(m.data, m.headers, `queue ${op}`);
      } catch (e) {
        if (!(e instanceof Q.QueueUnavailable && e.serverMessage === Q.STARTING && end - Date.now() > Q.RETRY_PAUSE_MS)) throw e;
      }
      await new Promise((r) => setTimeout(r, Q.RETRY_PAUSE_MS));
    }
  }

  /**
   * Create a durable queue storing the events whose names match `subjects` (array or comma-separated).
   * opts (durations in seconds, as `tscale queue add`): retention ('limits' | 'work'), maxMsgs, maxBytes,
   * maxAge, discard ('old' | 'new'), ackWait, maxDeliver, backoff (array), dedupeWindow, home; timeout (ms).
   * Resolves with the queue's info; the same definition again is a no-op.
   */
  async queueAdd(name, subjects, opts = {}) {
    this._check();
    return this._qCall(Q.subjectFor(name), 'add', { config: Q.queueConfig(name, subjects, opts) }, opts.timeout);
  }

  /** The queue's info: config, messages, bytes, first_seq, last_seq, groups... (docs/QUEUES.md "Figures"). */
  async queueInfo(name, timeoutMs = 5000) {
    this._check();
    const info = await this._qCall(Q.subjectFor(name), 'info', {}, timeoutMs);
    if (info === null || typeof info !== 'object' || Array.isArray(info)) throw new TscaleError('queue info: unexpected reply');
    return info;
  }

  /** The info of every queue homed on the node this client is connected to (asks each worker). */
  async queueList(timeoutMs = 5000) {
    this._check();
    const out = [];
    for (const subject of Q.lsSubjects(this._core.workers)) {
      const part = await this._qCall(subject, 'ls', {}, timeoutMs);
      if (!Array.isArray(part)) throw new TscaleError('queue ls: unexpected reply');
      out.push(...part);
    }
    const key = (d) => String(d && d.config && d.config.name);
    return out.sort((a, b) => key(a).localeCompare(key(b)));
  }

  async queueRemove(name, timeoutMs = 5000) {
    this._check();
    await this._qCall(Q.subjectFor(name), 'rm', {}, timeoutMs);
  }

  /** Delete every stored event of the queue; resolves with how many were deleted. */
  async queuePurge(name, timeoutMs = 5000) {
    this._check();
    return this._qCall(Q.subjectFor(name), 'purge', {}, timeoutMs);
  }

  /**
   * A member of consumer group `group` of `queue`: `await consumer.fetch(batch, timeoutMs)` or
   * `for await (const m of consumer)`.  opts: start (for a new group: 'first' (default), 'last',
   * 'new', a sequence number, a Date), batch (per fetch when iterating, 100).
   */
  consumer(queue, group, opts = {}) {
    this._check();
    return new Consumer(this, queue, group, opts);
  }

  /** The node's status document (docs/STATUS.md). */
  async status(timeoutMs = 5000) {
    this._check();
    return this._call(0, (req) => P.pack([P.STATUS, req]), timeoutMs, 'status');
  }

  /** Unsubscribe everything, flush, and close. */
  async drain(timeoutMs = 5000) {
    for (const sub of [...this._subs.values()]) {
      try { await sub.unsubscribe(timeoutMs); } catch { /* closing anyway */ }
    }
    await this.close(timeoutMs);
  }

  /** Flush what is queued (within timeoutMs), say BYE on every connection and close the sockets. */
  async close(timeoutMs = 5000) {
    if (this._closed) return;
    if (timeoutMs > 0) {
      try { await this.flush(timeoutMs); } catch { /* closing anyway */ }
    }
    this._closed = true;
    for (const lane of this._lanes) {
      if (lane && lane.up && !lane.writing) {
        try { await lane.sock.send(P.pack([P.BYE])); } catch { /* gone */ }
      }
    }
    for (const sub of this._subs.values()) sub._end();
    for (const r of this._replies.values()) { r.cancel(); r.reject(new TscaleError('client is closed')); }
    this._replies.clear();
    const handlers = [...this._qHandlers.values()];
    this._qHandlers.clear();
    for (const h of handlers) if (h.fail) h.fail(new TscaleError('client is closed'));
    for (const w of this._confirmWaiting.splice(0)) w.reject(new TscaleError('client is closed'));
    this._destroy();
  }

  _destroy() {
    this._closed = true;
    for (const lane of this._allLanes) if (!lane.sock.closed) lane.sock.close();
  }
}

/** A pull consumer of a durable queue (Client.consumer). */
class Consumer {
  constructor(client, queue, group, opts) {
    this.subject = Q.subjectFor(queue);
    const e = Q.queueNameError(group, 'group name');
    if (e) throw new TscaleError(e);
    this._client = client;
    this.queue = queue;
    this.group = group;
    this.start = Q.startValue(opts.start);
    this.batch = opts.batch ?? 100;
    if (!Number.isInteger(this.batch) || this.batch < 1 || this.batch > Q.MAX_BATCH) throw new TscaleError(`batch must be 1..${Q.MAX_BATCH}`);
    this._buf = [];
    this._stopped = false;
    this._answer = (op, seq, delay) => this._client.publish(this.subject, Q.request(op, { group: this.group, seqs: [seq], delay }));
  }

  /** Up to `batch` deliveries, waiting up to timeoutMs (at most 300 s) for the first; [] if none came. */
  async fetch(batch = this.batch, timeoutMs = 1000) {
    const c = this._client;
    c._check();
    if (!Number.isInteger(batch) || batch < 1 || batch > Q.MAX_BATCH) throw new TscaleError(`batch must be 1..${Q.MAX_BATCH}`);
    const expires = Math.min(Math.max(timeoutMs, 0) / 1000, Q.MAX_EXPIRES_S);
    const coll = new Q.FetchCollector(this.queue, this.group, this._answer);
    const payload = Q.request('fetch', { group: this.group, batch, expires, start: this.start });
    await c._qReady();
    const reply = c._qReply(c._core.owner(this.subject));   // the home answers: a name it owns
    const waitMs = expires * 1000 + 2000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        c._qHandlers.delete(reply);
        reject(new TimeoutError(`fetch from queue ${JSON.stringify(this.queue)}: no answer within ${waitMs} ms`));
      }, waitMs);
      c._qHandlers.set(reply, {
        onMsg: (m) => {
          if (!coll.feed(m.data, m.headers)) return false;
          clearTimeout(timer);
          if (coll.error) reject(coll.error); else resolve(coll.msgs);
          return true;
        },
        fail: (err) => { clearTimeout(timer); reject(err); },
      });
      try {
        c.publish(this.subject, payload, { reply });
      } catch (err) {
        clearTimeout(timer);
        c._qHandlers.delete(reply);
        reject(err);
      }
    });
  }

  /** The next delivery (fetching `batch` at a time, 5 s per fetch, until one comes or stop()). */
  async next() {
    while (this._buf.length === 0) {
      if (this._stopped || this._client.closed) return { value: undefined, done: true };
      try {
        this._buf.push(...await this.fetch(this.batch, 5000));
      } catch (e) {
        if (this._stopped || this._client.closed) return { value: undefined, done: true };
        throw e;
      }
    }
    return { value: this._buf.shift(), done: false };
  }

  [Symbol.asyncIterator]() { return this; }

  /** Ends iteration (`break` does it too).  Deliveries fetched but not yet handed out are redelivered after ack_wait. */
  async return() { this.stop(); return { value: undefined, done: true }; }
  stop() { this._stopped = true; }
}

module.exports = { Client, Subscription, Consumer, parseAddress, connect: (server, opts) => Client.connect(server, opts) };
