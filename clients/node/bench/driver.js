'use strict';
// One benchmark client process for scripts/bench, in Node.js:
//   node bench/driver.js ROLE CLIENT ADDR ARGS_JSON
// ROLE: pub | sub | req | rep; CLIENT: tscale (this package) | nats (nats.js).
// Speaks the harness's line protocol (tscale/bench/driver.py): READY once set up,
// waits for GO on stdin, STOP ends a subscriber or responder early; the last line
// is RESULT {json} or ERROR "text".  Times are CLOCK_MONOTONIC seconds, the clock of
// Python's time.monotonic(), so the harness combines them with its own.
const crypto = require('node:crypto');
const readline = require('node:readline');

const [role, kind, addr, argsJson] = process.argv.slice(2);
const args = JSON.parse(argsJson);
const now = () => Number(process.hrtime.bigint()) / 1e9;
const tick = () => new Promise((r) => setImmediate(r));
const YIELD_EVERY = 1000;   // publishers let I/O run every this many events (both clients alike)

let goResolve;
const go = new Promise((r) => { goResolve = r; });
let stopped = false;
let goAt = null;
let cpuAtGo = null;
readline.createInterface({ input: process.stdin }).on('line', (l) => {
  if (l.trim() === 'GO' && goAt === null) { goAt = now(); cpuAtGo = process.cpuUsage(); goResolve(); }
  if (l.trim() === 'STOP') stopped = true;
}).on('close', () => { stopped = true; goResolve(); });
const say = (line) => process.stdout.write(line + '\n');

// -- the two clients behind one small interface ---------------------------------------
async function tscaleClient(name) {
  const tscale = require('..');
  const c = await tscale.connect(addr, { name });
  return {
    publish: (n, d) => c.publish(n, d),
    subscribe: (p, queue, cb) => c.subscribe(p, { queue, callback: cb }),
    respond: (m, d) => m.respond(d),
    request: (n, d, t) => c.request(n, d, { timeout: t }),
    flush: () => c.flush(120000),
    close: () => c.close(),
  };
}

async function natsClient(name) {
  const { connect } = require('nats');
  const nc = await connect({ servers: `nats://${addr}`, name, reconnect: false });
  return {
    publish: (n, d) => nc.publish(n, d),
    subscribe: async (p, queue, cb) => {
      nc.subscribe(p, { queue: queue || undefined, callback: (err, m) => { if (!err) cb(m); } });
      await nc.flush();
    },
    respond: (m, d) => m.respond(d),
    request: (n, d, t) => nc.request(n, d, { timeout: t }),
    flush: () => nc.flush(),
    close: () => nc.drain(),
  };
}

const clients = { tscale: tscaleClient, nats: natsClient };

// -- roles ----------------------------------------------------------------------------
async function pub() {
  const c = await clients[kind]('bench-pub');
  const data = crypto.randomBytes(args.size);
  say('READY');
  await go;
  const t0 = now();
  for (let i = 0; i < args.count; i++) {
    c.publish(args.name, data);
    if (i % YIELD_EVERY === YIELD_EVERY - 1) await tick();
  }
  await c.flush();
  const t1 = now();
  await c.close();
  return { sent: args.count, t_start: t0, t_end: t1, rate: args.count / (t1 - t0) };
}

async function sub() {
  const c = await clients[kind]('bench-sub');
  const expected = args.count ?? null;
  let received = 0, first = null, last = null;
  await c.subscribe(args.pattern, args.queue, () => {
    const t = now();
    if (first === null) first = t;
    last = t;
    received++;
  });
  say('READY');
  let idledOut = false;
  for (;;) {
    await new Promise((r) => setTimeout(r, 20));
    if (stopped || (expected !== null && received >= expected)) break;
    const t = now();
    if ((last !== null && t - last > args.idle_timeout) || (last === null && goAt !== null && t - goAt > args.start_timeout)) {
      idledOut = true;
      break;
    }
  }
  await c.close();
  const span = first === null ? 0 : last - first;
  return { received, expected, first, last, rate: span > 0 ? received / span : null, idled_out: idledOut };
}

function percentiles(samples) {
  if (!samples.length) return {};
  const s = [...samples].sort((a, b) => a - b);
  const pct = (p) => s[Math.min(s.length - 1, Math.round((p / 100) * (s.length - 1)))];
  return { count: s.length, p50: pct(50), p90: pct(90), p99: pct(99), p999: pct(99.9), max: s[s.length - 1],
    mean: s.reduce((a, b) => a + b, 0) / s.length };
}

async function req() {
  const c = await clients[kind]('bench-req');
  const data = crypto.randomBytes(args.size);
  const timeoutMs = (args.timeout ?? 1) * 1000;
  for (let i = 0; i < 50; i++) await c.request(args.name, data, timeoutMs);   // warm-up, as the Python drivers
  say('READY');
  await go;
  const interval = args.rate ? 1 / args.rate : 0;
  let next = now();
  const samples = [];
  let errors = 0, firstError = null;
  const t0 = now();
  for (let i = 0; i < args.count && !stopped; i++) {
    if (interval) {   // paced, no catch-up bursts
      const t = now();
      const wait = next - t;
      next = Math.max(next, t) + interval;
      if (wait > 0) await new Promise((r) => setTimeout(r, wait * 1000));
    }
    const start = process.hrtime.bigint();
    try {
      await c.request(args.name, data, timeoutMs);
      samples.push(Number(process.hrtime.bigint() - start) / 1000);
    } catch (e) {
      errors++;
      firstError = firstError || String(e);
    }
  }
  const elapsed = now() - t0;
  await c.close();
  return { ok: samples.length, errors, first_error: firstError, elapsed, latency_us: percentiles(samples) };
}

async function rep() {
  const c = await clients[kind]('bench-rep');
  let served = 0;
  await c.subscribe(args.name, null, (m) => { served++; c.respond(m, m.data); });
  await c.flush();
  say('READY');
  const end = now() + (args.limit ?? 600);
  while (!stopped && now() < end) await new Promise((r) => setTimeout(r, 50));
  await c.close();
  return { served };
}

const roles = { pub, sub, req, rep };

(async () => {
  try {
    if (!roles[role] || !clients[kind]) throw new Error(`usage: driver.js pub|sub|req|rep tscale|nats ADDR ARGS_JSON`);
    const result = await roles[role]();
    if (cpuAtGo) {
      const u = process.cpuUsage(cpuAtGo);
      result.cpu_s = (u.user + u.system) / 1e6;
    }
    say('RESULT ' + JSON.stringify(result));
    process.exit(0);
  } catch (e) {
    process.stderr.write(String(e && e.stack || e) + '\n');
    say('ERROR ' + JSON.stringify(`${e && e.name}: ${e && e.message}`));
    process.exit(1);
  }
})();
