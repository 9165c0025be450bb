import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AuthUser } from '../auth/jwt.ts';
import type { AppDeps, Logger } from '../deps.ts';
import { clientAddressOf } from '../http/client-address.ts';

export interface Context {
  deps: AppDeps;
  requestId: string;
  clientIp: string;
  log: Logger | undefined;
  /** Raw credentials as presented; the base procedures verify them, so public calls pay nothing. */
  bearerToken: string | undefined;
  serviceKey: string | undefined;
  appId: string | undefined;
  /** Set directly by tests through createContextInner; otherwise filled in by the authed procedure. */
  user: AuthUser | undefined;
  service: { appId: string } | undefined;
}

export interface InnerContextOptions {
  requestId?: string;
  clientIp?: string;
  log?: Logger;
  bearerToken?: string;
  serviceKey?: string;
  appId?: string;
  user?: AuthUser;
  service?: { appId: string };
}

/** The context without HTTP: for createCaller tests and for createContext below. */
export function createContextInner(deps: AppDeps, options: InnerContextOptions = {}): Context {
  return {
    deps,
    requestId: options.requestId ?? 'internal',
    clientIp: options.clientIp ?? '127.0.0.1',
    log: options.log,
    bearerToken: options.bearerToken,
    serviceKey: options.serviceKey,
    appId: options.appId,
    user: options.user,
    service: options.service,
  };
}

const headerText = (value: string | string[] | undefined) => (typeof value === 'string' ? value : undefined);

const APP_ID = /^[A-Za-z0-9._:-]{1,100}$/;

/** The app a service names in X-App-Id, when it is a sane identifier; 'unknown' otherwise. */
export function serviceAppIdOf(header: string | undefined): string {
  return header && APP_ID.test(header) ? header : 'unknown';
}

export function bearerTokenOf(authorization: string | undefined): string | undefined {
  if (!authorization) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  return match?.[1];
}

export function createContextFactory(deps: AppDeps) {
  return ({ req }: { req: FastifyRequest; res: FastifyReply }): Context =>
    createContextInner(deps, {
      requestId: req.id,
      clientIp: clientAddressOf(req),
      log: req.log,
      bearerToken: bearerTokenOf(headerText(req.headers.authorization)),
      serviceKey: headerText(req.headers['x-service-key']),
      appId: headerText(req.headers['x-app-id']),
    });
}
