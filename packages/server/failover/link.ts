import { connect, createServer, type Server, type Socket } from 'node:net';

/**
 * The network between the primary and its standby, on one machine: a TCP relay the standby's replication
 * connection goes through, holding every chunk for `delayMs` in each direction (two machines in different
 * racks or zones are a few milliseconds apart). Two faults:
 * - `dropOnPrimaryDeath()`: when the primary's side closes (it was killed), what the link still holds is
 *   dropped rather than delivered — the last WAL a primary sent is lost when its machine dies;
 * - `sever()`: a partition — the link goes down now, with whatever it holds, while the primary lives on.
 * On localhost without the delay the standby is (almost) never behind when the primary process is killed.
 */
export class ReplicationLink {
  private readonly connections = new Set<{ a: Socket; b: Socket; timers: Set<NodeJS.Timeout> }>();
  /** Bytes from the primary dropped before the standby got them. */
  droppedBytes = 0;
  private dropOnDeath = false;
  /** Partitioned: new connections are refused too (the standby's retries find no way through). */
  private down = false;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly delayMs: number,
  ) {}

  static async start(target: { host: string; port: number }, delayMs: number): Promise<ReplicationLink> {
    let link: ReplicationLink | undefined;
    const server = createServer((socket) => link?.accept(socket, target));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    link = new ReplicationLink(server, typeof address === 'object' && address ? address.port : 0, delayMs);
    return link;
  }

  private accept(standby: Socket, target: { host: string; port: number }): void {
    if (this.down) {
      standby.destroy();
      return;
    }
    const primary = connect(target.port, target.host);
    // Postgres sets TCP_NODELAY on its own sockets; a relay that left Nagle on would hold each small
    // reply (the standby's flush confirmation) for a delayed ACK, ~40 ms per synchronous commit.
    standby.setNoDelay(true);
    primary.setNoDelay(true);
    const connection = { a: standby, b: primary, timers: new Set<NodeJS.Timeout>() };
    this.connections.add(connection);
    const relay = (from: Socket, to: Socket, fromPrimary: boolean) => {
      from.on('data', (chunk) => {
        if (this.delayMs <= 0) {
          to.write(chunk);
          return;
        }
        const timer = setTimeout(() => {
          connection.timers.delete(timer);
          if (!to.destroyed) to.write(chunk);
        }, this.delayMs);
        if (fromPrimary) (timer as NodeJS.Timeout & { bytes?: number }).bytes = chunk.length;
        connection.timers.add(timer);
      });
    };
    relay(standby, primary, false);
    relay(primary, standby, true);
    // The primary died with the link armed: what it sent in the last delayMs never arrives.
    primary.on('close', () => {
      if (this.dropOnDeath) this.drop(connection);
    });
    // A side that closes closes the other once what is in flight has been delivered.
    const end = () => {
      const close = () => {
        this.connections.delete(connection);
        standby.destroy();
        primary.destroy();
      };
      if (connection.timers.size === 0) close();
      else setTimeout(close, this.delayMs + 1);
    };
    for (const socket of [standby, primary]) {
      socket.on('close', end);
      socket.on('error', end);
    }
  }

  /** From now on the primary's death drops what the link holds (the machine dies with its buffers). */
  dropOnPrimaryDeath(): void {
    this.dropOnDeath = true;
  }

  /** Cuts every connection now, and any new one until close(); what the link still held is lost. */
  sever(): void {
    this.down = true;
    for (const connection of this.connections) this.drop(connection);
  }

  private drop(connection: { a: Socket; b: Socket; timers: Set<NodeJS.Timeout> }): void {
    for (const timer of connection.timers) {
      clearTimeout(timer);
      this.droppedBytes += (timer as NodeJS.Timeout & { bytes?: number }).bytes ?? 0;
    }
    connection.timers.clear();
    connection.a.destroy();
    connection.b.destroy();
    this.connections.delete(connection);
  }

  async close(): Promise<void> {
    this.sever();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
