// Exercises every part of the JavaScript guest library (components/js/
// sandflow.js) for tests/e2e/polyglot.rs: state, blobs, config, log,
// console, both kinds of StepError, and an async handler awaiting `fetch`
// (built without `-d http`, so it needs an HTTP grant).
import { step, StepError, log, state, blobs, config } from './sandflow.js';

export const { run, describe } = step({ name: 'libcheck-js', version: '0.1.0' }, (input) => {
  switch (input.op) {
    case 'fetch':
      return (async () => {
        const response = await fetch(input.url);
        return { status: response.status, json: await response.json() };
      })();
    case 'put': {
      state.set(input.key, input.value);
      const id = blobs.put(input.text);
      log.warn('stored', input.key);
      console.log('a console line');
      return { id };
    }
    case 'get': {
      const bytes = blobs.get(input.id);
      return {
        value: state.get(input.key),
        missing: state.get('never-set') === undefined ? 'absent' : 'present',
        text: bytes === undefined ? null : new TextDecoder().decode(bytes),
        unknown_blob: blobs.get('0'.repeat(64)) === undefined ? 'absent' : 'present',
        config: config(),
      };
    }
    case 'retryable':
      throw new StepError('busy, try again');
    case 'permanent':
      throw StepError.permanent('this input can never work');
    case 'crash':
      return input.no.such.field;
    default:
      throw StepError.permanent(`unknown op ${input.op}`);
  }
});
