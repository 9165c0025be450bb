import { existsSync } from 'node:fs';
import { type Browser, chromium } from 'playwright-core';

/** Debian's chromium: .ci/run installs it, so under CI a missing browser fails; elsewhere the file is skipped. */
const CHROMIUM = '/usr/bin/chromium';

/** Whether a browser test runs here; when not, says so in one line naming the file and how to enable it. */
export function chromiumAvailable(file: string): boolean {
  const here = existsSync(CHROMIUM) || process.env.CI === 'true';
  if (!here) console.warn(`${file} skipped: no Chromium at ${CHROMIUM} (apt-get install chromium)`);
  return here;
}

/** Headless Chromium for tests (every browser test launches it here): no sandbox (containers), nothing that talks to the network by itself. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
