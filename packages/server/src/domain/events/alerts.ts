import {
  type AlertSetting,
  alertSettingOf,
  type Database,
  findGuildPool,
  setAlertSetting,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { poolNotFound } from '../guild/limits.ts';
import { ANY_MEMBER, MANAGERS, type MembershipClient, requireRole } from '../guild/membership.ts';

// Low-balance thresholds (issue 16): per user balance (credits.setAlerts, internal.credits.setAlerts) and per
// guild pool (guild.setAlerts, owners and admins). The crossings themselves are found by the ledger triggers
// (db functions/balance_alerts.sql), which read these settings.

/** A number (0 = only `depleted`), null (no balance events for this account) or 'default' (follow LOW_BALANCE_THRESHOLD). */
export type ThresholdSetting = number | null | 'default';

export type { AlertSetting };

export const userAlerts = (db: Kysely<Database>, userId: string) => alertSettingOf(db, 'user', userId);

export const setUserAlerts = (db: Kysely<Database>, userId: string, threshold: ThresholdSetting) =>
  setAlertSetting(db, 'user', userId, threshold);

interface GuildDeps {
  db: Kysely<Database>;
  membership: MembershipClient;
}

/** Any member may read the pool's threshold. */
export async function guildAlerts(deps: GuildDeps, actorId: string, guildId: string): Promise<AlertSetting> {
  await requireRole(deps.membership, guildId, actorId, ANY_MEMBER);
  if (!(await findGuildPool(deps.db, guildId))) throw poolNotFound();
  return alertSettingOf(deps.db, 'guild', guildId);
}

/** Owners and admins set it. */
export async function setGuildAlerts(
  deps: GuildDeps,
  actorId: string,
  input: { guildId: string; lowBalanceThreshold: ThresholdSetting },
): Promise<AlertSetting> {
  await requireRole(deps.membership, input.guildId, actorId, MANAGERS);
  if (!(await findGuildPool(deps.db, input.guildId))) throw poolNotFound();
  return setAlertSetting(deps.db, 'guild', input.guildId, input.lowBalanceThreshold);
}
