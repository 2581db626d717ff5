// sandflow's guest library for JavaScript steps (componentize-js).
//
// A step is a function from one JSON input to one JSON output. Write it
// with `step`, and export what `step` returns as the component's `run` and
// `describe`:
//
//   import { step, StepError, log } from '../../sandflow.js';
//
//   export const { run, describe } = step(
//     { name: 'shout', version: '0.1.0', description: 'Shouts.',
//       inputSchema: { type: 'object', required: ['text'] } },
//     (input) => {
//       if (!input.text) throw StepError.permanent('`text` is empty');
//       log.info(`shouting ${input.text.length} characters`);
//       return { text: input.text.toUpperCase() + '!' };
//     });
//
// What the host gives a step, and nothing more: `log` lines, run-scoped
// `state`, content-addressed `blobs`, its static `config`, clocks, random,
// and `console.log` (captured into the step's log). `fetch` reaches only the
// hosts the workflow grants (`grants.http.allow`) and is absent otherwise.
//
// `warmUp: [input, ...]` in the metadata runs the handler on those inputs
// once, when the component is built (see `step`): every call then starts
// from a snapshot in which the handler's code is compiled and its regular
// expressions are too, instead of compiling them again in each fresh
// instance (the `template` example: 15% less fuel and time per call).

import { log as hostLog } from 'sandflow:step/log@0.1.0';
import { get as hostStateGet, set as hostStateSet } from 'sandflow:step/state@0.1.0';
import { put as hostBlobPut, get as hostBlobGet } from 'sandflow:step/blobs@0.1.0';
import { get as hostConfigGet } from 'sandflow:step/config@0.1.0';

/// A step failure: a message for a person and whether a retry may help.
export class StepError extends Error {
  /// A failure a retry may fix (a busy or flaky resource).
  constructor(message, { retryable = true } = {}) {
    super(message);
    this.name = 'StepError';
    this.retryable = retryable;
  }

  /// A failure no retry can fix, such as bad input: the host does not retry.
  static permanent(message) {
    return new StepError(message, { retryable: false });
  }
}

// True while `step` runs the handler on its `warmUp` inputs, at build time:
// the host is not there, so what the handler asks of it is answered here
// (no log, no config, an empty state, no blobs) and kept nowhere.
let warming = false;
const warmState = new Map();

const level = (name) => (...parts) => {
  if (!warming) hostLog(name, parts.map(String).join(' '));
};

/// Lines in the step's log.
export const log = {
  trace: level('trace'),
  debug: level('debug'),
  info: level('info'),
  warn: level('warn'),
  error: level('error'),
};

/// JSON values shared by the steps of one run.
export const state = {
  /// The value stored under `key`, or `undefined`.
  get(key) {
    const text = warming ? warmState.get(key) : hostStateGet(key);
    return text === undefined ? undefined : JSON.parse(text);
  },
  /// Stores `value` (anything JSON.stringify accepts) under `key`.
  set(key, value) {
    try {
      const text = JSON.stringify(value ?? null);
      if (warming) warmState.set(key, text);
      else hostStateSet(key, text);
    } catch (e) {
      throw new StepError(`state.set(${JSON.stringify(key)}): ${errorText(e)}`, { retryable: false });
    }
  },
};

/// Content-addressed bytes, passed between steps by id.
export const blobs = {
  /// Stores bytes (a Uint8Array, or a string as UTF-8); returns the id.
  put(data) {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    if (warming) throw new StepError('blobs.put: no blobs while warming up', { retryable: false });
    try {
      return hostBlobPut(bytes);
    } catch (e) {
      throw new StepError(`blobs.put: ${errorText(e)}`, { retryable: false });
    }
  },
  /// The bytes stored under `id` as a Uint8Array, or `undefined`.
  get(id) {
    return warming ? undefined : hostBlobGet(id);
  },
};

/// The component's static `config` from the workflow (or `call --config`);
/// `null` when none was given.
export function config() {
  return warming ? null : JSON.parse(hostConfigGet());
}

/// Makes the component's exports from its metadata and its handler.
///
/// `meta`: `{ name, version, description?, inputSchema?, outputSchema? }`;
/// the schemas are JSON Schema objects, which the host checks every input
/// and output against. `handler(input)` gets the parsed input and returns
/// the output (any JSON value), or a promise of it (an `async` handler that
/// awaits `fetch`, for example). Throw a `StepError` to fail the step; any
/// other exception fails it too, not retryable, with its message.
export function step(meta, handler) {
  const schema = (s) => (s === undefined || s === null ? undefined : JSON.stringify(s));
  if (meta.warmUp !== undefined) warmUp(meta.warmUp, handler);
  return {
    run(input) {
      let output;
      try {
        output = handler(JSON.parse(input));
      } catch (e) {
        throw stepError(e);
      }
      // An async handler (one that awaits `fetch`, say): componentize-js
      // runs the event loop until the promise settles.
      if (output !== null && typeof output === 'object' && typeof output.then === 'function') {
        return output.then(toJson, (e) => {
          throw stepError(e);
        });
      }
      return toJson(output);
    },
    describe() {
      return {
        name: meta.name,
        version: meta.version,
        description: meta.description ?? '',
        inputSchema: schema(meta.inputSchema),
        outputSchema: schema(meta.outputSchema),
      };
    },
  };
}

// Runs `handler` on each of `inputs` and forgets the results. `step` is
// called as the module is evaluated, which componentize-js does once, at
// build time, before it snapshots the engine: the functions the handler
// ran are compiled in that snapshot, and so are the regular expressions it
// used, so no call compiles them again. What the handler leaves in module
// variables is in the snapshot too: every call starts with it. A handler
// that throws on a sample only loses the gain; an `async` handler (one
// that awaits `fetch`, say) cannot run here, where no host answers.
function warmUp(inputs, handler) {
  if (!Array.isArray(inputs)) {
    throw new TypeError('step: `warmUp` is a list of sample inputs, e.g. warmUp: [{ name: "Ada" }]');
  }
  if (handler.constructor.name === 'AsyncFunction') {
    throw new TypeError('step: `warmUp` runs the handler at build time, where an async handler cannot finish; drop `warmUp`');
  }
  warming = true;
  try {
    for (const input of inputs) {
      let output;
      try {
        output = handler(JSON.parse(JSON.stringify(input)));
      } catch {
        continue;
      }
      if (output !== null && typeof output === 'object' && typeof output.then === 'function') {
        throw new TypeError('step: `warmUp` runs the handler at build time, and it returned a promise, which cannot settle there; drop `warmUp`');
      }
      toJson(output);
    }
  } finally {
    warming = false;
    warmState.clear();
  }
}

function toJson(output) {
  return JSON.stringify(output === undefined ? null : output);
}

/// Any thrown value as the `step-error` record jco returns (its `payload`).
function stepError(e) {
  const err = new Error(errorText(e));
  err.payload = {
    message: errorText(e),
    retryable: e instanceof StepError ? e.retryable : false,
  };
  return err;
}

function errorText(e) {
  if (e instanceof Error) return e.message;
  if (typeof e === 'string') return e;
  if (e && typeof e.message === 'string') return e.message;
  return String(e);
}
