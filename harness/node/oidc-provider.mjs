// A real OpenID Connect provider (the certified npm `oidc-provider`) for the login tests.
//
// It stands in for CILogon and CERN SSO: the accounts and their claims come from a JSON file,
// every login shows one small form (a username, no password) and consent is given
// automatically, so both a headless browser and a plain HTTP client can log in. A test can change
// an account's claims while the provider runs (PUT /test/accounts/<id>), and every token the
// provider issues is logged as one line on stdout, so a test can count logins and refreshes.
//
// Usage (every option also reads an environment variable, shown in brackets):
//   node oidc-provider.mjs --clients clients.json --accounts accounts.json
//     [--port N (OIDC_PORT, default 0: the kernel picks a free port)]
//     [--host ADDR (OIDC_HOST, default 127.0.0.1)]
//     [--issuer URL (OIDC_ISSUER, default http://127.0.0.1:<port><issuer path>)]
//     [--issuer-path PATH (OIDC_ISSUER_PATH, e.g. /auth/realms/cern: the issuer of a Keycloak)]
//     [--routes JSON (OIDC_ROUTES): endpoint paths, as oidc-provider's `routes` setting, e.g.
//       {"authorization": "/authorize", "token": "/oauth2/token"} for CILogon's shape]
//     [--access-token-ttl S (OIDC_ACCESS_TOKEN_TTL, default 3600)]
//     [--id-token-ttl S (OIDC_ID_TOKEN_TTL, default 3600)]
//     [--refresh-token-ttl S (OIDC_REFRESH_TOKEN_TTL, default 14 days)]
//     [--no-refresh-tokens (OIDC_NO_REFRESH_TOKENS=1): issue no refresh tokens at all]
//     [--signing-key FILE (OIDC_SIGNING_KEY): keep the signing key (a JWK) there, made if missing,
//       so that a restart keeps the key that verifiers cached]
//     [--tls-cert PEM --tls-key PEM (OIDC_TLS_CERT, OIDC_TLS_KEY): serve HTTPS (an issuer whose
//       keys XCache's SciTokens plugin fetches must be https)]
//     [--storage-audience URL (OIDC_STORAGE_AUDIENCE) --storage-scopes "S ..." (OIDC_STORAGE_SCOPES):
//       access tokens become WLCG tokens (signed JWTs for that audience, wlcg.ver 1.0) that carry
//       the storage scopes a client asks for among these, e.g. storage.read:/store. Such a token
//       is not for the userinfo endpoint: clients take the claims from the ID token.]
//
// clients.json: [{"client_id": "...", "client_secret": "...", "redirect_uris": ["..."]}, ...]
//   Any other client metadata is passed through. Defaults: token_endpoint_auth_method
//   "client_secret_post" (what OAuthenticator sends unless basic_auth is on), grant_types
//   authorization_code + refresh_token, response_types code.
// accounts.json: [{"id": "alice", "claims": {"sub": "...", "email": "...", ...}}, ...]
//   `id` is what one types into the login form; `sub` defaults to the id.
//
// Pages: GET /interaction/<uid> is the login form; POST /interaction/<uid>/login with the form
// field `username` logs in (403 and the form again for an unknown account). Every authorization
// asks for a login, even with a provider session. Admin API: GET /test/accounts,
// GET|PUT /test/accounts/<id> (PUT body: the account's complete claims, as a JSON object).
// Everything lives in memory (oidc-provider warns about that at start): a restart forgets all
// tokens, sessions and claim changes.
//
// When it is ready it prints one line `listening {"issuer": ..., "port": ...}`. Log lines:
//   login account=<id> client=<client_id>          (and `login refused ...`)
//   token issued kind=<access_token|id_token|refresh_token> grant_type=<...> account=<id>
//     client=<client_id> expires_in=<s>           (one per token in each token response; a
//                                                   refresh token only when a new one is issued)
//   account updated account=<id>
//   error <event> <error>: <description>

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { parseArgs } from 'node:util';

