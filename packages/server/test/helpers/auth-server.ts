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
const ALGORITHMS = ['EdDSA', 'ES256', 'RS256'] as const;

interface KeyMaterial {
  pairs: Record<(typeof ALGORITHMS)[number], KeyPair>;
  publicJwks: Record<(typeof ALGORITHMS)[number], JWK>;
  /** Published by no server. */
  rogue: KeyPair;
}

let material: Promise<KeyMaterial> | undefined;
/**
 * The key pairs, made once per process: an RSA pair alone costs up to a few hundred ms of CPU, and the suite
 * starts dozens of auth servers. Each server publishes them under key ids of its own, so a token signed by
 * one test's auth server names a kid that no other server's JWKS has.
 */
function keyMaterial(): Promise<KeyMaterial> {
  material ??= (async () => {
    const pairs = {
      EdDSA: await generateKeyPair('EdDSA', { crv: 'Ed25519' }),
      ES256: await generateKeyPair('ES256'),
      RS256: await generateKeyPair('RS256'),
    };
    const publicJwks = {
      EdDSA: await exportJWK(pairs.EdDSA.publicKey),
      ES256: await exportJWK(pairs.ES256.publicKey),
      RS256: await exportJWK(pairs.RS256.publicKey),
    };
    return { pairs, publicJwks, rogue: await generateKeyPair('EdDSA', { crv: 'Ed25519' }) };
  })();
  return material;
}

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
    const material = await keyMaterial();
    const kids = { EdDSA: `ed-${randomUUID()}`, ES256: `es-${randomUUID()}`, RS256: `rs-${randomUUID()}` };
    const keys = {
      EdDSA: { pair: material.pairs.EdDSA, kid: kids.EdDSA },
      ES256: { pair: material.pairs.ES256, kid: kids.ES256 },
      RS256: { pair: material.pairs.RS256, kid: kids.RS256 },
    };
    const rogue = material.rogue;
    const jwks = {
      keys: ALGORITHMS.map((alg) => ({ ...material.publicJwks[alg], kid: kids[alg], alg, use: 'sig' })),
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

/** A key-set server in front of a TestAuthServer's JWKS that can be told to fail in the ways real ones do. */
export class FlakyJwks {
  mode: 'ok' | '500' | '502-html' | 'garbage' | 'redirect' | 'not-a-key-set' = 'ok';
  requests = 0;
  private constructor(
    readonly server: Server,
    readonly auth: TestAuthServer,
  ) {}
  get url() {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/jwks`;
  }
  static async start(auth: TestAuthServer) {
    let instance: FlakyJwks | undefined;
    const server = createServer((_req, res) => {
      const self = instance!;
      self.requests++;
      switch (self.mode) {
        case 'ok':
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(self.auth.jwks));
          return;
        case '500':
          res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"internal"}');
          return;
        case '502-html':
          res.writeHead(502, { 'content-type': 'text/html' }).end('<html>Bad Gateway</html>');
          return;
        case 'garbage':
          res.writeHead(200, { 'content-type': 'application/json' }).end('<html>maintenance</html>');
          return;
        case 'redirect':
          res.writeHead(302, { location: '/elsewhere' }).end();
          return;
        case 'not-a-key-set':
          res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"degraded"}');
          return;
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    instance = new FlakyJwks(server, auth);
    return instance;
  }
  async close() {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
