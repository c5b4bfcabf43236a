// The logged-in user: Keystone's token and what its body says (user, project, roles), kept for the tab only.
export interface Session {
  token: string;
  expiresAt: string;
  user: string;
  userId: string;
  project: string;
  projectId: string;
  roles: string[];
}

const KEY = "cove.session";

export function load(): Session | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    if (!raw) return null;
    const found = JSON.parse(raw) as Session;
    return new Date(found.expiresAt).getTime() > Date.now() ? found : null;
  } catch {
    return null;
  }
}

export function save(session: Session): void {
  sessionStorage.setItem(KEY, JSON.stringify(session));
}

export function clear(): void {
  sessionStorage.removeItem(KEY);
}

export function isAdmin(session: Session | null): boolean {
  return !!session && session.roles.includes("admin");
}

// Keystone's default implied roles: admin => member => reader. Writes need member (or admin).
export function canWrite(session: Session | null): boolean {
  return !!session && (session.roles.includes("admin") || session.roles.includes("member"));
}

export function fromKeystone(token: string, body: any): Session {
  const t = body.token;
  return {
    token,
    expiresAt: t.expires_at,
    user: t.user?.name ?? t.user?.id ?? "",
    userId: t.user?.id ?? "",
    project: t.project?.name ?? "",
    projectId: t.project?.id ?? "",
    roles: (t.roles ?? []).map((r: { name: string }) => r.name),
  };
}