// oidc-provider 9 prints "Unsupported runtime" on Node 20; it works there (the tests prove it).
import Provider, { interactionPolicy } from 'oidc-provider';

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.OIDC_PORT ?? '0' },
    host: { type: 'string', default: process.env.OIDC_HOST ?? '127.0.0.1' },
    issuer: { type: 'string', default: process.env.OIDC_ISSUER },
    'issuer-path': { type: 'string', default: process.env.OIDC_ISSUER_PATH ?? '' },
    routes: { type: 'string', default: process.env.OIDC_ROUTES ?? '{}' },
    clients: { type: 'string', default: process.env.OIDC_CLIENTS },
    accounts: { type: 'string', default: process.env.OIDC_ACCOUNTS },
    'access-token-ttl': { type: 'string', default: process.env.OIDC_ACCESS_TOKEN_TTL ?? '3600' },
    'id-token-ttl': { type: 'string', default: process.env.OIDC_ID_TOKEN_TTL ?? '3600' },
    'refresh-token-ttl': {
      type: 'string', default: process.env.OIDC_REFRESH_TOKEN_TTL ?? String(14 * 24 * 3600),
    },
    'no-refresh-tokens': { type: 'boolean', default: process.env.OIDC_NO_REFRESH_TOKENS === '1' },
    'tls-cert': { type: 'string', default: process.env.OIDC_TLS_CERT },
    'tls-key': { type: 'string', default: process.env.OIDC_TLS_KEY },
    'storage-audience': { type: 'string', default: process.env.OIDC_STORAGE_AUDIENCE },
    'storage-scopes': { type: 'string', default: process.env.OIDC_STORAGE_SCOPES ?? '' },
    'signing-key': { type: 'string', default: process.env.OIDC_SIGNING_KEY },
  },
});
if (!opts.clients || !opts.accounts) {
  console.error('usage: node oidc-provider.mjs --clients FILE --accounts FILE [--port N] ...');
  process.exit(2);
}

function seconds(name) {
  const value = Number(opts[name]);
  if (!Number.isInteger(value) || value <= 0) {
    console.error(`--${name} must be a positive whole number of seconds, not ${opts[name]}`);
    process.exit(2);
  }
  return value;
}
const accessTokenTTL = seconds('access-token-ttl');
const idTokenTTL = seconds('id-token-ttl');
const refreshTokenTTL = seconds('refresh-token-ttl');
const refreshTokens = !opts['no-refresh-tokens'];
if (Boolean(opts['tls-cert']) !== Boolean(opts['tls-key'])) {
  console.error('--tls-cert and --tls-key go together');
  process.exit(2);
}
const storageAudience = opts['storage-audience'];
const storageScopes = opts['storage-scopes'].split(/\s+/).filter(Boolean);
if (Boolean(storageAudience) !== storageScopes.length > 0) {
  console.error('--storage-audience and --storage-scopes go together');
  process.exit(2);
}

// Accounts: id -> claims. A Map so that the admin endpoint can replace claims while we run;
// findAccount reads it at every token request, so new claims show at the next login or refresh.
const accounts = new Map(
  JSON.parse(readFileSync(opts.accounts, 'utf8')).map(({ id, claims }) => [id, claims ?? {}]),
);

// oidc-provider releases only claims it is configured to know. The claims the real providers
// send are listed here, plus every claim name used in the accounts file.
const KNOWN_CLAIMS = [
  // OpenID Connect standard claims (scopes profile and email)
  'name', 'given_name', 'family_name', 'middle_name', 'nickname', 'preferred_username',
  'profile', 'picture', 'website', 'email', 'email_verified', 'gender', 'birthdate',
  'zoneinfo', 'locale', 'updated_at', 'groups',
  // CILogon, scope org.cilogon.userinfo (https://www.cilogon.org/oidc)
  'eppn', 'eptid', 'affiliation', 'ou', 'oidc', 'idp', 'idp_name', 'isMemberOf',
  'subject_id', 'pairwise_id', 'voPersonExternalID', 'uid', 'uidNumber', 'entitlement',
  // CERN SSO (Keycloak realm "cern")
  'cern_upn', 'cern_person_id', 'cern_roles', 'cern_preferred_language', 'home_institute',
];
const claimNames = new Set(KNOWN_CLAIMS);
for (const claims of accounts.values()) Object.keys(claims).forEach((c) => claimNames.add(c));
claimNames.delete('sub');

