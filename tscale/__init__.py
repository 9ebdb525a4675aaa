"""tscale: a decentralized event router on ZeroMQ.

`tscale.Client` is the synchronous client, `tscale.aio.Client` the asyncio one.
"""
__version__ = "0.1.0"

from .errors import (ConnectError, NoResponders, ServerError, Timeout,  # noqa: E402
                     TscaleError)


def __getattr__(name):
    # Imported lazily so `import tscale` in a worker does not pull in the client.
    if name in ("Client", "Msg", "Subscription"):
        from . import client
        return getattr(client, name)
    raise AttributeError(name)


__all__ = ["Client", "Msg", "Subscription", "TscaleError", "ConnectError", "Timeout",
           "NoResponders", "ServerError", "__version__"]
