// Every call the console makes goes through the admin REST API with the admin token as
// `Authorization: Bearer`. The token lives in sessionStorage (this tab only) and never
// in a URL.

const TOKEN_KEY = 'relay.console.adminToken';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** A refusal of the relay: its HTTP status and the JSON error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls `method path` with the admin token; resolves to the parsed JSON body. */
export async function call(method, path, body, bearer = token()) {
  const headers = { Accept: 'application/json' };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(resp.status, err.code || `http_${resp.status}`, err.message || resp.statusText);
  }
  return data;
}

export const api = {
  stats: () => call('GET', '/v1/admin/stats'),
  keys: () => call('GET', '/v1/admin/keys'),
  createKey: (req) => call('POST', '/v1/admin/keys', req),
  revokeKey: (name) => call('DELETE', `/v1/admin/keys/${encodeURIComponent(name)}`),
  rooms: () => call('GET', '/v1/admin/rooms'),
  closeRoom: (id) => call('DELETE', `/v1/admin/rooms/${encodeURIComponent(id)}`),
  usage: () => call('GET', '/v1/admin/usage'),
  groups: () => call('GET', '/v1/groups'),
  relays: () => call('GET', '/v1/relays'),
};
