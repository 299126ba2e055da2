// Sends events to a forward server with @fluent-org/logger, the Node.js forward client.
// Usage: node send.js '{"port": 24224, "mode": "PackedForward", "ack": true, "count": 10, ...}'
"use strict";
const fs = require("fs");
const { FluentClient, EventTime } = require("@fluent-org/logger");

async function main() {
  const opts = JSON.parse(process.argv[2]);
  const socket = { host: "127.0.0.1", port: opts.port, timeout: 5000 };
  if (opts.ca) {
    socket.tls = { ca: fs.readFileSync(opts.ca), servername: "localhost" };
  }
  const options = {
    eventMode: opts.mode,
    socket,
    flushInterval: opts.flushInterval || 0,
    disconnect: { waitForPending: true, waitForPendingDelay: 5000 },

  };
  if (opts.ack) options.ack = { ackTimeout: 5000 };
  if (opts.sharedKey) {
    options.security = { clientHostname: "node-client", sharedKey: opts.sharedKey };
  }
  const client = new FluentClient(opts.prefix || "node", options);
  const sends = [];
  for (let i = 0; i < opts.count; i++) {
    // A number is milliseconds to this client (it sends whole seconds); EventTime keeps them.
    const ms = 1749200000123 + i;
    const time = opts.eventTime ? EventTime.fromTimestamp(ms) : ms;
    const record = opts.signal
      ? { type: "track", event: "Order Completed", user_id: `node-${i}`, properties: { order_id: `O-${i}`, revenue: i } }
      : { n: i, mode: opts.mode };
    sends.push(client.emit(opts.tag || "signal", record, time));
  }
  await Promise.all(sends);
  await client.disconnect();
  console.log(`sent ${opts.count}`);
}

main().catch((err) => {
  console.error(`send.js failed: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
