// A PKCS#10 certificate signing request made in the browser: an RSA 2048 key from WebCrypto (it never leaves the
// page but in the file the user downloads) and the few DER structures a CSR is (RFC 2986), signed with SHA-256,
// as python-magnumclient's `cluster config` makes with the cryptography package.

function len(n: number): number[] {
  if (n < 0x80) return [n];
  const bytes: number[] = [];
  while (n > 0) {
    bytes.unshift(n & 0xff);
    n >>= 8;
  }
  return [0x80 | bytes.length, ...bytes];
}

function tlv(tag: number, content: Uint8Array | number[]): Uint8Array {
  const body = content instanceof Uint8Array ? content : new Uint8Array(content);
  const head = [tag, ...len(body.length)];
  const out = new Uint8Array(head.length + body.length);
  out.set(head, 0);
  out.set(body, head.length);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const seq = (...parts: Uint8Array[]) => tlv(0x30, concat(...parts));
const set = (...parts: Uint8Array[]) => tlv(0x31, concat(...parts));

function oid(dotted: string): Uint8Array {
  const arcs = dotted.split(".").map(Number);
  const bytes = [40 * arcs[0] + arcs[1]];
  for (const arc of arcs.slice(2)) {
    const enc = [arc & 0x7f];
    let rest = arc >>> 7;
    while (rest > 0) {
      enc.unshift((rest & 0x7f) | 0x80);
      rest >>>= 7;
    }
    bytes.push(...enc);
  }
  return tlv(0x06, bytes);
}

const utf8 = (text: string) => tlv(0x0c, new TextEncoder().encode(text));

export function name(parts: [string, string][]): Uint8Array {
  const OIDS: Record<string, string> = { CN: "2.5.4.3", O: "2.5.4.10" };
  return seq(...parts.map(([k, v]) => set(seq(oid(OIDS[k]), utf8(v)))));
}

export function pem(label: string, der: Uint8Array): string {
  let bin = "";
  for (const b of der) bin += String.fromCharCode(b);
  const b64 = btoa(bin).replace(/(.{64})/g, "$1\n").replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

export interface KeyAndCsr {
  keyPem: string;
  csrPem: string;
}

export async function makeCsr(subject: [string, string][]): Promise<KeyAndCsr> {
  const alg = { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" };
  const keys = (await crypto.subtle.generateKey(alg, true, ["sign", "verify"])) as CryptoKeyPair;
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", keys.publicKey));
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  const info = seq(tlv(0x02, [0]), name(subject), spki, tlv(0xa0, []));
  const signature = new Uint8Array(await crypto.subtle.sign("RSASSA-PKCS1-v1_5", keys.privateKey, info as Uint8Array<ArrayBuffer>));
  const sha256WithRSA = seq(oid("1.2.840.113549.1.1.11"), tlv(0x05, []));
  const csr = seq(info, sha256WithRSA, tlv(0x03, concat(new Uint8Array([0]), signature)));
  return { keyPem: pem("PRIVATE KEY", pkcs8), csrPem: pem("CERTIFICATE REQUEST", csr) };
}
