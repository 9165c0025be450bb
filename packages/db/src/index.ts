export * from './connect.ts';
export * from './database.ts';
export * from './int8.ts';
export * from './migrate.ts';
export * from './queries/balances.ts';
export * from './queries/errors.ts';
export * from './queries/guild.ts';
export * from './queries/ledger.ts';
