'use strict';
// Durable queues on the wire (docs/QUEUES.md, docs/PROTOCOL.md section 19), sans-I/O: the
// Node twin of tscale/queues/client_core.py.  Queue operations are ordinary events on
// `$Q.<queue>` answered on the request's reply name; a confirmed publish is an event with
// the header Tscale-Confirm.  Every reply payload passes a decoder here that checks its
// shape before the client acts on it: a reply that is not what section 19 promises fails the
// one operation it answers (TscaleError), never the client.
const { Encoder, Decoder } = require('@msgpack/msgpack');
const P = require('./protocol');
const { TscaleError, ServerError } = require('./errors');

const API_PREFIX = '$Q.';
const LS_PREFIX = '$Q.$LS.';
const H_CONFIRM = 'Tscale-Confirm';
const H_MSG_ID = 'Tscale-Msg-Id';
const MAX_MSG_ID = 256;
const MAX_EXPIRES_S = 300;
const MAX_BATCH = 10000;
const MAX_NAME = 64;
const STARTING = "the queue's worker is starting; retry";
const RETRY_PAUSE_MS = 50;   // a starting worker opens its queues once its in-host bus is synced

// Error codes of docs/QUEUES.md "Errors" and the class each becomes.
class QueueError extends ServerError {}
class QueueNotFound extends QueueError {}
class QueueExists extends QueueError {}
class BadQueueConfig extends QueueError {}
class BadQueueRequest extends QueueError {}
class QueueFull extends QueueError {}
class StorageFull extends QueueError {}
class QueueUnavailable extends QueueError {}
/** A confirmed publish that nothing at all is subscribed to: no queue stored it. */
class NoQueue extends QueueError {}
const ERROR_CLASSES = {
  queue_not_found: QueueNotFound, queue_exists: QueueExists, bad_queue_config: BadQueueConfig,
  bad_queue_request: BadQueueRequest, queue_full: QueueFull, storage_full: StorageFull,
  queue_unavailable: QueueUnavailable, no_queue: NoQueue,
};

/** The typed error for a queue error code (QueueError for a code this client does not know). */
function queueError(code, message) {
  const Cls = ERROR_CLASSES[code] || QueueError;
  return new Cls(String(code), String(message ?? ''), false);
}

const encoder = new Encoder();
const decoder = new Decoder();
const isMap = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);
const isInt = Number.isInteger;

/** A queue or group name: 1..64 of A-Z a-z 0-9 _ - (tscale/queues/model.py name_error). */
function queueNameError(name, what = 'queue name') {
  if (typeof name !== 'string' || name.length < 1 || name.length > MAX_NAME || !/^[A-Za-z0-9_-]+$/.test(name)) {
    return `${what} must be 1..${MAX_NAME} characters of A-Z a-z 0-9 _ -`;
  }
  return null;
}

/** The request subject of a queue, after checking its name here (a clear error, no round trip). */
function subjectFor(queue) {
  const e = queueNameError(queue);
  if (e) throw new TscaleError(`${JSON.stringify(queue)}: ${e}`);
  return API_PREFIX + queue;
}

/** One `$Q.$LS.<n>` name owned by each of `workers` workers. */
function lsSubjects(workers) {
  const out = new Array(workers).fill(null);
  let left = workers;
  for (let n = 0; left > 0 && n < 100000; n++) {
    const s = LS_PREFIX + n;
    const k = P.shardOf(s, workers);
    if (out[k] === null) { out[k] = s; left--; }
  }
  return out;
}

/** A request payload {op, ...fields}; undefined and null fields are left out. */
function request(op, fields = {}) {
  const d = { op };
  for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== null) d[k] = v;
  return encoder.encode(d);
}

// queueAdd options: camelCase here, snake_case on the wire; durations in seconds as on the wire.
const CONFIG_KEYS = {
  retention: 'retention', maxMsgs: 'max_msgs', maxBytes: 'max_bytes', maxAge: 'max_age', discard: 'discard',
  ackWait: 'ack_wait', maxDeliver: 'max_deliver', backoff: 'backoff', dedupeWindow: 'dedupe_window', home: 'home',
};

