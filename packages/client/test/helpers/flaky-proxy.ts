import {
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * How the proxy treats one request:
 * - 'reset': drops the connection without forwarding (a network error);
 * - 502 | 503 | 504: answers that status with an HTML page, without forwarding;
 * - 'lost': forwards, lets the service act, then answers 502 instead of its response (the worst case: the
 *   effect happened and the caller cannot know);
 * - 'json503': answers what the service says when it is unavailable (tRPC JSON, SERVICE_UNAVAILABLE);
 * - 'unknown503': forwards, lets the service act, then answers what the service says when it lost its
 *   database connection after a commit (tRPC JSON, 503, reason OUTCOME_UNKNOWN);
 * - { status, retryAfter }: answers that status with an HTML page and that Retry-After, without forwarding;
 * - 'hang': never answers (nor forwards) until the proxy closes;
 * - 'stall-body': sends the status line, headers and part of a JSON body, then nothing more (nor forwards).
 */
export type Failure =
  | 'reset'
  | 502
  | 503
  | 504
  | 'lost'
  | 'json503'
  | 'unknown503'
  | 'hang'
  | 'stall-body'
  | { status: number; retryAfter: string };

export interface ProxiedRequest {
  method: string;
  url: string;
  body: string;
}

/** A real HTTP proxy in front of the test server that fails the next requests as told, then forwards. */
export class FlakyProxy {
  readonly requests: ProxiedRequest[] = [];
  private failures: Failure[] = [];

  private constructor(
    private readonly server: Server,
    private readonly target: URL,
  ) {}

  static async start(targetUrl: string): Promise<FlakyProxy> {
    let proxy: FlakyProxy | undefined;
    const server = createServer((req, res) => void proxy?.handle(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new FlakyProxy(server, new URL(targetUrl));
    return proxy;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** The next requests fail in this order; requests after them are forwarded. */
  failNext(...failures: Failure[]): void {
    this.failures = failures;
    this.requests.length = 0;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    this.requests.push({ method: req.method ?? 'GET', url: req.url ?? '/', body });
    const failure = this.failures.shift();
    if (failure === 'hang') return;
    if (failure === 'stall-body') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('[{"result":');
      return;
    }
    if (failure === 'reset') {
      req.socket.destroy();
      return;
    }
    if (typeof failure === 'object') {
      res
        .writeHead(failure.status, { 'content-type': 'text/html', 'retry-after': failure.retryAfter })
        .end(`<html><h1>${failure.status}</h1></html>`);
      return;
    }
    if (typeof failure === 'number') {
      res.writeHead(failure, { 'content-type': 'text/html' }).end(`<html><h1>${failure}</h1></html>`);
      return;
    }
    if (failure === 'json503') {
      this.answer503(req, res, 'SERVICE_UNAVAILABLE', 'Authentication is temporarily unavailable');
      return;
    }
    const answer = await this.forward(req, body);
    if (failure === 'lost') {
      res.writeHead(502, { 'content-type': 'text/plain' }).end('upstream connection lost');
      return;
    }
    if (failure === 'unknown503') {
      this.answer503(req, res, 'OUTCOME_UNKNOWN', 'The connection to the database was lost');
      return;
    }
    res.writeHead(answer.status, answer.headers).end(answer.body);
  }

  /** A tRPC JSON 503 for every call of the (possibly batched) request. */
  private answer503(req: IncomingMessage, res: ServerResponse, reason: string, message: string): void {
    const calls = new URL(req.url ?? '/', this.url).pathname.split(',').length;
    const error = {
      error: {
        json: {
          message,
          code: -32603,
          data: { code: 'SERVICE_UNAVAILABLE', httpStatus: 503, reason },
        },
      },
    };
    res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify(Array(calls).fill(error)));
  }

  private forward(req: IncomingMessage, body: string) {
    return new Promise<{ status: number; headers: Record<string, string>; body: Buffer }>(
      (resolve, reject) => {
        const upstream = httpRequest(
          new URL(req.url ?? '/', this.target),
          { method: req.method, headers: { ...req.headers, host: this.target.host } },
          async (response) => {
            const chunks: Buffer[] = [];
            for await (const chunk of response) chunks.push(chunk as Buffer);
            const headers: Record<string, string> = {};
            for (const [name, value] of Object.entries(response.headers)) {
              if (typeof value === 'string' && name !== 'transfer-encoding' && name !== 'connection')
                headers[name] = value;
            }
            resolve({ status: response.statusCode ?? 502, headers, body: Buffer.concat(chunks) });
          },
        );
        upstream.on('error', reject);
        upstream.end(body);
      },
    );
  }
}
