// The typed client grows in its own issue; for now callers get the router's types.
export type { AppRouter, RouterInputs, RouterOutputs } from '@mana-credits/server/router';
