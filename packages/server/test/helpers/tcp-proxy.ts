import { connect, createServer, type Server, type Socket } from 'node:net';

interface Connection {
  client: Socket;
  upstream: Socket;
  /** What the client sent while requests were held, in order. */
  held: Buffer[];
}

/**
 * A TCP proxy between the server and Postgres that cuts connections on command: the fault that leaves an
 * outcome unknown. `cutResponses(p)` closes a connection, with probability p, at the moment Postgres starts
 * to answer a request — after it executed (and for an implicit transaction, committed) it, before the
 * client has heard the answer. `cutAll()` drops every open connection at once. `holdRequests()` keeps what
 * the server sends from reaching Postgres until `releaseRequests()`: a statement in flight on a paused
 * instance, which arrives late. Used by the test suite and by `pnpm chaos`.
 */
export class TcpFaultProxy {
  private readonly connections = new Set<Connection>();
  private cutProbability = 0;
  private holding = false;
  /** Connections cut so far (by either method). */
  cuts = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly random: () => number,
  ) {}

  static async start(
    target: { host: string; port: number },
    options: { random?: () => number; listenPort?: number } = {},
  ): Promise<TcpFaultProxy> {
    let proxy: TcpFaultProxy | undefined;
    const server = createServer((client) => proxy?.accept(client, target));
    await new Promise<void>((resolve) => server.listen(options.listenPort ?? 0, '127.0.0.1', resolve));
    const address = server.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    proxy = new TcpFaultProxy(server, port, options.random ?? Math.random);
    return proxy;
  }

  /** A connection string that goes through the proxy instead of straight to `databaseUrl`. */
  urlFor(databaseUrl: string): string {
    const url = new URL(databaseUrl);
    url.hostname = '127.0.0.1';
    url.port = String(this.port);
    return url.toString();
  }

  /** From now on each answer that starts is cut with this probability (0 = forward everything). */
  cutResponses(probability: number): void {
    this.cutProbability = probability;
  }

  cutAll(): void {
    for (const connection of this.connections) this.cut(connection);
  }

  /** From now on the server's requests wait in the proxy (nothing reaches Postgres) until releaseRequests. */
  holdRequests(): void {
    this.holding = true;
  }

  /** Everything held so far, as the server sent it (to wait until a given statement is in flight). */
  heldBytes(): Buffer {
    return Buffer.concat([...this.connections].flatMap((connection) => connection.held));
  }

  /** Sends what was held on to Postgres, in order, and forwards everything again. */
  releaseRequests(): void {
    this.holding = false;
    for (const connection of this.connections) {
      for (const chunk of connection.held.splice(0)) connection.upstream.write(chunk);
    }
  }

  async close(): Promise<void> {
    this.cutProbability = 0;
    this.holding = false;
    this.cutAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket, target: { host: string; port: number }): void {
    const upstream = connect(target.port, target.host);
    // Relay each chunk at once: Nagle's algorithm with delayed ACKs would add ~40 ms to small round trips.
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const connection: Connection = { client, upstream, held: [] };
    this.connections.add(connection);
    // The first client message is the start-up packet; answers count once the connection asked a query.
    let requests = 0;
    let answering = false;
    client.on('data', (chunk: Buffer) => {
      requests++;
      answering = false;
      if (this.holding) connection.held.push(chunk);
      else upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (requests > 1 && !answering && this.cutProbability > 0 && this.random() < this.cutProbability) {
        this.cut(connection);
        return;
      }
      answering = true;
      client.write(chunk);
    });
    const end = () => {
      this.connections.delete(connection);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
  }

  private cut(connection: Connection): void {
    if (!this.connections.delete(connection)) return;
    this.cuts++;
    connection.client.destroy();
    connection.upstream.destroy();
  }
}
