import { type Database, runReconcileChecks } from '@mana-credits/db';
import type { Kysely } from 'kysely';

/** One kind of drift with the ids that show it (capped, with the full count). */
export interface ReconcileCheck {
  name: string;
  description: string;
  ok: boolean;
  violations: number;
  /** Up to SAMPLE offending rows. */
  samples: Record<string, unknown>[];
}

export interface ReconcileReport {
  ok: boolean;
  checkedAt: Date;
  durationMs: number;
  totals: Record<string, number>;
  checks: ReconcileCheck[];
}

const SAMPLE = 20;

/** Checks that not one credit was created, lost or spent twice; returns every drift with its ids. */
export async function reconcile(db: Kysely<Database>): Promise<ReconcileReport> {
  const started = performance.now();
  const { checks, totals } = await runReconcileChecks(db, SAMPLE);
  return {
    ok: checks.every((check) => check.violations === 0),
    checkedAt: new Date(),
    durationMs: Math.round(performance.now() - started),
    totals: totals ?? {},
    checks: checks.map((check) => ({
      name: check.name,
      description: check.description,
      ok: check.violations === 0,
      violations: check.violations,
      samples: check.samples,
    })),
  };
}
