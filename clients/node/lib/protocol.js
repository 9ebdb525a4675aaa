'use strict';
// Wire protocol v1 (docs/PROTOCOL.md): command codes, error codes, the codec,
// the shard hash and the name/pattern rules.  Sans-I/O: no sockets here.
const { Encoder, Decoder } = require('@msgpack/msgpack');

const VERSION = 1;
const HELLO = 1, PUB = 2, SUB = 3, UNSUB = 4, PING = 5, PONG = 6, STATUS = 7, BYE = 8;
const WELCOME = 16, MSG = 17, OK = 18, ERR = 19, STATUS_REPLY = 20;

const E = Object.freeze({
  MALFORMED: 'malformed', UNKNOWN_COMMAND: 'unknown_command', BAD_NAME: 'bad_name',
  BAD_PATTERN: 'bad_pattern', PAYLOAD_TOO_LARGE: 'payload_too_large', BAD_VERSION: 'bad_version',
  NOT_AUTHORIZED: 'not_authorized', BAD_SID: 'bad_sid', TOO_MANY_SUBS: 'too_many_subscriptions',
});

// Reply a node publishes to a request's reply name when nobody can take it.
const STATUS_HEADER = 'Status';
const NO_RESPONDERS_STATUS = '503';

const encoder = new Encoder();
const decoder = new Decoder();

/** One frame: a msgpack array. Strings become str, Uint8Array/Buffer bin, null nil. */
function pack(cmd) { return encoder.encode(cmd); }

/** Decode one frame; null if it is not an array starting with an integer (callers drop it). */
function unpack(frame) {
  let cmd;
  try { cmd = decoder.decode(frame); } catch { return null; }
  if (!Array.isArray(cmd) || cmd.length === 0 || !Number.isInteger(cmd[0])) return null;
  return cmd;
}

// CRC-32 (IEEE 802.3, as zlib): the shard hash of section 8.
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function shardOf(name, count) {
  return count === 1 ? 0 : crc32(Buffer.from(name, 'utf8')) % count;
}

// Names and patterns (tscale/subjects.py): 1..512 code points, no whitespace or NUL,
// dot-separated non-empty tokens; '*' one token, '>' trailing tokens (patterns only).
const MAX_NAME_LEN = 512;
const BAD_CHARS = /[ \t\r\n\f\v\0]/;

function shapeError(what, v) {
  if (typeof v !== 'string') return `${what} must be a string`;
  if (v.length === 0) return `${what} must be 1..${MAX_NAME_LEN} characters`;
  if (v.length > MAX_NAME_LEN && [...v].length > MAX_NAME_LEN) return `${what} must be 1..${MAX_NAME_LEN} characters`;
  if (BAD_CHARS.test(v)) return `${what} ${JSON.stringify(v)} contains whitespace or NUL`;
  return null;
}

function nameError(name) {
  const e = shapeError('name', name);
  if (e) return e;
  for (const tok of name.split('.')) {
    if (!tok) return `name ${JSON.stringify(name)} has an empty token`;
    if (tok.includes('*') || tok.includes('>')) {
      return `name ${JSON.stringify(name)} contains a wildcard; publish to literal names only`;
    }
  }
  return null;
}

function patternError(pattern) {
  const e = shapeError('pattern', pattern);
  if (e) return e;
  const toks = pattern.split('.');
  for (let i = 0; i < toks.length; i++) {
    const tok = toks[i];
    if (!tok) return `pattern ${JSON.stringify(pattern)} has an empty token`;
    if (tok === '>') {
      if (i !== toks.length - 1) return `pattern ${JSON.stringify(pattern)}: '>' may only be the last token`;
    } else if (tok !== '*' && (tok.includes('*') || tok.includes('>'))) {
      return `pattern ${JSON.stringify(pattern)}: wildcards must be whole tokens`;
    }
  }
  return null;
}

const isLiteral = (pattern) => !pattern.includes('*') && !pattern.includes('>');

// Queue group names: 1..128 characters, no space, no control or other non-printable
// character (Unicode categories C* and Z* other than the plain space are refused).
const MAX_GROUP_LEN = 128;
const NON_PRINTABLE = /[\p{C}\p{Z}]/u;

