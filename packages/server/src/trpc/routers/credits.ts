import { z } from 'zod';
import { activePackages, balanceOf, transactionHistory } from '../../domain/credits/personal.ts';
import { amount, appId, description, idempotencyKey, metadata, pageInput } from '../../schemas.ts';
import { authedProcedure, publicProcedure, router } from '../init.ts';

export const useInput = z.strictObject({
  amount,
  appId,
  description,
  idempotencyKey: idempotencyKey.optional(),
  metadata: metadata.optional(),
});

export const creditsRouter = router({
  balance: authedProcedure.query(({ ctx }) => balanceOf(ctx.deps.db, ctx.user.id)),

  use: authedProcedure
    .input(useInput)
    .mutation(({ ctx, input }) => ctx.deps.spend({ userId: ctx.user.id, ...input })),

  transactions: authedProcedure
    .input(pageInput.optional())
    .query(({ ctx, input }) => transactionHistory(ctx.deps.db, ctx.user.id, input ?? { limit: 20 })),

  packages: publicProcedure.query(({ ctx }) => activePackages(ctx.deps.db)),
});
