'use strict';
// tscale client for Node.js.  See README.md and docs/PROTOCOL.md of the tscale repository.
const { Client, Subscription, Consumer, connect } = require('./lib/client');
const { Msg } = require('./lib/core');
const errors = require('./lib/errors');
const protocol = require('./lib/protocol');
const keys = require('./lib/keys');
const queues = require('./lib/queues');

const { PubAck, QueueMsg, QueueError, QueueNotFound, QueueExists, BadQueueConfig, BadQueueRequest, QueueFull, StorageFull,
  QueueUnavailable, NoQueue } = queues;

module.exports = {
  connect, Client, Subscription, Consumer, Msg, PubAck, QueueMsg, protocol, keys, ...errors,
  QueueError, QueueNotFound, QueueExists, BadQueueConfig, BadQueueRequest, QueueFull, StorageFull, QueueUnavailable, NoQueue,
};