function groupError(group) {
  if (typeof group !== 'string' || group.length === 0 || [...group].length > MAX_GROUP_LEN ||
      NON_PRINTABLE.test(group)) {
    return `queue group must be 1..${MAX_GROUP_LEN} printable characters without spaces`;
  }
  return null;
}

// -- frames from the node: one decoder, shape checked before any handler sees it --------
const isInt = Number.isInteger;
const isStrMap = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);

function metaError(meta) {
  if (meta === null) return null;
  if (!Array.isArray(meta) || meta.length !== 2) return 'meta must be nil or [headers, reply]';
  const [headers, reply] = meta;
  if (headers !== null) {
    if (!isStrMap(headers)) return 'headers must be a map';
    for (const k in headers) if (typeof headers[k] !== 'string') return 'header values must be strings';
  }
  if (reply !== null && typeof reply !== 'string') return 'reply must be a string';
  return null;
}

// Per command code: why a frame of that code is not what PROTOCOL.md promises, or null.
const NODE_FRAME_ERRORS = {
  [MSG]: (cmd) => ((cmd.length - 1) % 4 ? 'MSG carries (sid, name, payload, meta) quadruples' : null),
  [WELCOME]: (cmd) => {
    const info = cmd[2];
    if (cmd.length < 3 || !isStrMap(info)) return 'WELCOME is [16, version, info]';
    const { ports, shard } = info;
    if (!Array.isArray(ports) || ports.length === 0 || ports.length > 256 ||
        !ports.every((p) => isInt(p) && p > 0 && p < 65536)) {
      return 'WELCOME ports must be TCP ports';
    }
    if (!isStrMap(shard) || shard.hash !== 'crc32' || shard.count !== ports.length) {
      return 'WELCOME shard must be {hash: "crc32", count: len(ports)}';
    }
    if (!isInt(info.max_payload) || info.max_payload < 1) return 'WELCOME max_payload must be a positive int';
    if (!isInt(info.worker) || info.worker < 0 || info.worker >= ports.length) return 'WELCOME worker out of range';
    return null;
  },
  [OK]: (cmd) => (cmd.length < 2 ? 'OK is [18, req]' : null),
  [PONG]: (cmd) => (cmd.length < 2 ? 'PONG is [6, token]' : null),
  [PING]: () => null,
  [ERR]: (cmd) => (cmd.length < 3 || typeof cmd[1] !== 'string' || typeof cmd[2] !== 'string'
    ? 'ERR is [19, code, message, req, fatal]' : null),
  [STATUS_REPLY]: (cmd) => (cmd.length < 3 || !isStrMap(cmd[2]) ? 'STATUS_REPLY is [20, req, status]' : null),
};

/** Is MSG quadruple i (int sid, str name, bin payload, meta) well formed? Bad ones are dropped alone. */
function msgEventOk(cmd, i) {
  return isInt(cmd[i]) && typeof cmd[i + 1] === 'string' && cmd[i + 2] instanceof Uint8Array &&
    (cmd[i + 3] === null || metaError(cmd[i + 3]) === null);
}

/**
 * Decode and check one frame from a node: [cmd, null] for a frame handlers may trust,
 * or [null, reason] (not msgpack, not a command array, a shape PROTOCOL.md does not allow,
 * or a code a node does not send to clients: a newer node's frames are ignored).
 * MSG events are checked one by one by the receiver with msgEventOk (no second pass).
 */
function decodeNodeFrame(frame) {
  const cmd = unpack(frame);
  if (cmd === null) return [null, 'not a msgpack array starting with a command code'];
  const check = NODE_FRAME_ERRORS[cmd[0]];
  if (check === undefined) return [null, `command code ${cmd[0]} is not sent to clients`];
  const e = check(cmd);
  return e ? [null, e] : [cmd, null];
}

module.exports = {
  VERSION, HELLO, PUB, SUB, UNSUB, PING, PONG, STATUS, BYE, WELCOME, MSG, OK, ERR, STATUS_REPLY,
  E, FATAL_ERRORS: new Set([E.BAD_VERSION, E.NOT_AUTHORIZED]), STATUS_HEADER, NO_RESPONDERS_STATUS,
  pack, unpack, decodeNodeFrame, msgEventOk, metaError, crc32, shardOf, nameError, patternError, isLiteral, groupError, MAX_NAME_LEN, MAX_GROUP_LEN,
};
