import {
  type Database,
  findGuildPool,
  type MemberSpending,
  memberSpending,
  upsertMemberLimits,
} from '@mana-credits/db';
import type { Kysely, Transaction } from 'kysely';
import { ForbiddenError, NotFoundError, PreconditionFailedError } from '../errors.ts';
import { type GuildRole, MANAGERS, type MembershipClient, requireRole } from './membership.ts';

interface GuildDeps {
  db: Kysely<Database>;
  membership: MembershipClient;
}

export const poolNotFound = () => new NotFoundError('Guild pool', 'GUILD_POOL_NOT_FOUND');

/**
 * The one check of a member's caps before pool credits leave for them or are held for them (guild.use, pool
 * reserves). Call it inside the spending transaction after lockGuildPool: the lock serialises every spend,
 * hold, commit and release of the pool, so what memberSpending reads cannot change before the debit or the
 * hold commits. Every open pool hold counts as spent in the current window (see credits.member_spending for
 * the rule). Windows are the UTC day and the UTC calendar month of credits.clock().
 */
export async function assertWithinMemberLimits(
  trx: Transaction<Database>,
  guildId: string,
  userId: string,
  amount: number,
): Promise<LimitsAfter> {
  const spending = await memberSpending(trx, guildId, userId);
  const today = spending.spentToday + spending.heldToday;
  const thisMonth = spending.spentThisMonth + spending.heldThisMonth;
  if (spending.dailyLimit !== null && today + amount > spending.dailyLimit) {
    throw memberLimitExceeded('daily', spending.dailyLimit, today, amount);
  }
  if (spending.monthlyLimit !== null && thisMonth + amount > spending.monthlyLimit) {
    throw memberLimitExceeded('monthly', spending.monthlyLimit, thisMonth, amount);
  }
  return {
    daily: spending.dailyLimit === null ? null : { limit: spending.dailyLimit, used: today + amount },
    monthly:
      spending.monthlyLimit === null ? null : { limit: spending.monthlyLimit, used: thisMonth + amount },
  };
}

export type LimitReason = 'DAILY_LIMIT_EXCEEDED' | 'MONTHLY_LIMIT_EXCEEDED';

/** The refusal of a member limit (also rebuilt from a recorded refusal, so a replay says the same). */
export function limitExceeded(
  reason: LimitReason,
  details: { limit: number; spent: number; requested: number },
): PreconditionFailedError {
  const [window, spent] = reason === 'DAILY_LIMIT_EXCEEDED' ? ['daily', 'today'] : ['monthly', 'this month'];
  return new PreconditionFailedError(
    `Your ${window} limit in this guild is ${details.limit} credits (${details.spent} spent or held ${spent})`,
    reason,
    details,
  );
}

/**
 * The refusal of a pool spend or hold that would take a member past a cap: `used` is what they spent and hold
 * in the window before it. The single path (assertWithinMemberLimits) and coalesced pool spends
 * (credits.pool_use_batch, which reports the same numbers) answer with it alike.
 */
export function memberLimitExceeded(
  window: 'daily' | 'monthly',
  limit: number,
  used: number,
  amount: number,
): PreconditionFailedError {
  return limitExceeded(window === 'daily' ? 'DAILY_LIMIT_EXCEEDED' : 'MONTHLY_LIMIT_EXCEEDED', {
    limit,
    spent: used,
    requested: amount,
  });
}

/** What a member's windows will hold once the spend or hold that passed the check is made (null = no cap). */
export interface LimitsAfter {
  daily: { limit: number; used: number } | null;
  monthly: { limit: number; used: number } | null;
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

/**
 * Owners and admins cap a member: null = unlimited, 0 = blocked. The target must be a member. Owners may set
 * anyone's limits (their own too); admins only those of plain members — not their own (an admin could lift
 * their own cap), not another admin's (two admins could lift each other's), not an owner's.
 */
export async function setMemberLimits(
  deps: GuildDeps,
  actorId: string,
  input: SetMemberLimitsInput,
): Promise<MemberSpending> {
  const actorRole = await requireRole(deps.membership, input.guildId, actorId, MANAGERS);
  if (actorRole !== 'owner' && actorId === input.userId) {
    throw new ForbiddenError(
      'Admins cannot change their own limits; ask a guild owner',
      'GUILD_OWNER_REQUIRED',
    );
  }
  const targetRole = await deps.membership.roleOf(input.guildId, input.userId);
  if (!targetRole) throw new NotFoundError('Guild member', 'MEMBER_NOT_FOUND');
  if (actorRole !== 'owner' && targetRole !== 'member') {
    throw new ForbiddenError(
      `Only a guild owner may change the limits of an ${targetRole}`,
      'GUILD_OWNER_REQUIRED',
    );
  }
  return applyMemberLimits(deps, input, targetRole);
}

/**
 * Writes a member's caps once the caller may set them (setMemberLimits decides that for guild owners and
 * admins; the operator console's own guard for operators): the target must be a member of the guild
 * (`knownRole` when already asked) and the pool must exist.
 */
export async function applyMemberLimits(
  deps: GuildDeps,
  input: SetMemberLimitsInput,
  knownRole?: GuildRole,
): Promise<MemberSpending> {
  const targetRole = knownRole ?? (await deps.membership.roleOf(input.guildId, input.userId));
  if (!targetRole) throw new NotFoundError('Guild member', 'MEMBER_NOT_FOUND');
  if (!(await findGuildPool(deps.db, input.guildId))) throw poolNotFound();
  await upsertMemberLimits(deps.db, input.guildId, input.userId, input);
  return memberSpending(deps.db, input.guildId, input.userId);
}
