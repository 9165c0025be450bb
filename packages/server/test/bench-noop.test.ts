import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';

// bench.noop is the Node ceiling of `pnpm bench`; it is not part of AppRouter, so it is called over raw HTTP.
async function callNoop(server: TestServer, headers: Record<string, string>) {
  const response = await fetch(`${server.url}/trpc/bench.noop`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ json: { ignored: true } }),
  });
  return { status: response.status, body: await response.text() };
}

describe('bench.noop with BENCH_NOOP=true', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ BENCH_NOOP: 'true' });
  });
  afterAll(async () => {
    await server.close();
  });

  it('answers an internal caller and does nothing else', async () => {
    const { status, body } = await callNoop(server, { 'x-service-key': SERVICE_KEY });
    expect(status).toBe(200);
    expect(JSON.parse(body)).toEqual({ result: { data: { json: { ok: true } } } });
  });

  it('still requires the service key', async () => {
    expect((await callNoop(server, {})).status).toBe(401);
    expect((await callNoop(server, { 'x-service-key': 'wrong-key-wrong-key-wrong-key-wrong' })).status).toBe(
      401,
    );
  });

  it('leaves every normal procedure in place', async () => {
    const balance = await server
      .internalClient()
      .internal.credits.balance.query({ userId: 'bench-noop-user' });
    expect(balance.balance).toBe(0);
  });
});

describe('without BENCH_NOOP', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server.close();
  });

  it('has no bench.noop at all', async () => {
    const { status, body } = await callNoop(server, { 'x-service-key': SERVICE_KEY });
    expect(status).toBe(404);
    expect(body).toContain('No procedure found');
  });
});
