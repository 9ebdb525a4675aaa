"""Entry point: `python -m tscale_workers --index=N`, started by the supervisor with
its specification in the environment variable TSCALE_WORKER_SPEC (not argv: it may
hold the node's token)."""
import json
import os
import sys

from .worker import Worker


def main() -> int:
    spec = os.environ.pop("TSCALE_WORKER_SPEC", None)
    if spec is None:
        print("tscale_workers is started by the tscale supervisor", file=sys.stderr)
        return 2
    return Worker(json.loads(spec)).run()


if __name__ == "__main__":
    sys.exit(main())
