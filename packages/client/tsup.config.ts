import { defineConfig } from 'tsup';

// JavaScript only: declarations are bundled by rollup.dts.config.mjs (they must inline the server's types).
export default defineConfig({
  entry: ['src/index.ts'],
  format: ['esm', 'cjs'],
  platform: 'neutral',
  target: 'es2022',
  dts: false,
  sourcemap: true,
  clean: true,
});
