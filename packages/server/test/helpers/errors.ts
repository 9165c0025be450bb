import { TRPCClientError } from '@trpc/client';
import type { AppRouter } from '../../src/trpc/routers/_app.ts';

/** Awaits a call that must fail and returns its tRPC error (typed by our error formatter) for inspection. */
export async function failure(promise: Promise<unknown>): Promise<TRPCClientError<AppRouter>> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof TRPCClientError) return error as TRPCClientError<AppRouter>;
    throw error;
  }
  throw new Error('expected the call to fail');
}
