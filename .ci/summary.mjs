// Prints the closing line "N passed, N failed" from vitest's JSON report and exits with the right code.
import { readFileSync } from 'node:fs';

const [file, statusText, ...extraChecks] = process.argv.slice(2);
const status = Number(statusText);
let passed = 0;
let failed = 0;
try {
  const report = JSON.parse(readFileSync(file, 'utf8'));
  passed = report.numPassedTests ?? 0;
  failed = report.numFailedTests ?? 0;
  if (report.success === false && failed === 0) failed = 1;
} catch {
  failed = 1;
}
if (status !== 0 && failed === 0) failed = 1;
// Extra checks run after the suite, each "name=exitCode", count as one test each.
for (const check of extraChecks) {
  const [name, code] = check.split('=');
  if (code === '0') passed++;
  else {
    failed++;
    console.log(`${name} failed (exit ${code})`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
