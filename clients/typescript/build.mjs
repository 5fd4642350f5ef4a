// `prepare`: compile src/ to dist/ with the pinned TypeScript. `npm install <this folder>` runs
// prepare without installing this package's devDependencies, so they are installed here first
// from the committed package-lock.json when missing.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const run = (cmd, args) => execFileSync(cmd, args, { cwd: here, stdio: 'inherit' });

if (!existsSync(join(here, 'node_modules', 'typescript', 'bin', 'tsc'))) {
    run(npm, ['ci', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error']);
}
run(process.execPath, [join(here, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(here, 'tsconfig.json')]);
