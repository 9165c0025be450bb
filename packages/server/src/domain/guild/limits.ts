import {
  type Database,
  findGuildPool,
  type MemberSpending,
  memberSpending,
  upsertMemberLimits,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { NotFoundError, PreconditionFailedError } from '../errors.ts';
import { MANAGERS, type MembershipClient, requireRole } from './membership.ts';

interface GuildDeps {
  db: Kysely<Database>;
  membership: MembershipClient;
}

export const poolNotFound = () => new NotFoundError('Guild pool', 'GUILD_POOL_NOT_FOUND');

/**
 * The one check of a member's caps before pool credits leave for them. Call it inside the spending
 * transaction after lockGuildPool: the lock serialises every spend of the pool, so what memberSpending
 * reads cannot change before the debit commits. Windows are the UTC day and the UTC calendar month.
 */
export async function assertWithinMemberLimits(
  trx: Kysely<Database>,
  guildId: string,
  userId: string,
  amount: number,
): Promise<void> {
  const spending = await memberSpending(trx, guildId, userId);
  if (spending.dailyLimit !== null && spending.spentToday + amount > spending.dailyLimit) {
    throw new PreconditionFailedError(
      `Your daily limit in this guild is ${spending.dailyLimit} credits (${spending.spentToday} spent today)`,
      'DAILY_LIMIT_EXCEEDED',
      { limit: spending.dailyLimit, spent: spending.spentToday, requested: amount },
    );
  }
  if (spending.monthlyLimit !== null && spending.spentThisMonth + amount > spending.monthlyLimit) {
    throw new PreconditionFailedError(
      `Your monthly limit in this guild is ${spending.monthlyLimit} credits (${spending.spentThisMonth} spent this month)`,
      'MONTHLY_LIMIT_EXCEEDED',
      { limit: spending.monthlyLimit, spent: spending.spentThisMonth, requested: amount },
    );
  }
}

/** A member's caps and spending: visible to that member and to owners and admins. */
export async function memberLimits(
  deps: GuildDeps,
  actorId: string,
  input: { guildId: string; userId: string },
): Promise<MemberSpending> {
  await requireRole(deps.membership, input.guildId, actorId, actorId === input.userId ? undefined : MANAGERS);
  if (!(await findGuildPool(deps.db, input.guildId))) throw poolNotFound();
  return memberSpending(deps.db, input.guildId, input.userId);
}

export interface SetMemberLimitsInput {
  guildId: string;
  userId: string;
  dailyLimit: number | null;
  monthlyLimit: number | null;
}

/** Owners and admins cap a member: null = unlimited, 0 = blocked. The target must be a member. */
export async function setMemberLimits(
  deps: GuildDeps,
  actorId: string,
  input: SetMemberLimitsInput,
): Promise<MemberSpending> {
  await requireRole(deps.membership, input.guildId, actorId, MANAGERS);
  if (!(await deps.membership.roleOf(input.guildId, input.userId))) {
    throw new NotFoundError('Guild member', 'MEMBER_NOT_FOUND');
  }
  if (!(await findGuildPool(deps.db, input.guildId))) throw poolNotFound();
  await upsertMemberLimits(deps.db, input.guildId, input.userId, input);
  return memberSpending(deps.db, input.guildId, input.userId);
}
