import { randomUUID } from 'node:crypto';
import {
  type Database,
  debitBalance,
  type GiftRow,
  type GiftType,
  getGiftOfCreator,
  insertGift,
  type LedgerRow,
  systemKeys,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { InvalidRequestError } from '../errors.ts';
import { ledgerKeys, markReplayed, requestHash, withIdempotency } from '../idempotency.ts';
import { spendingTransaction } from '../refusals.ts';
import { spendPersonal } from '../spending.ts';
import { generateGiftCode, giftShortUrl } from './codes.ts';
import { type CreatedGift, toCreatedGift } from './mappers.ts';
import { hashRiddleAnswer, normaliseRiddleAnswer, riddleAnswerFingerprint } from './riddle.ts';

export interface CreateGiftInput {
  type: GiftType;
  totalCredits: number;
  totalPortions: number;
  targetEmail?: string | undefined;
  riddleQuestion?: string | undefined;
  riddleAnswer?: string | undefined;
  message?: string | undefined;
  expirationDays: number;
  idempotencyKey?: string | undefined;
}

export interface GiftCreator {
  id: string;
  email: string | null;
  name: string | null;
}

const CODE_ATTEMPTS = 8;
const LOOKS_LIKE_EMAIL = /\S+@\S+/;

/** The name shown on the public page: the token's display name, never anything that looks like an email. */
export function publicCreatorName(creator: GiftCreator): string | null {
  const name = creator.name?.trim();
  if (!name || LOOKS_LIKE_EMAIL.test(name)) return null;
  // Characters, not UTF-16 units: a cut through an emoji would leave half of it (stored as U+FFFD).
  return Array.from(name).slice(0, 100).join('');
}

/**
 * Makes a gift: the escrow (creditsPerPortion × totalPortions; the remainder of an uneven split stays with
 * the creator) is debited (ledger type `gift`) and the code inserted in one transaction. Idempotent by
 * (creator, key): a replay answers the gift the first call made.
 */
export async function createGift(
  db: Kysely<Database>,
  baseUrl: string,
  creator: GiftCreator,
  input: CreateGiftInput,
): Promise<CreatedGift> {
  const creditsPerPortion = Math.floor(input.totalCredits / input.totalPortions);
  if (creditsPerPortion < 1) {
    throw new InvalidRequestError(
      `totalCredits: ${input.totalCredits} credits cannot fill ${input.totalPortions} portions of at least 1`,
      'VALIDATION',
      { field: 'totalCredits' },
    );
  }
  const escrow = creditsPerPortion * input.totalPortions;
  const riddleAnswer = input.type === 'riddle' ? (input.riddleAnswer ?? '') : undefined;
  if (riddleAnswer !== undefined && normaliseRiddleAnswer(riddleAnswer) === '') {
    throw new InvalidRequestError('riddleAnswer: must not be blank', 'VALIDATION', { field: 'riddleAnswer' });
  }
  const answerHash = riddleAnswer === undefined ? null : await hashRiddleAnswer(riddleAnswer);
  const key = input.idempotencyKey;
  const hash = key
    ? requestHash('gifts.create', {
        ...input,
        idempotencyKey: undefined,
        riddleAnswer:
          riddleAnswer === undefined
            ? undefined
            : await riddleAnswerFingerprint(riddleAnswer, `${creator.id}\n${key}`),
      })
    : '';

  const outcome = await withIdempotency<{ created: GiftRow } | { replayOf: string }, LedgerRow>(
    ledgerKeys(db, creator.id),
    { key, hash },
    (claim) =>
      spendingTransaction(db, async (trx) => {
        const giftId = randomUUID();
        const funding = await spendPersonal(trx, { userId: creator.id, amount: escrow, claim }, (executor) =>
          debitBalance(
            executor,
            {
              userId: creator.id,
              type: 'gift',
              amount: escrow,
              description: `Gift created (${input.type})`,
              metadata: { giftId },
              idempotencyKey: key ?? systemKeys.giftEscrow(giftId),
              requestHash: key ? hash : null,
            },
            'spent',
            claim,
          ),
        );
        for (let attempt = 0; attempt < CODE_ATTEMPTS; attempt++) {
          const code = generateGiftCode();
          // A taken code is skipped without aborting the transaction; the next attempt draws a new one.
          const created = await insertGift(trx, {
            id: giftId,
            code,
            shortUrl: giftShortUrl(baseUrl, code),
            creatorId: creator.id,
            creatorName: publicCreatorName(creator),
            totalCredits: escrow,
            creditsPerPortion,
            totalPortions: input.totalPortions,
            type: input.type,
            targetEmail: input.type === 'personalized' ? (input.targetEmail ?? null) : null,
            riddleQuestion: input.type === 'riddle' ? (input.riddleQuestion ?? null) : null,
            riddleAnswerHash: answerHash,
            message: input.message ?? null,
            expirationDays: input.expirationDays,
            fundingTransactionId: funding.id,
          });
          if (created) return { created };
        }
        throw new Error('no free gift code after several attempts');
      }),
    (first) => ({ replayOf: String(first.metadata?.giftId) }),
  );
  if ('created' in outcome) return toCreatedGift(outcome.created);
  const first = await getGiftOfCreator(db, outcome.replayOf, creator.id);
  return markReplayed(toCreatedGift(first));
}
