"""Durable queues (issue 12): events kept on disk until a consumer group acknowledges them.

* `model`  - a queue and its consumer groups as a sans-I/O state machine (time is an argument).
* `store`  - the storage interface and its sqlite implementation (WAL, synchronous=FULL, group commit).
* `api`    - the request/reply subjects (`$Q.<queue>`) and the pure validation of their payloads.

The worker's shell around them is `workers/queues.py`.
"""