// The login name (the account's id in the file) of a subject, and the subject of a login name.
const subjectOf = (id) => accounts.get(id)?.sub ?? id;
const loginOf = (sub) => [...accounts.keys()].find((id) => subjectOf(id) === sub);

const clients = JSON.parse(readFileSync(opts.clients, 'utf8')).map((client) => ({
  grant_types: refreshTokens ? ['authorization_code', 'refresh_token'] : ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_post',
  ...client,
}));

// Every authorization request asks for a fresh login, even if the browser still has a session
// at the provider: a test can then log in as another user in the same browser or HTTP session.
// (The check passes once this interaction has a login result, so it does not loop.)
const policy = interactionPolicy.base();
policy.get('login').checks.add(
  new interactionPolicy.Check('fresh_login', 'every authorization asks for a login',
    (ctx) => !ctx.oidc.result?.login),
);

function log(line) {
  console.log(line);
}

// The RSA signing key of the tokens (oidc-provider would otherwise use a built-in development
// key and warn), made at start.
// With --signing-key FILE the key is kept there (made at the first start): verifiers that cache
// the issuer's keys (XCache's SciTokens library does, for minutes) go on accepting its tokens
// after a restart. Each key has an id of its own.
function signingKeyOf(file) {
  if (file && existsSync(file)) return JSON.parse(readFileSync(file, 'utf8'));
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: `key-${randomBytes(6).toString('hex')}`, use: 'sig', alg: 'RS256' };
  if (file) writeFileSync(file, JSON.stringify(jwk), { mode: 0o600 });
  return jwk;
}
const signingKey = signingKeyOf(opts['signing-key']);

