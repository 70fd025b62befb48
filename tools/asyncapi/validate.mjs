// Validates AsyncAPI documents with the official parser, @asyncapi/parser.
// Usage: node validate.mjs [--strict] FILE...
// Prints every diagnostic as `FILE: severity path: message`. Exits 1 if any
// document has an error (with --strict, also a warning), 2 on bad usage.
import { readFile } from 'node:fs/promises';
import { Parser } from '@asyncapi/parser';

const SEVERITY = ['error', 'warning', 'info', 'hint'];
const args = process.argv.slice(2);
const strict = args[0] === '--strict';
const files = strict ? args.slice(1) : args;
if (files.length === 0) {
  console.error('usage: node validate.mjs [--strict] FILE...');
  process.exit(2);
}

const parser = new Parser();
let failed = false;
for (const file of files) {
  const text = await readFile(file, 'utf8');
  const { document, diagnostics } = await parser.parse(text, { source: file });
  let errors = 0;
  let warnings = 0;
  for (const d of diagnostics) {
    const severity = SEVERITY[d.severity] ?? String(d.severity);
    if (d.severity === 0) errors += 1;
    if (d.severity === 1) warnings += 1;
    console.log(`${file}: ${severity} ${d.path.join('.') || '(root)'}: ${d.message} [${d.code}]`);
  }
  const bad = errors > 0 || document === undefined || (strict && warnings > 0);
  if (bad) failed = true;
  console.log(`${file}: ${bad ? 'invalid' : 'valid'} AsyncAPI ${document?.version() ?? '?'} (${errors} errors, ${warnings} warnings)`);
}
process.exit(failed ? 1 : 0);
