// binding.d.ts is the contract between lib/ and native/: every function it declares must
// exist on the loaded addon, and the addon must export nothing it does not declare.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../lib/binding';

describe('binding.d.ts', () => {
  it('declares exactly the functions the addon exports', () => {
    const dts = fs.readFileSync(path.join(__dirname, '..', '..', 'binding.d.ts'), 'utf8');
    const body = dts.slice(dts.indexOf('export interface Binding {'));
    const declared = new Set([...body.matchAll(/^ {2}(\w+)\(/gm)].map((m) => m[1]));
    const exported = new Set(Object.getOwnPropertyNames(native).filter((k) => typeof (native as unknown as Record<string, unknown>)[k] === 'function'));
    assert.deepEqual([...exported].filter((k) => !declared.has(k)).sort(), [], 'exported but not declared');
    assert.deepEqual([...declared].filter((k) => !exported.has(k)).sort(), [], 'declared but not exported');
  });
});