function configuration() {
  return {
    clients,
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    // oidc-provider's account id is the `sub` of the tokens (it overrides any other `sub`).
    findAccount(ctx, sub) {
      if (!loginOf(sub)) return undefined;
      return { accountId: sub, claims: async () => ({ ...accounts.get(loginOf(sub)), sub }) };
    },
    // Scopes the authenticators ask for must be known, or oidc-provider drops them. All of an
    // account's claims are released with `openid` (every OIDC client asks for it), so what a
    // client sees does not depend on which of the real providers' scopes it requests.
    scopes: ['openid', 'offline_access', 'email', 'profile', 'org.cilogon.userinfo'],
    claims: {
      acr: null, sid: null, auth_time: null, iss: null,
      openid: ['sub', ...claimNames],
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username'],
      'org.cilogon.userinfo': [],
    },
    // Put the claims into the ID token too, not only into userinfo: clients (and OAuthenticator
    // with userdata_from_id_token) read them from there, as from CERN SSO.
    conformIdTokenClaims: false,
    // oidc-provider issues refresh tokens only for the offline_access scope by default, and drops
    // that scope unless the request also says prompt=consent; OAuthenticator asks for neither.
    // CILogon and CERN SSO issue refresh tokens to registered clients anyway, so do we.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: {
      AccessToken: accessTokenTTL,
      IdToken: idTokenTTL,
      RefreshToken: refreshTokenTTL,
      AuthorizationCode: 60,
      Interaction: 600,
      Session: 3600,
      Grant: refreshTokenTTL,
    },
    // Expiry means expiry: oidc-provider would otherwise accept tokens up to 15 s after they
    // expire, and the refresh tests use tokens that live a few seconds.
    clockTolerance: 0,
    interactions: { policy, url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    // Where the endpoints are: CILogon's and Keycloak's (CERN SSO) paths differ from the defaults.
    routes: JSON.parse(opts.routes),
    features: {
      devInteractions: { enabled: false }, // our own pages below
      introspection: { enabled: true },
      revocation: { enabled: true },
      ...(storageAudience ? { resourceIndicators: storageResource() } : {}),
    },
    // A WLCG token says which profile it follows (the SciTokens library of XCache reads it).
    ...(storageAudience ? {
      extraTokenClaims: async (ctx, token) => (token.kind === 'AccessToken' ? { 'wlcg.ver': '1.0' } : undefined),
    } : {}),
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<h1>Error</h1><pre id="error">${escape(JSON.stringify(out, null, 2))}</pre>`);
    },
  };
}

// Access tokens for the storage (one resource server, the audience): every authorization and
// refresh is for it, whether or not the client names it, and its tokens are signed JWTs with the
// storage scopes the client asked for.
function storageResource() {
  return {
    enabled: true,
    defaultResource: () => storageAudience,
    useGrantedResource: () => true,
    getResourceServerInfo: (ctx, indicator) => {
      if (indicator !== storageAudience) throw new Error(`unknown resource ${indicator}`);
      return {
        scope: storageScopes.join(' '),
        audience: storageAudience,
        accessTokenTTL,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      };
    },
  };
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body>${body}</body></html>\n`;
}

// The login page: one form, POST <interaction url>/login with the field `username`.
function loginPage(uid, clientId, error) {
  return page('Sign in - test OpenID provider', `
<h1>Sign in</h1>
<p>to <span id="client">${escape(clientId)}</span></p>
${error ? `<p id="error" role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
  <label for="username">Username</label>
  <input id="username" name="username" type="text" required autofocus autocomplete="off">
  <button id="submit" type="submit">Sign in</button>
</form>`);
}

function send(res, status, type, body) {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
  res.end(body);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

// GET /interaction/<uid>: the login form; or, once logged in, give consent without asking
// (the grant gets exactly what the client asked for, as devInteractions' consent button does).
async function interaction(provider, req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error(`interaction ${uid} is not this browser's interaction`);
  const { prompt, params, session, grantId } = details;
  if (prompt.name === 'login') {
    send(res, 200, 'text/html; charset=utf-8', loginPage(uid, params.client_id));
    return;
  }
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } },
    { mergeWithLastSubmission: true });
}

// POST /interaction/<uid>/login with username=<account id>: an unknown account gets the form
// again with status 403, so that a typo fails a test instead of logging in someone else.
async function login(provider, req, res, uid) {
  const { params } = await provider.interactionDetails(req, res);
  const username = new URLSearchParams(await readBody(req)).get('username')?.trim() ?? '';
  if (!accounts.has(username)) {
    log(`login refused account=${username} client=${params.client_id}: unknown account`);
    send(res, 403, 'text/html; charset=utf-8',
      loginPage(uid, params.client_id, `unknown account: ${username}`));
    return;
  }
  log(`login account=${username} client=${params.client_id}`);
  await provider.interactionFinished(req, res, { login: { accountId: subjectOf(username) } },
    { mergeWithLastSubmission: false });
}

// Test-only admin API, on the same port (loopback only): read or replace an account's claims.
async function admin(req, res, id) {
  if (id === undefined) {
    send(res, 200, 'application/json', JSON.stringify(Object.fromEntries(accounts)));
  } else if (req.method === 'GET') {
    if (!accounts.has(id)) send(res, 404, 'application/json', JSON.stringify({ error: 'unknown account' }));
    else send(res, 200, 'application/json', JSON.stringify({ id, claims: accounts.get(id) }));
  } else if (req.method === 'PUT') {
    let claims;
    try {
      claims = JSON.parse(await readBody(req));
    } catch {
      claims = null;
    }
    const isObject = claims !== null && typeof claims === 'object' && !Array.isArray(claims);
    const unknown = isObject ? Object.keys(claims).filter((c) => c !== 'sub' && !claimNames.has(c)) : [];
    if (!isObject || unknown.length) {
      send(res, 400, 'application/json', JSON.stringify({
        error: `the body must be a JSON object of known claims; unknown: ${unknown.join(', ')}`
          + ' (a claim name must be in the accounts file at start, or in KNOWN_CLAIMS)',
      }));
      return;
    }
    accounts.set(id, claims);
    log(`account updated account=${id}`);
    send(res, 200, 'application/json', JSON.stringify({ id, claims }));
  } else {
    send(res, 405, 'application/json', JSON.stringify({ error: 'use GET or PUT' }));
  }
}

