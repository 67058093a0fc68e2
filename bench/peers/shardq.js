'use strict';
// shardq adapter for the W1 peer harness (../shared/bench/peers): the harness runs
// shardq the way it runs beanstalkd, BullMQ, pg-boss and the naive MySQL queue, from
// Node, so that all of them are measured by one program in one go. Install and use:
// bench/README.md ("Against the peers, in their harness").
//
// A gRPC client with no SDK, as a Node user would write one against the wire spec
// (proto/shardq/v1/queue.proto). By default it sends its calls as messages of the
// two long-lived streams, as the C++ SDK does: a producer's Enqueue calls (one item,
// or 100 in one call) on one EnqueueStream, a consumer's Dequeue (the harness's batch,
// long poll) and Ack (one call per item, or one per fetched batch) on one
// ConsumeStream. SHARDQ_UNARY=1 makes each of them a unary RPC instead (the eighth
// round's figures in docs/BENCHMARKS.md). Priority: W1's 0..9 as-is (lower = sooner,
// as in shardq). Delay: delay_ms. The topic is the harness's queue name, in namespace
// "peerbench".
const { execSync } = require('child_process');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const SERVER = process.env.SHARDQ_SERVER || '127.0.0.1:50051';
// The harness follows symlinks to this file, so __dirname is bench/peers in the repo.
const PROTO_DIR = process.env.SHARDQ_PROTO_DIR || path.join(__dirname, '..', '..', 'proto');
const UNARY = process.env.SHARDQ_UNARY === '1';
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

// Calls as messages of one bidi stream (EnqueueStream or ConsumeStream): each call is
// a request tagged with a call_id, and its answer, which may come in any order,
// carries that call_id back. `wrap(callId, req)` builds the stream's request message
// and `unwrap(resp)` takes the call's answer out of the stream's response.
class StreamCalls {
  constructor(c, method, wrap, unwrap) {
    this.pending = new Map();
    this.nextId = 1;
    this.wrap = wrap;
    this.unwrap = unwrap;
    this.stream = c[method]();
    this.stream.on('data', (resp) => {
      const p = this.pending.get(resp.call_id);
      if (!p) return;
      this.pending.delete(resp.call_id);
      if (resp.status && resp.status.code !== 0) {
        p.reject(new Error(`${method}: ${resp.status.code} ${resp.status.message}`));
      } else {
        p.resolve(this.unwrap(resp));
      }
    });
    // The stream's end fails every call still waiting for its answer.
    const fail = (err) => {
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    this.stream.on('error', fail);
    this.stream.on('end', () => fail(new Error(`${method}: the stream ended`)));
  }
  call(req) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.stream.write(this.wrap(id, req));
    });
  }
  end() {
    this.stream.end();
  }
}
// A producer's Enqueue calls and a consumer's Dequeue and Ack calls: on one stream
// each, or unary (SHARDQ_UNARY=1).
function enqueueCalls(c) {
  if (UNARY) return { enqueue: (req) => call(c, 'Enqueue', req), end() {} };
  const s = new StreamCalls(c, 'EnqueueStream',
    (call_id, request) => ({ call_id, request }), (resp) => resp.response);
  return { enqueue: (req) => s.call(req), end: () => s.end() };
}
function consumeCalls(c) {
  if (UNARY) {
    return {
      dequeue: (req) => call(c, 'Dequeue', req),
      ack: (req) => call(c, 'Ack', req),
      end() {},
    };
  }
  const s = new StreamCalls(c, 'ConsumeStream',
    (call_id, req) => ({ call_id, ...req }), (resp) => resp.dequeue || resp.ack);
  return {
    dequeue: (req) => s.call({ dequeue: req }),
    ack: (req) => s.call({ ack: req }),
    end: () => s.end(),
  };
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
    const calls = enqueueCalls(c);
    const enqueue = (items) =>
      calls.enqueue({ namespace: NS, items: items.map((it) => toItem(cfg.queue, it)) })
        .then((resp) => allOk(resp, 'enqueue'));
    return {
      send: (it) => enqueue([it]),
      sendBatch: (items) => enqueue(items),
      close: async () => {
        calls.end();
        c.close();
      },
    };
  },
  async consumer(cfg, hooks) {
    const c = client();
    const calls = consumeCalls(c);
    let running = false, loopP = null, batchNo = 0;
    const ack = (items) =>
      calls.ack({
        items: items.map((x) => ({ id: x.id, lease_token: x.lease_token })),
      }).then((resp) => allOk(resp, 'ack'));
    // A batch's acks go out without holding up the next Dequeue, as the C++ SDK's
    // reporter does: on the stream they overtake a parked Dequeue, so the consumer is
    // waiting for new items again while its acks commit. At most one batch's acks
    // are in flight (the next batch waits for them), and an ack error stops the loop
    // at its next turn. SHARDQ_ACK_FIRST=1 waits for each batch's acks before the
    // next Dequeue (the adapter until the twenty-sixth round).
    const ackFirst = process.env.SHARDQ_ACK_FIRST === '1';
    let acking = Promise.resolve();
    let ackError = null;
    async function loop() {
      while (running) {
        if (ackError) throw ackError;
        const resp = await calls.dequeue({
          namespace: NS,
          topics: [{ topic: cfg.queue, count: cfg.batch }],
          wait_ms: WAIT_MS,
        });
        if (!resp.items.length) continue;
        batchNo++;
        for (const x of resp.items) hooks.onRecv(x.payload.toString('latin1'), batchNo);
        await acking;
        acking = cfg.ackMode === 'batch'
          ? ack(resp.items).then(() => hooks.onAck(resp.items.length))
          : Promise.all(resp.items.map((x) => ack([x]).then(() => hooks.onAck(1))));
        acking.catch((e) => { ackError = ackError || e; });
        if (ackFirst) await acking;
      }
      await acking;
    }
    return {
      run() {
        running = true;
        loopP = loop();
        // Seen at stop(); until then a failed loop must not kill the process.
        loopP.catch(() => {});
      },
      async stop() {
        running = false;
        try {
          await loopP;
        } finally {
          calls.end();
          c.close();
        }
      },
    };
  },
};
