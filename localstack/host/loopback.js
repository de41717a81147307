// Preloaded into LocalStack's Node children (NODE_OPTIONS=--require, set by
// kestrel_local.localstack_host): a server that names no host, or every interface, listens on
// 127.0.0.1 instead. kinesis-mock, LocalStack's Kinesis, otherwise listens on 0.0.0.0 and has
// no setting for its address.
"use strict";
const net = require("net");
const LOOPBACK = "127.0.0.1";
const ANY = new Set([undefined, null, "", "0.0.0.0", "::"]);
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first !== null && typeof first === "object" && !Array.isArray(first)) {
    if (first.path === undefined && first.fd === undefined && ANY.has(first.host)) {
      args[0] = Object.assign({}, first, { host: LOOPBACK });
    }
  } else if (typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first))) {
    if (typeof args[1] === "string") {
      if (ANY.has(args[1])) args[1] = LOOPBACK;
    } else {
      args.splice(1, 0, LOOPBACK);
    }
  } else if (first === undefined || typeof first === "function") {
    args.unshift(0, LOOPBACK);
  }
  return listen.apply(this, args);
};