function logEvents(provider) {
  // One line per token in each token-endpoint response.
  provider.on('grant.success', (ctx) => {
    const body = ctx.body ?? {};
    const token = ctx.oidc.entities.AccessToken ?? ctx.oidc.entities.RefreshToken;
    const fields = `grant_type=${ctx.oidc.params.grant_type} account=${loginOf(token?.accountId)}`
      + ` client=${ctx.oidc.client?.clientId}`;
    if (body.access_token) log(`token issued kind=access_token ${fields} expires_in=${body.expires_in}`);
    if (body.id_token) log(`token issued kind=id_token ${fields} expires_in=${idTokenTTL}`);
    // On a refresh, oidc-provider hands back the same refresh token until 70% of its life has
    // passed (then it rotates it); only a new one counts as issued.
    if (body.refresh_token && body.refresh_token !== ctx.oidc.params.refresh_token) {
      log(`token issued kind=refresh_token ${fields} expires_in=${refreshTokenTTL}`);
    }
  });
  for (const event of ['grant.error', 'authorization.error', 'userinfo.error', 'server_error',
    'introspection.error', 'revocation.error', 'jwks.error', 'discovery.error']) {
    provider.on(event, (ctx, err) => {
      log(`error ${event} ${err.error ?? err.name}: ${err.error_description ?? err.message}`);
    });
  }
}

// Listen first (port 0 lets the kernel pick a free port), then make the provider, whose
// issuer contains the port.
let handler;
const serve = (req, res) => handler(req, res);
const tls = opts['tls-cert']
  ? { cert: readFileSync(opts['tls-cert']), key: readFileSync(opts['tls-key']) } : null;
const server = tls ? createTlsServer(tls, serve) : createServer(serve);
server.listen(Number(opts.port), opts.host, () => {
  const { port } = server.address();
  const scheme = tls ? 'https' : 'http';
  const issuer = opts.issuer ?? `${scheme}://127.0.0.1:${port}${opts['issuer-path']}`;
  const provider = new Provider(issuer, configuration());
  // Behind a TLS-terminating proxy (the edge), trust its X-Forwarded-* headers; on plain http
  // on 127.0.0.1 the cookies are then simply not marked Secure, which is what we want.
  provider.proxy = true;
  logEvents(provider);
  const providerCallback = provider.callback();

  handler = async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    try {
      if (parts[0] === 'interaction' && parts.length === 2 && req.method === 'GET') {
        await interaction(provider, req, res, parts[1]);
      } else if (parts[0] === 'interaction' && parts[2] === 'login' && req.method === 'POST') {
        await login(provider, req, res, parts[1]);
      } else if (parts[0] === 'test' && parts[1] === 'accounts' && parts.length <= 3) {
        await admin(req, res, parts[2]);
      } else {
        providerCallback(req, res);
      }
    } catch (err) {
      // e.g. an expired or foreign interaction (SessionNotFound): say so, plainly.
      log(`error ${req.method} ${url.pathname}: ${err.name}: ${err.message}`);
      if (!res.headersSent) {
        send(res, err.statusCode ?? 500, 'text/html; charset=utf-8',
          page('Error', `<h1>Error</h1><pre id="error">${escape(`${err.name}: ${err.message}`)}</pre>`));
      }
    }
  };
  log(`listening ${JSON.stringify({ issuer, port })}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
