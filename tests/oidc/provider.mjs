// A real OpenID provider for the tests: panva's oidc-provider (tests/oidc/package.json), on 127.0.0.1.
//
//   node tests/oidc/provider.mjs CONFIG.json
//
// CONFIG (written by tests/oidc_provider.py, 0600):
//   { "port": 0, "port_file": "...", "tls": {"cert": "...", "key": "..."} | null,
//     "clients": [{"client_id", "client_secret", "redirect_uris", "token_endpoint_auth_method"?, "any_loopback_port"?}],
//     "accounts": {"<login>": {"password": "...", "claims": {"preferred_username", "groups", "sites", ...}}} }
//
// It listens first (port 0: the kernel picks), then builds the provider with the issuer
// https://127.0.0.1:<port> (http:// without "tls"), then writes the port to port_file (write then
// rename, so a reader never sees half a number). The login is a minimal HTML form (login, password,
// and a "cancel" button that ends the flow with error=access_denied); consent is implied for the
// configured clients (first-party). The ID token carries the account's claims (sub, preferred_username,
// groups, sites) for the scopes "openid profile groups". A fresh RS256 signing key every start.
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts;
const MAX_FORM_BYTES = 16 * 1024;

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
    + `<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

function loginForm(uid, message) {
  const note = message ? `<p id="message">${escape(message)}</p>` : '';
  return page('Sign in', `${note}<form id="login" method="post" action="/interaction/${escape(uid)}/login">`
    + '<label>Login <input id="login-name" name="login" autocomplete="username" autofocus></label>'
    + '<label>Password <input id="login-password" name="password" type="password" autocomplete="current-password"></label>'
    + '<button id="login-submit" type="submit">Sign in</button></form>'
    + `<form id="cancel" method="post" action="/interaction/${escape(uid)}/abort">`
    + '<button id="login-cancel" type="submit">Cancel</button></form>');
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_FORM_BYTES) {
        reject(new Error('form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function send(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(html);
}

async function interaction(provider, req, res) {
  const [, , uid, action] = new URL(req.url, 'http://x').pathname.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<p>interaction mismatch</p>'));
    return;
  }
  if (req.method === 'GET' && !action) {
    send(res, 200, loginForm(uid, ''));
    return;
  }
  if (req.method === 'POST' && action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const login = form.get('login') || '';
    const account = Object.hasOwn(accounts, login) ? accounts[login] : undefined;
    if (!account || account.password !== form.get('password')) {
      send(res, 200, loginForm(uid, 'Invalid login or password'));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    return;
  }
  send(res, 405, page('Error', '<p>method not allowed</p>'));
}

async function findAccount(ctx, id) {
  if (!Object.hasOwn(accounts, id)) return undefined;
  const claims = accounts[id].claims || {};
  return {
    accountId: id,
    async claims() {
      return { sub: claims.sub || id, ...claims };
    },
  };
}

// Consent is implied for the configured (first-party) clients: a grant of what was asked for.
async function loadExistingGrant(ctx) {
  const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
  if (grantId) return ctx.oidc.provider.Grant.find(grantId);
  const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
  grant.addOIDCScope(ctx.oidc.requestParamScopes ? [...ctx.oidc.requestParamScopes].join(' ') : 'openid');
  grant.addOIDCClaims(['sub', 'preferred_username', 'groups', 'sites']);
  await grant.save();
  return grant;
}

function buildProvider(issuer) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
  const provider = new Provider(issuer, {
    clients: config.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      redirect_uris: c.redirect_uris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: c.token_endpoint_auth_method || 'client_secret_basic',
    })),
    jwks: { keys: [jwk] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    claims: { openid: ['sub'], profile: ['preferred_username', 'name'], groups: ['groups', 'sites'] },
    conformIdTokenClaims: false, // the ID token carries the granted scopes' claims
    features: { devInteractions: { enabled: false } },
    pkce: { required: () => true },
    interactions: { url: (ctx, i) => `/interaction/${i.uid}` },
    findAccount,
    loadExistingGrant,
    ttl: { IdToken: 300, AccessToken: 300, AuthorizationCode: 60, Interaction: 600, Session: 3600, Grant: 3600 },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', `<pre id="error">${escape(JSON.stringify(out))}</pre>`);
    },
  });
  // A client with "any_loopback_port" accepts its redirect URIs on 127.0.0.1 at any port (RFC 8252's
  // loopback rule, here for https too): a test's console may start on port 0 after the provider.
  const anyPort = new Set(config.clients.filter((c) => c.any_loopback_port).map((c) => c.client_id));
  const exact = provider.Client.prototype.redirectUriAllowed;
  provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    if (exact.call(this, value)) return true;
    if (!anyPort.has(this.clientId)) return false;
    let parsed;
    try {
      parsed = new URL(value);
    } catch {
      return false;
    }
    if (parsed.hostname !== '127.0.0.1') return false;
    parsed.port = '';
    return this.redirectUris.some((allowed) => {
      const registered = new URL(allowed);
      registered.port = '';
      return registered.href === parsed.href;
    });
  };
  const callback = provider.callback();
  return (req, res) => {
    if (req.url.startsWith('/interaction/')) {
      interaction(provider, req, res).catch((err) => {
        if (!res.headersSent) send(res, 400, page('Error', `<p>${escape(err.message)}</p>`));
      });
    } else {
      callback(req, res);
    }
  };
}

let handler = (req, res) => send(res, 503, 'starting');
const route = (req, res) => handler(req, res);
const server = config.tls
  ? https.createServer({ cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) }, route)
  : http.createServer(route);

server.listen(config.port || 0, '127.0.0.1', () => {
  const { port } = server.address();
  handler = buildProvider(`${config.tls ? 'https' : 'http'}://127.0.0.1:${port}`);
  writeFileSync(`${config.port_file}.tmp`, String(port));
  renameSync(`${config.port_file}.tmp`, config.port_file);
  console.log(`listening on 127.0.0.1:${port}`);
});

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