/** The add request's config map; `subjects` an array or a comma-separated string. */
function queueConfig(name, subjects, options = {}) {
  if (typeof subjects === 'string') subjects = subjects.split(',').map((s) => s.trim()).filter(Boolean);
  if (!Array.isArray(subjects) || subjects.length === 0) throw new TscaleError('a queue needs at least one subject pattern');
  for (const s of subjects) {
    const e = P.patternError(s);
    if (e) throw new TscaleError(e);
  }
  const d = { name, subjects: [...subjects] };
  for (const [k, v] of Object.entries(options)) {
    if (v === undefined || v === null || k === 'timeout') continue;
    const wire = CONFIG_KEYS[k] || (Object.values(CONFIG_KEYS).includes(k) ? k : null);
    if (!wire) throw new TscaleError(`unknown queue option ${JSON.stringify(k)} (known: ${Object.keys(CONFIG_KEYS).join(', ')})`);
    d[wire] = v;
  }
  return d;
}

/** first | last | new | a sequence number | ['time', unix seconds] | a Date -> the wire form of a new group's start. */
function startValue(start) {
  if (start == null || start === 'first' || start === 'last' || start === 'new') return start ?? null;
  if (isInt(start) && start >= 0) return start;
  if (typeof start === 'string' && /^\d+$/.test(start)) return Number(start);
  if (start instanceof Date) return ['time', start.getTime() / 1000];
  if (Array.isArray(start) && start.length === 2 && start[0] === 'time' && typeof start[1] === 'number') return ['time', start[1]];
  throw new TscaleError("start must be 'first', 'last', 'new', a sequence number, a Date or ['time', unix seconds]");
}

/** Headers of a confirmed publish: the caller's, Tscale-Confirm (the batch name), Tscale-Msg-Id. */
function confirmHeaders(headers, msgId, batchName) {
  const h = headers ? { ...headers } : {};
  h[H_CONFIRM] = batchName;
  if (msgId != null) {
    if (typeof msgId !== 'string' || msgId.length < 1 || msgId.length > MAX_MSG_ID) {
      throw new TscaleError(`msgId must be a string of 1..${MAX_MSG_ID} characters`);
    }
    h[H_MSG_ID] = msgId;
  }
  return h;
}

function decodePayload(data, what) {
  try {
    return decoder.decode(data);
  } catch {
    throw new TscaleError(`${what}: undecodable reply`);
  }
}

/** The `ok` value of a reply, or the typed error it carries; QueueUnavailable for "no responders". */
function decodeReply(data, headers, what) {
  if (headers && headers[P.STATUS_HEADER] === P.NO_RESPONDERS_STATUS) {
    throw queueError('queue_unavailable', `${what}: nothing answers (the queue's home is unreachable)`);
  }
  const d = decodePayload(data, what);
  if (!isMap(d)) throw new TscaleError(`${what}: unexpected reply`);
  if ('error' in d) throw queueError(d.error, d.message);
  if (!('ok' in d)) throw new TscaleError(`${what}: reply without ok or error`);
  return d.ok;
}

/** A confirmed publish: the queue that stored it, its sequence there, and whether a msgId made it a duplicate. */
class PubAck {
  constructor(queue, seq, duplicate) { this.queue = queue; this.seq = seq; this.duplicate = duplicate; }
}

const ackOk = (queue, seq, dup) => typeof queue === 'string' && isInt(seq) && seq >= 1 && typeof dup === 'boolean';

/** A lone confirm on the event's own reply name: "no responders" (no queue), {queue, seq, duplicate} or {error}. */
function decodePubAck(name, data, headers) {
  if (headers && headers[P.STATUS_HEADER] === P.NO_RESPONDERS_STATUS) {
    throw queueError('no_queue', `no queue stores ${JSON.stringify(name)} (nothing is subscribed to it)`);
  }
  const d = decodePayload(data, `publish ${JSON.stringify(name)}`);
  if (isMap(d) && 'error' in d) throw queueError(d.error, d.message);
  if (!isMap(d) || !ackOk(d.queue, d.seq, d.duplicate)) throw new TscaleError(`publish ${JSON.stringify(name)}: unexpected confirm`);
  return new PubAck(d.queue, d.seq, d.duplicate);
}

/**
 * A batch of confirms ({acks: [[reply, queue, seq, dup]], errors: [[reply, code, message]]}):
 * [[reply, PubAck | Error], ...].  Entries of a wrong shape are skipped (their publishes time out);
 * a payload that is not such a map gives [].
 */
