'use strict';
// Test harness: real tscale nodes and real Python clients, started and stopped by pid.
// No sleeps stand in for synchronisation: waitUntil polls a condition with a deadline.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const tscale = require('..');
const { shardOf } = require('../lib/protocol');

const REPO = path.resolve(__dirname, '..', '..', '..');
const PYTHON = process.env.TSCALE_PYTHON || path.join(REPO, '.venv', 'bin', 'python');
const DEADLINE = 20000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Resolves 'timeout' after ms without keeping the process alive (a deadline, not a wait). */
const timeout = (ms) => new Promise((r) => setTimeout(r, ms, 'timeout').unref());

async function waitUntil(pred, what, timeoutMs = DEADLINE, intervalMs = 20) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await pred();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    await sleep(intervalMs);
  }
}

function portFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

async function freePortBlock(n) {
  for (let i = 0; i < 500; i++) {
    const base = 20000 + Math.floor(Math.random() * (40000 - n));
    let ok = true;
    for (let p = base; p < base + n && ok; p++) ok = await portFree(p);
    if (ok) return base;
  }
  throw new Error(`no block of ${n} free ports`);
}

function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TSCALE_')) env[k] = v;
  return { ...env, PYTHONUNBUFFERED: '1', TSCALE_NO_DISCOVERY: '1', ...extra };
}

/** One `tscale up` process tree on 127.0.0.1, worker i on port + i. */
class Node {
  /** creds: what test clients of this node connect with (token, serverKey, user/password, clientKey). */
  constructor({ workers = 2, token = null, extra = [], creds = {}, dir = null } = {}) {
    this.workers = workers;
    this.token = token;
    this.extra = extra;
    this.dir = dir || fs.mkdtempSync(path.join(os.tmpdir(), 'tscale-node-test-'));
    this.creds = { ...(token ? { token } : {}), ...creds };
  }

  get dataDir() { return path.join(this.dir, 'data'); }

  get addr() { return `127.0.0.1:${this.port}`; }

  /** Start and wait until every worker serves; a port taken meanwhile (another test run) earns a new block. */
  async start() {
    for (let attempt = 1; ; attempt++) {
      this.port = await freePortBlock(this.workers + 1);
      const args = ['-m', 'tscale.cli', 'up', '--listen', this.addr, '--no-discovery', '--workers', String(this.workers),
        '--data-dir', this.dataDir, ...(this.token ? ['--token', this.token] : []), ...this.extra];
      this.log = fs.openSync(path.join(this.dir, 'node.log'), 'a');
      this.proc = spawn(PYTHON, args, { cwd: this.dir, env: cleanEnv(), detached: true, stdio: ['ignore', this.log, this.log] });
      this.exited = new Promise((r) => this.proc.once('exit', r));
      try {
        await waitUntil(() => {
          if (this.proc.exitCode !== null) return 'exited';
          return this._ready();
        }, `node on ${this.addr} to report all workers alive`, 45000, 100).then((v) => {
          if (v === 'exited') throw new Error(`node exited with ${this.proc.exitCode}: ${this.logText().slice(-2000)}`);
        });
        return this;
      } catch (e) {
        await this.stop();
        if (attempt >= 3 || !/could not bind|Address already in use/.test(this.logText())) throw e;
      }
    }
  }

  logText() { try { return fs.readFileSync(path.join(this.dir, 'node.log'), 'utf8'); } catch { return ''; } }

  async status() {
    if (this.proc.exitCode !== null) throw new Error(`node exited with ${this.proc.exitCode}: ${this.logText().slice(-2000)}`);
    const c = await tscale.connect(this.addr, { name: 'test-status', ...this.creds, connectTimeout: 2000 });
    try { return await c.status(2000); } finally { await c.close(0); }
  }

  async _ready() {
    const st = await this.status();
    const ws = st.workers || [];
    return ws.length === this.workers && ws.every((w) => w.alive && w.pid) ? st : null;
  }

