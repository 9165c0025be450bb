// A small web app on its own origin, as a user of @mana-credits/client would write it: the typed client for
// tRPC, plain fetch for REST. browser.test.ts bundles it with the packed client (esbuild, platform browser)
// and drives it in Chromium. The service's URL comes from ?api=.
import { createCreditsClient, creditsErrorReason, isInsufficientCredits } from '@mana-credits/client';

const api = new URL(location.href).searchParams.get('api');
const session = { token: undefined };

// getToken is asked before every request: signing in again (a refreshed or another user's token) needs no
// new client.
const credits = createCreditsClient({ url: api, getToken: () => session.token });

const field = (name) => document.querySelector(`[data-field="${name}"]`);
const show = (name, text) => {
  field(name).textContent = String(text);
};
const input = (form, name) => form.elements.namedItem(name).value;

/** A REST call with the same token; the service's error body becomes the thrown error's message. */
async function rest(method, path, body) {
  const response = await fetch(`${api}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${session.token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  // X-Request-Id is an exposed header: support can find the call in the service's logs.
  show('request-id', response.headers.get('x-request-id') ?? '(hidden)');
  const json = await response.json();
  if (!response.ok) throw new Error(`${json.error.reason}: ${json.error.message}`);
  return json;
}

function failed(error) {
  field('top-up').hidden = true;
  if (isInsufficientCredits(error)) {
    const { required, available } = error.data.details;
    show('short-by', required - available);
    field('top-up').hidden = false;
    show('status', `Not enough credits: ${required - available} more needed`);
    return;
  }
  show('status', `Failed: ${creditsErrorReason(error) ?? error.message}`);
}

function on(id, action) {
  document.getElementById(id).addEventListener('submit', async (event) => {
    event.preventDefault();
    show('status', 'Working…');
    try {
      show('status', await action(event.currentTarget));
    } catch (error) {
      failed(error);
    }
  });
}

async function refreshBalance() {
  const { balance } = await credits.credits.balance.query();
  show('balance', balance);
}

on('sign-in', async (form) => {
  session.token = input(form, 'token');
  await refreshBalance();
  return 'Signed in';
});

on('spend', async (form) => {
  const amount = Number(input(form, 'amount'));
  const { balance } = await credits.credits.use.mutate({
    amount,
    appId: 'web-app',
    description: 'a click in the browser',
    idempotencyKey: crypto.randomUUID(),
  });
  field('top-up').hidden = true;
  show('balance', balance);
  return `Spent ${amount}`;
});

on('gift', async (form) => {
  const gift = await credits.gifts.create.mutate({
    type: 'simple',
    totalCredits: Number(input(form, 'amount')),
  });
  show('gift-id', gift.id);
  await refreshBalance();
  return `Gift ${gift.code} created`;
});

on('cancel-gift', async () => {
  const { refunded } = await rest(
    'DELETE',
    `/api/v1/gifts/${encodeURIComponent(field('gift-id').textContent)}`,
  );
  await refreshBalance();
  return `Gift cancelled: ${refunded} credits back`;
});

on('limit', async (form) => {
  const guildId = encodeURIComponent(input(form, 'guildId'));
  const userId = encodeURIComponent(input(form, 'userId'));
  const limits = await rest('PUT', `/api/v1/credits/guild/${guildId}/members/${userId}/limits`, {
    dailyLimit: Number(input(form, 'dailyLimit')),
    monthlyLimit: null,
  });
  return `Daily limit: ${limits.dailyLimit}`;
});

document.body.dataset.ready = 'true';
