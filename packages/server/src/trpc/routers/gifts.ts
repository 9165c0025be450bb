import { z } from 'zod';
import { createGift } from '../../domain/gifts/create.ts';
import { cancelGift } from '../../domain/gifts/escrow.ts';
import { redeemGift, redeemPendingGifts } from '../../domain/gifts/redeem.ts';
import { giftInfo, myCreatedGifts, myReceivedGifts } from '../../domain/gifts/views.ts';
import { clientNetworkOf } from '../../http/client-address.ts';
import { appId, idempotencyKey, pageInput, text, userId, uuid } from '../../schemas.ts';
import { authedProcedure, internalProcedure, publicProcedure, router } from '../init.ts';

const GIFT_TYPES = ['simple', 'personalized', 'split', 'first_come', 'riddle'] as const;
const email = z.email().max(320);
/** As typed by a person: grouping, case and spaces are normalised later; length bounds the work. */
const giftCode = z.string().min(1).max(64);

export const createGiftInput = z
  .strictObject({
    type: z.enum(GIFT_TYPES),
    totalCredits: z.int().min(1).max(10_000),
    totalPortions: z.int().min(1).max(100).default(1),
    targetEmail: email.optional(),
    riddleQuestion: text(200).min(1).optional(),
    riddleAnswer: text(100).min(1).optional(),
    message: text(500).optional(),
    expirationDays: z.int().min(1).max(365).default(90),
    idempotencyKey: idempotencyKey.optional(),
  })
  .superRefine((input, ctx) => {
    const problem = (path: string, message: string) =>
      ctx.addIssue({ code: 'custom', path: [path], message });
    const personalized = input.type === 'personalized';
    const riddle = input.type === 'riddle';
    if (personalized && !input.targetEmail) problem('targetEmail', 'required for a personalized gift');
    if (!personalized && input.targetEmail) problem('targetEmail', 'only a personalized gift has a target');
    if (riddle && !input.riddleQuestion) problem('riddleQuestion', 'required for a riddle gift');
    if (riddle && !input.riddleAnswer) problem('riddleAnswer', 'required for a riddle gift');
    if (!riddle && input.riddleQuestion) problem('riddleQuestion', 'only a riddle gift has a question');
    if (!riddle && input.riddleAnswer) problem('riddleAnswer', 'only a riddle gift has an answer');
    if ((input.type === 'split' || input.type === 'first_come') && input.totalPortions < 2) {
      problem('totalPortions', `a ${input.type} gift needs at least 2 portions`);
    }
    if ((input.type === 'simple' || personalized) && input.totalPortions !== 1) {
      problem('totalPortions', `a ${input.type} gift has exactly 1 portion`);
    }
  });

export const giftsRouter = router({
  create: authedProcedure
    .input(createGiftInput)
    .mutation(({ ctx, input }) => createGift(ctx.deps.db, ctx.deps.config.baseUrl, ctx.user, input)),

  redeem: authedProcedure
    .input(
      z.strictObject({
        code: giftCode,
        riddleAnswer: text(100).optional(),
        sourceAppId: appId.optional(),
      }),
    )
    .mutation(({ ctx, input }) => redeemGift(ctx.deps.db, ctx.user, input)),

  info: publicProcedure.input(z.strictObject({ code: giftCode })).query(({ ctx, input }) =>
    giftInfo(ctx.deps.db, {
      code: input.code,
      client: clientNetworkOf(ctx.clientIp),
      limitPerMinute: ctx.deps.config.giftInfoRateLimitPerMinute,
    }),
  ),

  cancel: authedProcedure
    .input(z.strictObject({ id: uuid }))
    .mutation(({ ctx, input }) => cancelGift(ctx.deps.db, { userId: ctx.user.id, giftId: input.id })),

  myCreated: authedProcedure
    .input(pageInput.optional())
    .query(({ ctx, input }) => myCreatedGifts(ctx.deps.db, ctx.user.id, input ?? { limit: 20 })),

  myReceived: authedProcedure
    .input(pageInput.optional())
    .query(({ ctx, input }) => myReceivedGifts(ctx.deps.db, ctx.user.id, input ?? { limit: 20 })),
});

export const internalGiftsRouter = router({
  redeemPending: internalProcedure
    .input(z.strictObject({ userId, email }))
    .mutation(({ ctx, input }) => redeemPendingGifts(ctx.deps.db, { id: input.userId, email: input.email })),
});
