// Copies the built library (dist/*.js) to web/lib/, where `tidewire serve` embeds it for
// the demo pages (the binary must build with the Rust toolchain alone, so the compiled
// JavaScript is committed). `node sync-web.mjs --check` fails when web/lib/ is stale.
import { readdir, readFile, writeFile, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
const out = join(here, '..', '..', 'web', 'lib');
const check = process.argv.includes('--check');
await mkdir(out, { recursive: true });
let stale = [];
for (const name of (await readdir(dist)).filter((n) => n.endsWith('.js')).sort()) {
  const body = (await readFile(join(dist, name), 'utf8')).replace(/\n\/\/# sourceMappingURL=.*\n?$/, '\n');
  const target = join(out, name);
  const current = await readFile(target, 'utf8').catch(() => null);
  if (current === body) continue;
  if (check) stale.push(name);
  else await writeFile(target, body);
}
if (stale.length) {
  console.error(`web/lib is stale (${stale.join(', ')}): run npm run build && node sync-web.mjs in clients/js and commit web/lib`);
  process.exit(1);
}
