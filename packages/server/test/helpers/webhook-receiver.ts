import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Webhook } from 'standardwebhooks';

export interface ReceivedDelivery {
  headers: IncomingHttpHeaders;
  body: string;
  receivedAt: number;
}

export interface Envelope {
  id: string;
  type: string;
  createdAt: string;
  data: Record<string, unknown>;
}

/**
 * A webhook receiver for tests, as a real one would be: an HTTP server on 127.0.0.1 that records every request
 * and answers as told — `ok` (204), `failing` (500), `down` (connection destroyed), `slow` (answers after
 * `delayMs`), `hold` (recorded, then left unanswered until release(): the attempt stays in flight). verify()
 * checks a delivery with the standardwebhooks package, as a receiver does.
 */
export class WebhookReceiver {
  readonly received: ReceivedDelivery[] = [];
  mode: 'ok' | 'failing' | 'down' | 'slow' | 'hold' = 'ok';
  delayMs = 0;
  /** The answers `hold` is keeping back. */
  private readonly holding: Array<() => void> = [];
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly url: string,
  ) {}

  static async start(path = '/hooks'): Promise<WebhookReceiver> {
    let receiver: WebhookReceiver | undefined;
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const self = receiver;
        if (!self) return;
        if (self.mode === 'down') {
          req.socket.destroy();
          return;
        }
        self.received.push({
          headers: req.headers,
          body: Buffer.concat(chunks).toString('utf8'),
          receivedAt: Date.now(),
        });
        const answer = () => {
          res.statusCode = self.mode === 'failing' ? 500 : 204;
          res.end();
        };
        if (self.mode === 'slow') setTimeout(answer, self.delayMs);
        else if (self.mode === 'hold') self.holding.push(answer);
        else answer();
      });
    });
    server.on('connection', (socket) => {
      receiver?.sockets.add(socket);
      socket.on('close', () => receiver?.sockets.delete(socket));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    receiver = new WebhookReceiver(server, `http://127.0.0.1:${port}${path}`);
    return receiver;
  }

  /** The envelope of a delivery after checking its signature with `secret` (throws when it does not verify). */
  verify(delivery: ReceivedDelivery, secret: string): Envelope {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(delivery.headers)) {
      if (typeof value === 'string') headers[name] = value;
    }
    return new Webhook(secret).verify(delivery.body, headers) as Envelope;
  }

  /** Every delivery verified with `secret`, as envelopes, in arrival order. */
  envelopes(secret: string): Envelope[] {
    return this.received.map((delivery) => this.verify(delivery, secret));
  }

  /** Answers the requests `hold` kept back (204, or 500 when `failing`); those whose sender is gone are dropped. */
  release(): void {
    for (const answer of this.holding.splice(0)) answer();
  }

  clear(): void {
    this.received.length = 0;
  }

  async close(): Promise<void> {
    this.holding.length = 0;
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Polls until `check` returns a value other than undefined/false (or throws after `timeoutMs`). */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 20_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value as T;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
