// The one way the console talks to Cove: the public Magnum v1 API with the user's token, nothing else.
import * as session from "./session";

export const MICROVERSION = "container-infra latest";

export class ApiError extends Error {
  constructor(public status: number, public detail: string) {
    super(detail);
  }
}

type Expired = (message: string) => void;
let onExpired: Expired = () => {};
export function whenExpired(handler: Expired): void {
  onExpired = handler;
}

export const EXPIRED_MESSAGE = "Your session has expired or was revoked. Log in again to continue.";

export function authHeaders(): Record<string, string> {
  const current = session.load();
  const headers: Record<string, string> = { "OpenStack-API-Version": MICROVERSION, Accept: "application/json" };
  if (current) headers["X-Auth-Token"] = current.token;
  return headers;
}

// Magnum's error body: {"errors": [{"detail": ...}]}; Keystone's: {"error": {"message": ...}}.
export function detailOf(body: any, fallback: string): string {
  return body?.errors?.[0]?.detail ?? body?.error?.message ?? fallback;
}

export async function api<T = any>(method: string, path: string, body?: unknown): Promise<T> {
  if (!session.load()) {
    onExpired(EXPIRED_MESSAGE);
    throw new ApiError(401, EXPIRED_MESSAGE);
  }
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let parsed: any = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  if (resp.status === 401) {
    session.clear();
    onExpired(EXPIRED_MESSAGE);
    throw new ApiError(401, EXPIRED_MESSAGE);
  }
  if (!resp.ok) throw new ApiError(resp.status, detailOf(parsed, `${resp.status} ${resp.statusText}`));
  return parsed as T;
}

// A GET whose absence (404: an older API without the extension) is an answer, not an error.
export async function optional<T = any>(path: string): Promise<T | null> {
  try {
    return await api<T>("GET", path);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return null;
    throw err;
  }
}

export async function login(request: unknown): Promise<session.Session> {
  const resp = await fetch("/console/auth/tokens", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(request),
  });
  const body = await resp.json().catch(() => null);
  const token = resp.headers.get("X-Subject-Token");
  if (resp.status !== 201 || !token) {
    const detail = detailOf(body, `Keystone answered ${resp.status}`);
    throw new ApiError(resp.status, resp.status === 401 ? `Keystone refused the login: ${detail}` : detail);
  }
  return session.fromKeystone(token, body);
}

export interface Config {
  keystone_url: string;
  user_domain: string;
}

export async function config(): Promise<Config> {
  const resp = await fetch("/console/config.json");
  return (await resp.json()) as Config;
}
