'use strict';
// Errors the client raises.  Every one is a TscaleError.

class TscaleError extends Error {
  constructor(message) { super(message); this.name = this.constructor.name; }
}
/** The node could not be reached or refused the handshake. */
class ConnectError extends TscaleError {}
/** No answer within the deadline. */
class TimeoutError extends TscaleError {}
/** A request found nobody subscribed to its name anywhere the node can reach. */
class NoResponders extends TscaleError {}
/** The node answered with an ERR frame. */
class ServerError extends TscaleError {
  constructor(code, message, fatal = false) {
    super(`${code}: ${message}`);
    this.code = code;
    this.serverMessage = message;
    this.fatal = fatal;
  }
}

module.exports = { TscaleError, ConnectError, TimeoutError, NoResponders, ServerError };
