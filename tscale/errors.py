"""Exceptions raised by the clients."""


class TscaleError(Exception):
    """Base class of everything tscale raises."""


class ConnectError(TscaleError):
    """The node could not be reached or refused the handshake."""


class Timeout(TscaleError, TimeoutError):
    """No answer within the deadline."""


class NoResponders(TscaleError):
    """A request found nobody subscribed to its name anywhere the node can reach."""


class ServerError(TscaleError):
    """The node answered with an error frame (code + message)."""

    def __init__(self, code: str, message: str, fatal: bool = False):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal


class AddressError(TscaleError, ValueError):
    """An address that is not HOST:PORT, or whose port is not 1..65535."""
