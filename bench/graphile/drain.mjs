#!/usr/bin/env node
// graphile-worker side of the Gigafactory side-by-side "drain" benchmark.
//
// Usage:
//   node drain.mjs --connection <postgres url> [--jobs 20000] [--concurrency 32]
//                  [--mode default|batched] [--max-pool-size N] [--timeout 600]
//                  [--verbose]
//
// Steps:
//   1. run graphile-worker's migrations on the (fresh, empty) database,
//   2. add N no-op jobs in bulk via WorkerUtils.addJobs (untimed; chunked so a
//      single JSON parameter stays reasonable),
//   3. CHECKPOINT (the setup's writes flushed before the clock starts), then
//      start a worker (timer starts right before `run()`), wait in-process for
//      the N-th `job:success` event (no query while the worker drains: polling
//      `count(*)` every 5 ms throughout took ~10 % of the machine's CPU from the
//      worker, pg_stat_statements), then poll
//      `select count(*) from graphile_worker._private_jobs` every ~1 ms until 0
//      (`job:success` fires before the job's completion is written; completed
//      jobs are deleted from that table; since 0.16 `jobs` is a view and the
//      table is `_private_jobs`), then stop the worker cleanly,
//   4. print ONE JSON line to stdout. All graphile-worker logs go to stderr
//      (warnings/errors always; info/debug only with --verbose).
//
// Modes:
//   default  run({ connectionString, concurrency, noHandleSignals: true, taskList })
//            with graphile-worker defaults (note: default maxPoolSize is 10).
//   batched  same, plus `preset: { worker: { ... } }` with the batching options
//            declared on GraphileConfig.WorkerOptions in
//            node_modules/graphile-worker/dist/index.d.ts (consumed in
//            dist/main.js `_runTaskList`); they only exist in the preset
//            `worker` section, not as top-level run() options:
//              localQueue: { size: 500 }   // pool fetches+locks 500 jobs at once
//                                          // (default -1 = off; docs: should be
//                                          // >= concurrency)
//              completeJobBatchDelay: 0    // batch completeJob calls (default -1
//                                          // = off; docs: "even 0 can be impactful")
//              failJobBatchDelay: 0        // same for failJob (unused: no-op jobs)
//
// --max-pool-size is optional; if omitted graphile-worker's default (10) is
// used, and it logs a warning on stderr when concurrency > maxPoolSize.

import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { Logger, makeWorkerUtils, run } from "graphile-worker";

const VERSION = "0.17.3";
{
  const installed = JSON.parse(
    readFileSync(new URL("./node_modules/graphile-worker/package.json", import.meta.url), "utf8"),
  ).version;
  if (installed !== VERSION) {
    process.stderr.write(`drain.mjs: error: expected graphile-worker ${VERSION}, found ${installed} (run npm ci)\n`);
    process.exit(1);
  }
}
// How often the queue is counted once every job has reported success.
const POLL_MS = 1;
// How often the in-process wait checks for a failure, a stopped worker or the timeout.
const WATCH_MS = 50;
const ADD_CHUNK = 5000;

const BATCHED_WORKER_PRESET = {
  localQueue: { size: 500 },
  completeJobBatchDelay: 0,
  failJobBatchDelay: 0,
};

function die(message) {
  process.stderr.write(`drain.mjs: error: ${message}\n`);
  process.exit(1);
}