  async workerPids() {
    const st = await this.status();
    return [...st.workers].sort((a, b) => a.index - b.index).map((w) => w.pid);
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null) {
      try { process.kill(-this.proc.pid, 'SIGTERM'); } catch { /* gone */ }
      if ((await Promise.race([this.exited, timeout(10000)])) === 'timeout') {
        try { process.kill(-this.proc.pid, 'SIGKILL'); } catch { /* gone */ }
        await this.exited;
      }
    }
    if (this.log !== undefined) { fs.closeSync(this.log); this.log = undefined; }
  }
}

/** A Python client process (test/pyclient.py) speaking JSON lines. */
class Py {
  constructor(addr, mode, ...args) {
    this.proc = spawn(PYTHON, [path.join(__dirname, 'pyclient.py'), addr, mode, ...args],
      { cwd: REPO, env: cleanEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
    this.lines = [];
    this.stderr = '';
    this.proc.stderr.on('data', (d) => { this.stderr += d; });
    readline.createInterface({ input: this.proc.stdout }).on('line', (l) => this.lines.push(JSON.parse(l)));
    this.exited = new Promise((r) => this.proc.once('exit', r));
  }

  /** The first line (from `from` on) satisfying pred; waits with a deadline. */
  async line(pred, what, from = 0, timeoutMs = DEADLINE) {
    return waitUntil(() => {
      if (this.proc.exitCode !== null && !this.lines.slice(from).some(pred)) {
        throw new Error(`python client exited with ${this.proc.exitCode}: ${this.stderr.slice(-2000)}`);
      }
      return this.lines.slice(from).find(pred);
    }, `${what} from the python client${this.stderr ? ` (stderr: ${this.stderr.slice(-500)})` : ''}`, timeoutMs);
  }

  ready() { return this.line((l) => l.ready, 'ready'); }
  send(line) { this.proc.stdin.write(typeof line === 'string' ? line + '\n' : JSON.stringify(line) + '\n'); }
  events() { return this.lines.filter((l) => l.name !== undefined); }

  async stop() {
    if (this.proc.exitCode === null) {
      this.proc.stdin.end();
      const t = timeout(10000);
      if ((await Promise.race([this.exited, t])) === 'timeout') this.proc.kill('SIGKILL');
    }
  }
}

/** Run the tscale CLI of the repository's venv; resolves {code, stdout, stderr}. */
function cli(args, { input = null, env = {}, timeoutMs = DEADLINE } = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(PYTHON, ['-m', 'tscale.cli', ...args], { cwd: REPO, env: cleanEnv(env), stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`tscale ${args.join(' ')}: no exit within ${timeoutMs} ms`)); }, timeoutMs);
    p.once('exit', (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
    p.stdin.end(input ?? '');
  });
}

/** The CURVE public key a node with this data directory (and env, e.g. TSCALE_TOKEN) will present (`tscale keys`). */
async function serverKeyOf(dataDir, env = {}) {
  const r = await cli(['keys', '--data-dir', dataDir], { env });
  if (r.code !== 0) throw new Error(`tscale keys: ${r.stderr}`);
  return r.stdout.trim();
}

/** A users-file password hash (`tscale keys --hash-password`, password on stdin). */
async function hashPassword(pw) {
  const r = await cli(['keys', '--hash-password'], { input: pw + '\n' });
  if (r.code !== 0) throw new Error(`tscale keys --hash-password: ${r.stderr}`);
  return r.stdout.trim().split('\n').pop();
}

let counter = 0;
/** A fresh first token, so tests sharing a node never see each other's events. */
const uniq = (p = 't') => `${p}${process.pid.toString(36)}x${(counter++).toString(36)}${Math.random().toString(36).slice(2, 8)}`;

/** The first name `prefix.N` owned by worker `owner` of `count` (the shard rule of PROTOCOL.md section 8). */
function nameFor(owner, count, prefix) {
  for (let i = 0; ; i++) if (shardOf(`${prefix}.${i}`, count) === owner) return `${prefix}.${i}`;
}

module.exports = { Node, Py, PYTHON, REPO, waitUntil, sleep, uniq, freePortBlock, nameFor, cli, serverKeyOf, hashPassword };
