// graphile-worker as a peer for the Lettuce benchmark (xtests/src/bin/bench.rs drives it).
// Runs under the Node 22 from the `node` npm package (graphile-worker 0.18 needs Node >= 22).
//
//   node peer.mjs migrate <url>        installs graphile-worker's schema
//   node peer.mjs enqueue <url> <n>    adds n `noop` jobs with addJobs in batches of 1,000
//   node peer.mjs run <url>            runs the batched ("fast") mode until SIGTERM
//
// The batched mode is not graphile-worker's default: a local queue of 500 claims jobs in
// batches and completions are written in batches (completeJobBatchDelay: 0).
import { Logger, makeWorkerUtils, run, runMigrations } from "graphile-worker";

const [mode, connectionString, n] = process.argv.slice(2);
// Warnings and errors only: the default logger prints a line per job.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`${level}: ${message}`);
});

if (mode === "migrate") {
  await runMigrations({ connectionString, logger });
} else if (mode === "enqueue") {
  const utils = await makeWorkerUtils({ connectionString, logger });
  const total = Number(n);
  const started = performance.now();
  for (let done = 0; done < total; done += 1000) {
    const specs = [];
    for (let i = done; i < Math.min(total, done + 1000); i++) specs.push({ identifier: "noop", payload: {} });
    await utils.addJobs(specs);
  }
  const ms = performance.now() - started;
  console.log(`enqueued ${total} ms ${ms.toFixed(1)}`);
  await utils.release();
} else if (mode === "run") {
  const runner = await run({
    connectionString,
    logger,
    concurrency: 50,
    maxPoolSize: 52,
    noHandleSignals: true,
    pollInterval: 2000,
    taskList: { noop: async () => {} },
    preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0 } },
  });
  console.log("ready");
  const stop = async () => {
    await runner.stop();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  await runner.promise;
} else {
  console.error("usage: node peer.mjs migrate|enqueue|run <url> [n]");
  process.exit(2);
}
