"""The Python client's side of the Node client's cross-language tests.

Driven by test/helpers.js: `python pyclient.py ADDRESS MODE ARGS...`; prints one
JSON object per line on stdout and reads commands from stdin (one per line).
Payloads travel as hex so that every byte is compared exactly.

  sub PATTERN [GROUP]   subscribe; print {"ready": true}, then one line per event;
                        stdin "count" prints {"count": n}
  pub                   stdin lines {"name", "data", "headers", "reply"} are published;
                        stdin "flush" flushes and prints {"flushed": true}
  serve NAME            answer requests on NAME with b"py:" + data, header by=python
  request NAME HEX      one request; print {"data", "headers"} or {"error": class name}
  qpub NAME COUNT       COUNT confirmed publishes, pipelined (publish_future), data b"py-<i>",
                        header i=<i>, msg_id py-<i>; print {"acks": [[queue, seq, duplicate], ...]}
"""
import json
import sys
import threading

from tscale.client import Client
from tscale.errors import TscaleError


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def event(m):
    return {"name": m.name, "data": m.data.hex(), "headers": m.headers, "reply": m.reply}


def main():
    addr, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    c = Client(addr, name=f"py-{mode}")
    lock = threading.Lock()
    count = 0
    try:
        if mode == "sub":
            def cb(m):
                nonlocal count
                with lock:
                    count += 1
                    out(event(m))
            c.subscribe(args[0], queue=args[1] if len(args) > 1 else None, cb=cb)
            out({"ready": True})
            for line in sys.stdin:
                if line.strip() == "count":
                    c.flush()
                    with lock:
                        out({"count": count})
        elif mode == "pub":
            out({"ready": True})
            for line in sys.stdin:
                if line.strip() == "flush":
                    c.flush()
                    out({"flushed": True})
                    continue
                e = json.loads(line)
                c.publish(e["name"], bytes.fromhex(e["data"]), headers=e.get("headers"), reply=e.get("reply"))
        elif mode == "serve":
            c.subscribe(args[0], cb=lambda m: m.respond(b"py:" + m.data, headers={"by": "python"}))
            out({"ready": True})
            for _ in sys.stdin:
                pass
        elif mode == "qpub":
            futures = [c.publish_future(args[0], b"py-%d" % i, headers={"i": str(i)}, msg_id="py-%d" % i)
                       for i in range(int(args[1]))]
            out({"acks": [list(f.result(10.0)) for f in futures]})
        elif mode == "request":
            try:
                m = c.request(args[0], bytes.fromhex(args[1]), timeout=5.0)
                out({"data": m.data.hex(), "headers": m.headers})
            except TscaleError as exc:
                out({"error": type(exc).__name__})
    finally:
        c.close()


if __name__ == "__main__":
    main()
