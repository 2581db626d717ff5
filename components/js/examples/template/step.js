// `template`: renders a text template against JSON data (a Mustache-like
// language, small on purpose).
//
// Input: `{ template, data, strict? }`. Output: `{ text }`.
//
//   {{ user.name }}                  a value by dotted path ("" if missing,
//                                    an error with `strict: true`)
//   {{ name | upper }}               filters: upper, lower, trim, json,
//                                    length, default("text")
//   {{#if cond}} … {{else}} … {{/if}}  truthy: not null/false/0/""/[]
//   {{#each items}} {{.}} {{@index}} {{/each}}   `.` is the item; its
//                                    fields are in scope, outer names too
//
// A syntax error fails the step (not retryable) with the line and column.
// `config.strict` sets the default for `strict`.

import { step, StepError, log, config } from './sandflow.js';

export const { run, describe } = step(
  {
    name: 'template',
    version: '0.1.0',
    description: 'Renders a Mustache-like text template ({{ path | filter }}, #if, #each) against JSON data.',
    inputSchema: {
      type: 'object',
      required: ['template'],
      properties: {
        template: { type: 'string' },
        data: {},
        strict: { type: 'boolean' },
      },
      additionalProperties: false,
    },
    outputSchema: {
      type: 'object',
      required: ['text'],
      properties: { text: { type: 'string' } },
    },
    // Run once at build time, so every call starts with the parser, the
    // renderer, each filter and the error paths compiled (see sandflow.js).
    warmUp: [
      {
        template: '{{ a.b | upper }} {{ a.b | lower | trim }} {{ xs | json }} {{ xs | length }} {{ no | default("-") }}'
          + '{{#if a}}y{{else}}n{{/if}}{{#each xs}}{{@index}}{{.}}{{/each}}\n',
        data: { a: { b: 'Hi' }, xs: [1, 2] },
      },
      { template: 'x\n {{ missing }}', data: {}, strict: true },
      { template: '{{#each xs}}' },
    ],
  },
  (input) => {
    const strict = input.strict ?? config()?.strict ?? false;
    const nodes = parse(input.template);
    const text = render(nodes, [input.data ?? {}], { strict, index: undefined });
    log.debug(`rendered ${input.template.length} template characters into ${text.length}`);
    return { text };
  },
);

// ---- parsing: text and tags into a tree ----

