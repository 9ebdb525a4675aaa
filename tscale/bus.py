"""The in-host bus: PUB/SUB over ipc between the supervisor and the workers.

Every process binds one PUB socket in the node's runtime directory and
subscribes to the others.  A message is two frames, [topic, msgpack body];
topics address one worker (``w3.``), the supervisor (``sup.``) or everyone
(``all.``).  The body is ``[kind, sender, ...]`` with `kind` one of the
constants below.  Sender -1 is the supervisor.
"""
from __future__ import annotations

import os

# worker -> owner worker: events published through a worker that does not own them
FWD = 1            # [FWD, from, name, payload, meta, ...]
# owner worker -> holding worker: events for proxied subscriptions held there
DELIVER = 2        # [DELIVER, from, name, payload, meta, groups|nil, ...]
INTEREST = 3       # [INTEREST, from, delta, pattern, group|nil, ackkey|nil]
INTEREST_ACK = 4   # [INTEREST_ACK, from, ackkey]
ACK_REQ = 21       # [ACK_REQ, from, ackkey]   ask again, once synced (tscale/workeracks.py)
WORKER_HELLO = 5   # [WORKER_HELLO, from, epoch]           (all.) ask for snapshots
SNAPSHOT = 6       # [SNAPSHOT, from, epoch, [[pattern, group, count], ...]]
WORKER_DOWN = 7    # [WORKER_DOWN, -1, index]               (all.) from the supervisor
NODE_STATUS = 8    # [NODE_STATUS, -1, status]              (all.) from the supervisor
STATS = 9          # [STATS, from, stats]                   (sup.) from a worker
# cluster: supervisor <-> workers
PEERS = 10             # [PEERS, -1, {peer_id: {host, ports, name}}]   current overlay neighbours
PEER_INTEREST = 11     # [PEER_INTEREST, -1, peer_id, replace, [[pattern, group, n], ...]]
SYNC_REQ = 12          # [SYNC_REQ, -1, token]       apply everything before this, then answer
SYNC_ACK = 13          # [SYNC_ACK, from, token]
LOCAL_INTEREST = 14    # [LOCAL_INTEREST, from, epoch, replace, [[pattern, group, delta_or_count], ...]]
#                        a worker's interest: full table once the supervisor hears it, then deltas
CONFIRM_REQ = 15       # [CONFIRM_REQ, from, key]    tell me when every reachable node has our interest
CONFIRMED = 16         # [CONFIRMED, -1, key]
CLUSTER_SNAPSHOT = 17  # [CLUSTER_SNAPSHOT, -1, epoch, peers, {peer_id: entries}]   for a (re)started worker
USERS = 20             # [USERS, -1, users_doc]     the users file was reloaded (SIGHUP)
FWD_PEER = 18          # [FWD_PEER, from, src_node, name, payload, meta, groups, ...]  peer events for the owner
# durable queues (workers/queues.py)
QUEUE_DEFS = 19        # [QUEUE_DEFS, from, [[name, subjects, retention], ...]]  (all. or w{i}.) this worker's queues

SUPERVISOR = -1
ALL = b"all."
SUP = b"sup."


def topic(worker: int) -> bytes:
    return b"w%d." % worker


def supervisor_endpoint(run_dir: str) -> str:
    return "ipc://" + os.path.join(run_dir, "sup.pub")


def worker_endpoint(run_dir: str, index: int) -> str:
    return "ipc://" + os.path.join(run_dir, f"w{index}.pub")
