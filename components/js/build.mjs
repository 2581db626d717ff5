// Builds a step's component as `componentize-js` does, taking the same
// options (a subset: --wit, --world-name, --disable, --out, the source),
// with one difference: the slowest part that does not depend on the step's
// code is kept between builds. componentize-js first splices the WIT
// world's bindings into its JavaScript engine (a 10 MB WebAssembly module;
// seconds of work), then snapshots the engine running the step's source.
// The splice depends only on the engine, the features, the WIT files and
// the world, so it is cached in node_modules/.cache/sandflow-splice/ under
// a SHA-256 of all of them and of componentize-js's version: after a change
// to the handler only the snapshot is made again. The component is what
// componentize-js makes from the same splice.
//
//   node build.mjs --wit wit -n described-step -d http -d fetch-event -o step.wasm step.js
//
// SANDFLOW_BUILD_TIMES=1 prints how long the splice and the whole took.
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    wit: { type: 'string', short: 'w' },
    'world-name': { type: 'string', short: 'n' },
    disable: { type: 'string', short: 'd', multiple: true, default: [] },
    out: { type: 'string', short: 'o' },
  },
});
if (!opts.wit || !opts.out || positionals.length !== 1) {
  console.error('usage: node build.mjs --wit WIT_DIR [-n WORLD] [-d FEATURE]... -o OUT.wasm SOURCE.js');
  process.exit(2);
}
const times = process.env.SANDFLOW_BUILD_TIMES ? (what, t0) => console.error(`${what}: ${Date.now() - t0} ms`) : () => {};
const began = Date.now();
const pkg = resolve('node_modules/@bytecodealliance/componentize-js');
const { componentize, version } = await import(pathToFileURL(join(pkg, 'src/componentize.js')));
// The splicer module componentize.js imports: one instance per file, so
// wrapping its function here wraps the one componentize calls.
const { splicer } = await import(pathToFileURL(join(pkg, 'lib/spidermonkey-embedding-splicer.js')));

/** Every file under `dir`, sorted, as [path relative to dir, bytes]. */
async function filesUnder(dir, prefix = '') {
  const found = [];
  const entries = (await readdir(join(dir, prefix), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const entry of entries) {
    const path = join(prefix, entry.name);
    if (entry.isDirectory()) found.push(...(await filesUnder(dir, path)));
    else found.push([path, await readFile(join(dir, path))]);
  }
  return found;
}

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');
const witFiles = (await filesUnder(resolve(opts.wit))).map(([path, bytes]) => [path, sha256(bytes)]);
const cacheRoot = resolve('node_modules/.cache/sandflow-splice');
let made = null;
const splice = splicer.spliceBindings;
splicer.spliceBindings = (engine, features, witWorld, witPath, worldName, debug) => {
  const t0 = Date.now();
  const key = sha256(JSON.stringify({ version, engine: sha256(engine), features, witWorld: witWorld ?? null, witFiles, worldName: worldName ?? null, debug: !!debug }));
  const dir = join(cacheRoot, key);
  try {
    const meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8'));
    const wasm = new Uint8Array(readFileSync(join(dir, 'engine.wasm')));
    if (sha256(wasm) === meta.sha256) {
      times('splice (from the cache)', t0);
      return { wasm, jsBindings: meta.jsBindings, exports: meta.exports, imports: meta.imports };
    }
  } catch {
    // Not cached yet (or unreadable): splice.
  }
  // An entry that did not check out is replaced, not kept beside a splice
  // made at every build.
  rmSync(dir, { recursive: true, force: true });
  const spliced = splice(engine, features, witWorld, witPath, worldName, debug);
  times('splice', t0);
  made = { dir, spliced };
  return spliced;
};

const { component } = await componentize({
  sourcePath: resolve(positionals[0]),
  witPath: resolve(opts.wit),
  worldName: opts['world-name'],
  disableFeatures: opts.disable,
});
await writeFile(opts.out, component);
if (made) {
  // Written aside, then renamed into place: an entry is whole or absent.
  const { dir, spliced } = made;
  const aside = `${dir}.${process.pid}`;
  await mkdir(aside, { recursive: true });
  await writeFile(join(aside, 'engine.wasm'), spliced.wasm);
  const meta = { sha256: sha256(spliced.wasm), jsBindings: spliced.jsBindings, exports: spliced.exports, imports: spliced.imports };
  await writeFile(join(aside, 'meta.json'), JSON.stringify(meta));
  await rename(aside, dir).catch(() => rm(aside, { recursive: true, force: true }));
}
times('build', began);
