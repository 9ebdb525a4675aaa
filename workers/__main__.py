"""Entry point: `python -m tscale_workers SPEC_JSON` (started by the supervisor)."""
import json
import sys

from .worker import Worker


def main() -> int:
    spec = json.loads(sys.argv[1])
    return Worker(spec).run()


if __name__ == "__main__":
    sys.exit(main())
