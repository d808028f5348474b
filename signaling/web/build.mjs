// Builds the receive page into dist/ (gitignored; served by `scanbeam serve`).
// Run with `npm run build` (the Makefile's deps-browser target does it).
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';

const out = new URL('./dist/', import.meta.url).pathname;
rmSync(out, { recursive: true, force: true });
mkdirSync(`${out}app`, { recursive: true });
const common = { bundle: true, minify: true, sourcemap: false, target: ['chrome100', 'firefox102', 'safari15'], legalComments: 'linked', logLevel: 'warning' };
await build({ ...common, entryPoints: ['src/app.js'], format: 'esm', outfile: `${out}app/app.js` });
await build({ ...common, entryPoints: ['src/sw.js'], format: 'iife', outfile: `${out}sw.js` });
copyFileSync('src/index.html', `${out}index.html`);
copyFileSync('src/app.css', `${out}app/app.css`);
console.log(`built ${out}`);
