import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose';

export type GuildRole = 'owner' | 'admin' | 'member';

export interface TestUser {
  id: string;
  email?: string;
  name?: string;
  role?: string;
}

export interface SignOptions {
  issuer?: string;
  audience?: string;
  expiresIn?: string | number;
  /** Omit exp entirely. */
  noExp?: boolean;
  notBefore?: string | number;
  kid?: string;
  /** Sign with a key the JWKS does not publish. */
  rogueKey?: boolean;
  alg?: 'EdDSA' | 'ES256' | 'RS256';
}

type KeyPair = Awaited<ReturnType<typeof generateKeyPair>>;

/**
 * A real auth service for tests: serves a JWKS at /api/auth/jwks, signs real tokens, and answers the guild
 * membership endpoint from a table the test controls (or fails, when told to).
 */
export class TestAuthServer {
  readonly url: string;
  readonly issuer: string;
  readonly audience = 'manacore';
  /** guildId → userId → role */
  readonly memberships = new Map<string, Map<string, GuildRole>>();
  /** 'ok' | 'down' (500) | 'garbage' (nonsense JSON) | 'hang' (never answers) */
  membershipMode: 'ok' | 'down' | 'garbage' | 'hang' = 'ok';
  /** When set, the membership endpoint answers this JSON with 200 instead of looking the member up. */
  membershipBody: unknown;
  membershipRequests = 0;
  /** The service key the membership endpoint expects. */
  expectedServiceKey: string | undefined;

  private constructor(
    private readonly server: Server,
    private readonly keys: Record<'EdDSA' | 'ES256' | 'RS256', { pair: KeyPair; kid: string }>,
    private readonly rogue: KeyPair,
    readonly jwks: { keys: JWK[] },
  ) {
    const { port } = server.address() as AddressInfo;
    this.url = `http://127.0.0.1:${port}`;
    this.issuer = this.url;
  }

  static async start(): Promise<TestAuthServer> {
    const keys = {
      EdDSA: { pair: await generateKeyPair('EdDSA', { crv: 'Ed25519' }), kid: `ed-${randomUUID()}` },
      ES256: { pair: await generateKeyPair('ES256'), kid: `es-${randomUUID()}` },
      RS256: { pair: await generateKeyPair('RS256'), kid: `rs-${randomUUID()}` },
    };
    const rogue = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const jwks = {
      keys: await Promise.all(
        Object.entries(keys).map(async ([alg, { pair, kid }]) => ({
          ...(await exportJWK(pair.publicKey)),
          kid,
          alg,
          use: 'sig',
        })),
      ),
    };
    let instance: TestAuthServer | undefined;
    const server = createServer((req, res) => instance?.handle(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    instance = new TestAuthServer(server, keys, rogue, jwks);
    return instance;
  }

  setRole(guildId: string, userId: string, role: GuildRole | null) {
    let members = this.memberships.get(guildId);
    if (!members) {
      members = new Map();
      this.memberships.set(guildId, members);
    }
    if (role) members.set(userId, role);
    else members.delete(userId);
  }

  private handle(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? '/', this.url);
    if (url.pathname === '/api/auth/jwks') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.jwks));
      return;
    }
    const member = /^\/api\/v1\/internal\/org\/([^/]+)\/member\/([^/]+)$/.exec(url.pathname);
    if (member) {
      this.membershipRequests++;
      if (this.expectedServiceKey && req.headers['x-service-key'] !== this.expectedServiceKey) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"unauthorized"}');
        return;
      }
      if (this.membershipMode === 'down') {
        res.writeHead(500).end('boom');
        return;
      }
      if (this.membershipMode === 'garbage') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"isMember":"perhaps"}');
        return;
      }
      if (this.membershipMode === 'hang') return;
      if (this.membershipBody !== undefined) {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.membershipBody));
        return;
      }
      const guildId = decodeURIComponent(member[1]!);
      const userId = decodeURIComponent(member[2]!);
      const role = this.memberships.get(guildId)?.get(userId);
      res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify(role ? { isMember: true, role } : { isMember: false, role: null }));
      return;
    }
    res.writeHead(404).end();
  }

  async sign(user: TestUser, options: SignOptions = {}, extraClaims: JWTPayload = {}): Promise<string> {
    const alg = options.alg ?? 'EdDSA';
    const { pair, kid } = this.keys[alg];
    const claims: JWTPayload = { email: user.email, name: user.name, role: user.role, ...extraClaims };
    let jwt = new SignJWT(claims)
      .setProtectedHeader({ alg, kid: options.kid ?? kid })
      .setSubject(user.id)
      .setIssuer(options.issuer ?? this.issuer)
      .setAudience(options.audience ?? this.audience)
      .setIssuedAt();
    if (!options.noExp) jwt = jwt.setExpirationTime(options.expiresIn ?? '10m');
    if (options.notBefore !== undefined) jwt = jwt.setNotBefore(options.notBefore);
    return jwt.sign(options.rogueKey ? this.rogue.privateKey : pair.privateKey);
  }

  async close() {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    // A 'hang' request would otherwise hold the server open.
    this.server.closeAllConnections();
    await closed;
  }
}