function parseIntArg(name, value, min) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) {
    die(`--${name} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  }
  return n;
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      connection: { type: "string" },
      jobs: { type: "string", default: "20000" },
      concurrency: { type: "string", default: "32" },
      mode: { type: "string", default: "default" },
      "max-pool-size": { type: "string" },
      timeout: { type: "string", default: "600" },
      verbose: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (e) {
  die(e.message);
}
if (args.help) {
  process.stderr.write(
    "usage: node drain.mjs --connection <postgres url> --jobs 20000 --concurrency 32 " +
      "--mode default|batched [--max-pool-size N] [--timeout SECONDS] [--verbose]\n",
  );
  process.exit(0);
}
if (!args.connection) die("--connection <postgres url> is required");
const connectionString = args.connection;
const jobs = parseIntArg("jobs", args.jobs, 1);
const concurrency = parseIntArg("concurrency", args.concurrency, 1);
const timeoutSeconds = parseIntArg("timeout", args.timeout, 1);
const maxPoolSize =
  args["max-pool-size"] === undefined
    ? undefined
    : parseIntArg("max-pool-size", args["max-pool-size"], 1);
const mode = args.mode;
if (mode !== "default" && mode !== "batched") {
  die(`--mode must be "default" or "batched", got ${JSON.stringify(mode)}`);
}

// Logger: never stdout. Errors/warnings always to stderr, the rest only with --verbose.
const logger = new Logger((scope) => (level, message) => {
  if (level === "error" || level === "warning" || args.verbose) {
    const label = scope && scope.label ? `[${scope.label}] ` : "";
    process.stderr.write(`graphile-worker ${level}: ${label}${message}\n`);
  }
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const sharedOptions = { connectionString, logger };
  if (maxPoolSize !== undefined) sharedOptions.maxPoolSize = maxPoolSize;

  // 1. migrations + 2. bulk insert (untimed)
  const utils = await makeWorkerUtils(sharedOptions);
  let runner = null;
  try {
    await utils.migrate();
    const existing = await countJobs(utils);
    if (existing !== 0) {
      throw new Error(
        `database is not empty: graphile_worker._private_jobs already has ${existing} rows (use a fresh database)`,
      );
    }
    for (let added = 0; added < jobs; added += ADD_CHUNK) {
      const n = Math.min(ADD_CHUNK, jobs - added);
      const specs = new Array(n);
      for (let i = 0; i < n; i++) specs[i] = { identifier: "noop", payload: {} };
      await utils.addJobs(specs);
    }
    const queued = await countJobs(utils);
    if (queued !== jobs) {
      throw new Error(`expected ${jobs} queued jobs after addJobs, found ${queued}`);
    }

    // The setup's dirty pages written out now, not during the timed drain (as the
    // Gigafactory drains do; see docs/performance.md, method).
    await utils.withPgClient((client) => client.query("CHECKPOINT"));

    // 3. timed drain
    const events = new EventEmitter();
    let localQueueSeen = false;
    events.on("localQueue:init", () => {
      localQueueSeen = true;
    });
    let workerError = null;
    events.on("job:error", ({ error }) => {
      workerError = workerError ?? error;
    });
    let successes = 0;
    let allSucceeded;
    const succeeded = new Promise((resolve) => {
      allSucceeded = resolve;
    });
    events.on("job:success", () => {
      successes += 1;
      if (successes === jobs) allSucceeded();
    });

    const runOptions = {
      connectionString,
      concurrency,
      noHandleSignals: true,
      taskList: { noop: async () => {} },
      logger,
      events,
    };
    if (maxPoolSize !== undefined) runOptions.maxPoolSize = maxPoolSize;
    if (mode === "batched") runOptions.preset = { worker: BATCHED_WORKER_PRESET };

    const start = performance.now();
    runner = await run(runOptions);
    let runnerDone = false;
    let runnerFailure = null;
    runner.promise.then(
      () => {
        runnerDone = true;
      },
      (e) => {
        runnerDone = true;
        runnerFailure = e;
      },
    );

    const deadline = start + timeoutSeconds * 1000;
    // Until every job has run (its completion may still be on its way to the database).
    while (successes < jobs) {
      if (workerError) throw new Error(`a job failed: ${workerError}`);
      if (runnerDone) {
        throw new Error(
          `worker stopped early after ${successes} of ${jobs} jobs${runnerFailure ? `: ${runnerFailure}` : ""}`,
        );
      }
      if (performance.now() > deadline) {
        throw new Error(`timed out after ${timeoutSeconds}s with ${successes} of ${jobs} jobs run`);
      }
      await Promise.race([succeeded, sleep(WATCH_MS)]);
    }
    let elapsed;
    await utils.withPgClient(async (client) => {
      for (;;) {
        const { rows } = await client.query(
          "select count(*)::int as n from graphile_worker._private_jobs",
        );
        const now = performance.now();
        if (rows[0].n === 0) {
          elapsed = (now - start) / 1000;
          return;
        }
        if (workerError) throw new Error(`a job failed: ${workerError}`);
        if (runnerDone) {
          throw new Error(
            `worker stopped early with ${rows[0].n} jobs left${runnerFailure ? `: ${runnerFailure}` : ""}`,
          );
        }
        if (now > deadline) {
          throw new Error(`timed out after ${timeoutSeconds}s with ${rows[0].n} jobs left`);
        }
        await sleep(POLL_MS);
      }
    });

    if (mode === "batched" && !localQueueSeen) {
      throw new Error("batched mode requested but graphile-worker did not start a local queue");
    }

    const r = runner;
    runner = null;
    await r.stop();
    await r.promise;

    // 4. result
    const result = {
      tool: "graphile-worker",
      version: VERSION,
      mode,
      jobs,
      concurrency,
      seconds: Number(elapsed.toFixed(4)),
      jobsPerSecond: Number((jobs / elapsed).toFixed(1)),
    };
    if (maxPoolSize !== undefined) result.maxPoolSize = maxPoolSize;
    process.stdout.write(JSON.stringify(result) + "\n");
  } finally {
    if (runner) {
      try {
        await runner.stop();
      } catch {
        /* already failing */
      }
    }
    await utils.release();
  }
}

async function countJobs(utils) {
  const { rows } = await utils.withPgClient((client) =>
    client.query("select count(*)::int as n from graphile_worker._private_jobs"),
  );
  return rows[0].n;
}

main().then(
  () => process.exit(0),
  (e) => die(e && e.stack ? e.stack : String(e)),
);
