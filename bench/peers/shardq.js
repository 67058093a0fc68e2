'use strict';
// shardq adapter for the W1 peer harness (../shared/bench/peers): the harness runs
// shardq the way it runs beanstalkd, BullMQ, pg-boss and the naive MySQL queue, from
// Node, so that all of them are measured by one program in one go. Install and use:
// bench/README.md ("Against the peers, in their harness").
//
// It is a plain gRPC client, as a Node user would write one (no SDK): unary Enqueue
// (one item, or 100 in one call), Dequeue (the harness's batch, long poll) and Ack
// (one call per item, or one per fetched batch). Priority: W1's 0..9 as-is (lower =
// sooner, as in shardq). Delay: delay_ms. The topic is the harness's queue name, in
// namespace "peerbench".
const { execSync } = require('child_process');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const SERVER = process.env.SHARDQ_SERVER || '127.0.0.1:50051';
// The harness follows symlinks to this file, so __dirname is bench/peers in the repo.
const PROTO_DIR = process.env.SHARDQ_PROTO_DIR || path.join(__dirname, '..', '..', 'proto');
const NS = 'peerbench';
const WAIT_MS = 1000; // long poll of an empty Dequeue

const def = protoLoader.loadSync(path.join(PROTO_DIR, 'shardq', 'v1', 'queue.proto'), {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: Number,
  defaults: true,
});
const { Queue } = grpc.loadPackageDefinition(def).shardq.v1;

function client() {
  return new Queue(SERVER, grpc.credentials.createInsecure());
}
// A unary call as a promise.
function call(c, method, req) {
  return new Promise((resolve, reject) =>
    c[method](req, (err, resp) => (err ? reject(err) : resolve(resp))));
}
// Rejects unless every item of a batched answer is OK.
function allOk(resp, what) {
  const bad = resp.results.find((r) => (r.status ? r.status.code : r.code) !== 0);
  if (bad) throw new Error(`${what}: ${JSON.stringify(bad)}`);
  return resp;
}
const toItem = (topic, it) => ({
  topic,
  priority: it.prio,
  payload: Buffer.from(it.body, 'latin1'),
  ...(it.delayMs ? { delay_ms: it.delayMs } : {}),
});

module.exports = {
  name: 'shardq',
  batchEnqueue: 'one Enqueue call of 100 items (one transaction per shard)',
  batchAck: true,
  // The shardqd to measure (its CPU): SHARDQ_PID, else the newest shardqd process.
  serverPid: () => +(process.env.SHARDQ_PID || execSync('pgrep -n shardqd').toString()),
  async info() {
    return {
      version: 'shardq (this repository)',
      settings: `${SERVER}; namespace ${NS}, topic per run; durable (InnoDB flush at every commit)`,
    };
  },
  async setup(cfg) {
    const n = await this.count(cfg);
    if (n) throw new Error(`topic ${cfg.queue} not empty: ${n}`);
  },
  async count(cfg) {
    const c = client();
    try {
      // The topics come in pages, sorted by name; a namespace may hold many.
      let after = '';
      do {
        const resp = await call(c, 'GetActiveTopics', {
          namespace: NS, limit: 10000, after_topic: after,
        });
        const t = resp.topics.find((x) => x.topic === cfg.queue);
        if (t) return t.ready + t.delayed + t.leased;
        after = resp.next_after_topic;
      } while (after);
      return 0;
    } finally {
      c.close();
    }
  },
  async producer(cfg) {
    const c = client();
    const enqueue = (items) =>
      call(c, 'Enqueue', { namespace: NS, items: items.map((it) => toItem(cfg.queue, it)) })
        .then((resp) => allOk(resp, 'enqueue'));
    return {
      send: (it) => enqueue([it]),
      sendBatch: (items) => enqueue(items),
      close: async () => c.close(),
    };
  },
  async consumer(cfg, hooks) {
    const c = client();
    let running = false, loopP = null, batchNo = 0;
    const ack = (items) =>
      call(c, 'Ack', {
        items: items.map((x) => ({ id: x.id, lease_token: x.lease_token })),
      }).then((resp) => allOk(resp, 'ack'));
    async function loop() {
      while (running) {
        const resp = await call(c, 'Dequeue', {
          namespace: NS,
          topics: [{ topic: cfg.queue, count: cfg.batch }],
          wait_ms: WAIT_MS,
        });
        if (!resp.items.length) continue;
        batchNo++;
        for (const x of resp.items) hooks.onRecv(x.payload.toString('latin1'), batchNo);
        if (cfg.ackMode === 'batch') {
          await ack(resp.items);
          hooks.onAck(resp.items.length);
        } else {
          await Promise.all(resp.items.map((x) => ack([x]).then(() => hooks.onAck(1))));
        }
      }
    }
    return {
      run() { running = true; loopP = loop(); },
      async stop() { running = false; await loopP; c.close(); },
    };
  },
};