function decodeConfirmBatch(data) {
  let d;
  try { d = decoder.decode(data); } catch { return []; }
  if (!isMap(d)) return [];
  const out = [];
  for (const a of Array.isArray(d.acks) ? d.acks : []) {
    if (Array.isArray(a) && a.length === 4 && typeof a[0] === 'string' && ackOk(a[1], a[2], a[3])) {
      out.push([a[0], new PubAck(a[1], a[2], a[3])]);
    }
  }
  for (const e of Array.isArray(d.errors) ? d.errors : []) {
    if (Array.isArray(e) && e.length === 3 && typeof e[0] === 'string' && typeof e[1] === 'string') {
      out.push([e[0], queueError(e[1], e[2])]);
    }
  }
  return out;
}

/** One delivery of a queued event; answer it with ack(), nak(delayMs), inProgress() or term(). */
class QueueMsg {
  constructor(queue, group, item, answer) {
    [this.seq, this.name, this.data, this.headers, this.deliveries, this.time] = item;
    this.queue = queue;
    this.group = group;
    this._answer = answer;
  }
  get subject() { return this.name; }
  /** Done: never delivered to this group again. */
  ack() { this._answer('ack', this.seq); }
  /** Deliver again after delayMs (at once by default). */
  nak(delayMs) { this._answer('nak', this.seq, delayMs == null ? null : delayMs / 1000); }
  /** Still working on it: the ack wait starts again. */
  inProgress() { this._answer('wip', this.seq); }
  /** Never deliver again (not acked: counted as terminated). */
  term() { this._answer('term', this.seq); }
  toString() { return `QueueMsg(${this.queue} #${this.seq} ${this.name}, ${this.deliveries} deliveries)`; }
}

/** [seq, name, payload, headers|nil, deliveries, time] as section 19 promises it. */
function fetchItemOk(m) {
  return Array.isArray(m) && m.length >= 6 && isInt(m[0]) && m[0] >= 1 && typeof m[1] === 'string' &&
    m[2] instanceof Uint8Array && (m[3] === null || (isMap(m[3]) && Object.values(m[3]).every((v) => typeof v === 'string'))) &&
    isInt(m[4]) && m[4] >= 1 && typeof m[5] === 'number';
}

/** Gathers the reply chunks of one fetch. */
class FetchCollector {
  constructor(queue, group, answer) {
    this.queue = queue;
    this.group = group;
    this.answer = answer;
    this.msgs = [];
    this.error = null;
    this.done = false;
  }

  /** One reply event; true once the fetch is complete (its last chunk, or an error). */
  feed(data, headers) {
    try {
      if (headers && headers[P.STATUS_HEADER] === P.NO_RESPONDERS_STATUS) {
        throw queueError('queue_unavailable', `queue ${JSON.stringify(this.queue)}: nothing answers (home unreachable)`);
      }
      const d = decodePayload(data, `fetch from ${JSON.stringify(this.queue)}`);
      if (!isMap(d)) throw new TscaleError('unexpected fetch reply');
      if ('error' in d) throw queueError(d.error, d.message);
      const msgs = d.msgs ?? [];
      if (!Array.isArray(msgs) || !msgs.every(fetchItemOk)) throw new TscaleError(`fetch from ${JSON.stringify(this.queue)}: malformed messages in the reply`);
      for (const m of msgs) {
        const p = m[2];
        m[2] = Buffer.from(p.buffer, p.byteOffset, p.byteLength);
        this.msgs.push(new QueueMsg(this.queue, this.group, m, this.answer));
      }
      this.done = d.done !== false;
    } catch (e) {   // a reply we cannot read ends the fetch with that error
      this.error = e;
      this.done = true;
    }
    return this.done;
  }
}

module.exports = {
  API_PREFIX, LS_PREFIX, H_CONFIRM, H_MSG_ID, MAX_MSG_ID, MAX_EXPIRES_S, MAX_BATCH, STARTING, RETRY_PAUSE_MS,
  QueueError, QueueNotFound, QueueExists, BadQueueConfig, BadQueueRequest, QueueFull, StorageFull, QueueUnavailable, NoQueue,
  queueError, queueNameError, subjectFor, lsSubjects, request, queueConfig, startValue, confirmHeaders,
  decodeReply, decodePubAck, decodeConfirmBatch, PubAck, QueueMsg, FetchCollector,
};