function parse(src) {
  const root = { kind: 'root', children: [] };
  const stack = [root];
  const tag = /\{\{\s*([#/]?)([^}]*?)\s*\}\}/g;
  let last = 0;
  let m;
  while ((m = tag.exec(src)) !== null) {
    const top = stack[stack.length - 1];
    if (m.index > last) top.children.push({ kind: 'text', text: src.slice(last, m.index) });
    last = tag.lastIndex;
    const [, sigil, body] = m;
    const at = position(src, m.index);
    if (sigil === '#') {
      const [word, ...rest] = body.trim().split(/\s+/);
      if (word !== 'if' && word !== 'each') fail(at, `unknown block {{#${word}}}; use {{#if …}} or {{#each …}}`);
      if (rest.length !== 1) fail(at, `{{#${word}}} takes one path, e.g. {{#${word} items}}`);
      const node = { kind: word, path: rest[0], children: [], otherwise: null, at };
      top.children.push(node);
      stack.push(node);
    } else if (sigil === '/') {
      const word = body.trim();
      const open = stack.length > 1 ? stack[stack.length - 1] : null;
      if (!open) fail(at, `{{/${word}}} closes nothing`);
      if (open.kind !== word && !(open.kind === 'else' && open.parent.kind === word)) {
        const name = open.kind === 'else' ? open.parent.kind : open.kind;
        fail(at, `{{/${word}}} closes {{#${name}}} opened at ${open.at ?? open.parent.at}`);
      }
      stack.pop();
    } else if (body.trim() === 'else') {
      const open = stack[stack.length - 1];
      if (open.kind !== 'if') fail(at, '{{else}} outside {{#if}}');
      const branch = { kind: 'else', children: [], parent: open };
      open.otherwise = branch;
      stack[stack.length - 1] = branch;
    } else {
      const [path, ...filters] = body.split('|').map((s) => s.trim());
      if (!path) fail(at, 'empty tag {{}}');
      top.children.push({ kind: 'value', path, filters, at });
    }
  }
  if (stack.length > 1) {
    const open = stack[stack.length - 1];
    const node = open.kind === 'else' ? open.parent : open;
    fail(node.at, `{{#${node.kind}}} is never closed`);
  }
  if (last < src.length) root.children.push({ kind: 'text', text: src.slice(last) });
  return root.children;
}

function position(src, offset) {
  const before = src.slice(0, offset);
  const line = before.split('\n').length;
  const col = offset - before.lastIndexOf('\n');
  return `${line}:${col}`;
}

function fail(at, message) {
  throw StepError.permanent(`template ${at}: ${message}`);
}

// ---- rendering ----

function render(nodes, scopes, ctx) {
  let out = '';
  for (const node of nodes) {
    switch (node.kind) {
      case 'text':
        out += node.text;
        break;
      case 'value':
        out += filter(lookup(node.path, scopes, ctx, node.at), node.filters, node.at);
        break;
      case 'if':
        if (truthy(lookup(node.path, scopes, { ...ctx, strict: false }, node.at))) {
          out += render(node.children, scopes, ctx);
        } else if (node.otherwise) {
          out += render(node.otherwise.children, scopes, ctx);
        }
        break;
      case 'each': {
        const items = lookup(node.path, scopes, ctx, node.at);
        if (items === undefined || items === null) break;
        if (!Array.isArray(items)) fail(node.at, `{{#each ${node.path}}} needs a list, got ${typeof items}`);
        items.forEach((item, index) => {
          out += render(node.children, [item, ...scopes], { ...ctx, index });
        });
        break;
      }
    }
  }
  return out;
}

function lookup(path, scopes, ctx, at) {
  if (path === '.') return scopes[0];
  if (path === '@index') return ctx.index;
  const [head, ...rest] = path.split('.');
  for (const scope of scopes) {
    if (scope !== null && typeof scope === 'object' && Object.hasOwn(scope, head)) {
      let value = scope[head];
      for (const key of rest) {
        value = value !== null && typeof value === 'object' ? value[key] : undefined;
      }
      if (value === undefined && ctx.strict) fail(at, `\`${path}\` is not in the data`);
      return value;
    }
  }
  if (ctx.strict) fail(at, `\`${path}\` is not in the data`);
  return undefined;
}

function truthy(v) {
  return !(v === undefined || v === null || v === false || v === 0 || v === '' || (Array.isArray(v) && v.length === 0));
}

function filter(value, filters, at) {
  let v = value;
  for (const f of filters) {
    const m = /^(\w+)(?:\((.*)\))?$/.exec(f);
    if (!m) fail(at, `bad filter \`${f}\``);
    const [, name, arg] = m;
    switch (name) {
      case 'upper': v = text(v).toUpperCase(); break;
      case 'lower': v = text(v).toLowerCase(); break;
      case 'trim': v = text(v).trim(); break;
      case 'json': v = JSON.stringify(v ?? null); break;
      case 'length': v = v === undefined || v === null ? 0 : (Array.isArray(v) || typeof v === 'string' ? v.length : Object.keys(v).length); break;
      case 'default':
        if (v === undefined || v === null || v === '') {
          try { v = JSON.parse(arg ?? '""'); } catch { fail(at, `default(…) takes a JSON value, e.g. default("none")`); }
        }
        break;
      default: fail(at, `unknown filter \`${name}\`; use upper, lower, trim, json, length or default(…)`);
    }
  }
  return text(v);
}

function text(v) {
  if (v === undefined || v === null) return '';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}
