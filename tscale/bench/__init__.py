"""Side-by-side benchmarks of tscale against NATS, Redis and raw pyzmq.

Layout (one concept per module):

- ``procs``      process plumbing for the harness: free ports, children in their own
                 process groups stopped by id, the READY/GO/STOP/RESULT line protocol,
                 CPU and RSS of a process tree.
- ``measure``    what runs inside a driver process: receive counters with idle
                 timeouts, pacing, latency loops, percentiles.
- ``driver``     ``python -m tscale.bench.driver ROLE SYSTEM ADDR ARGS``: one
                 publisher / subscriber / requester / responder / holder process.
- ``*_driver``   the client loops of one system each (tscale, nats, redis, zmq), all
                 with the same function signatures; ``tscale_driver`` is also meant for
                 the user-facing ``tscale bench`` command.
- ``systems``    starting and stopping each server on 127.0.0.1, versions.
- ``runner``     one measurement: fresh server, driver processes, collected results.
- ``scenarios``  what is measured (counts for full and quick mode) and how it is summarised.
- ``harness``    the command line: runs every scenario against every system N times.
- ``report``     docs/BENCHMARKS.md, docs/bench/results.json and the PNG charts.

Run it with ``scripts/bench`` or ``python -m tscale.bench.harness --quick``.
"""
