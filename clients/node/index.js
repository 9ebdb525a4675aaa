'use strict';
// tscale client for Node.js.  See README.md and docs/PROTOCOL.md of the tscale repository.
const { Client, Subscription, connect } = require('./lib/client');
const { Msg } = require('./lib/core');
const errors = require('./lib/errors');
const protocol = require('./lib/protocol');
const keys = require('./lib/keys');

module.exports = { connect, Client, Subscription, Msg, protocol, keys, ...errors };
