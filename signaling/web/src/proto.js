// ScanBeam wire protocol v1 for the browser (docs/protocol.md). Pure: no DOM, no network.
// Mirrors peer/proto/{keys,records,handshake,manifest,receiver,drop}.py byte for byte; the
// golden vectors in tests/vectors/*.json are checked by tests/browser/test_vectors_js.py.
import sodium from 'libsodium-wrappers-sumo';
import { decompress } from 'fzstd';

export const ready = sodium.ready;
export { sodium };

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------- errors

/** A failure with a wire/user code (docs/protocol.md §6) and a plain-words message. */
export class BeamError extends Error {
  constructor(code, detail, userMessage) {
    super(detail);
    this.code = code;
    this.userMessage = userMessage || MESSAGES[code] || 'Something went wrong.';
  }
}

export const MESSAGES = {
  integrity: 'A piece of the transfer failed its integrity check; nothing was saved as complete.',
  protocol: 'The sender broke the ScanBeam protocol; the transfer was stopped.',
  version: 'The sender speaks a ScanBeam version this page does not know.',
  'unsafe-manifest': 'Refused the offer: it contains unsafe file names.',
  'wrong-code': 'This link does not match the sender (wrong or damaged link).',
  'unknown-code': 'This link was already used, or it expired. Ask the sender for a new one.',
  'peer-gone': 'The sender left before the transfer finished.',
  declined: 'The transfer was declined.',
  cancelled: 'The transfer was cancelled.',
  internal: 'An internal error stopped the transfer.',
  'disk-full': 'There is no space left to save the files.',
  'local-file': 'The browser could not write the files.',
  connection: 'The connection to the sender failed.',
  'no-path': 'No direct connection to the sender could be opened.',
  timeout: 'The sender stopped answering.',
  unreachable: 'The ScanBeam server cannot be reached.',
  pairing: 'Pairing with the sender failed.',
  remote: 'The sender stopped the transfer.',
};

// codes the peer understands (docs/protocol.md §6); page-only codes map onto them
const WIRE_CODES = new Set(['internal', 'pairing', 'wrong-code', 'unknown-code', 'connection', 'unreachable',
  'peer-gone', 'no-path', 'timeout', 'integrity', 'declined', 'cancelled', 'local-file', 'source', 'exists',
  'disk-full', 'protocol', 'unsafe-manifest', 'version']);
const PAGE_CODES = { 'no-save': 'local-file', 'wrong-key': 'integrity' };

export function wireCode(code) {
  return WIRE_CODES.has(code) ? code : PAGE_CODES[code] || 'internal';
}

// ---------------------------------------------------------------- bytes

export const hex = (b) => sodium.to_hex(b);
export const unhex = (s) => sodium.from_hex(s);
export const b64 = (b) => sodium.to_base64(b, sodium.base64_variants.ORIGINAL);
export const unb64 = (s) => {
  if (typeof s !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4) {
    throw new BeamError('protocol', 'not base64');
  }
  return sodium.from_base64(s, sodium.base64_variants.ORIGINAL);
};
export const b64url = (b) => sodium.to_base64(b, sodium.base64_variants.URLSAFE_NO_PADDING);
export function unb64url(s) {
  if (typeof s !== 'string' || !/^[A-Za-z0-9_-]*$/.test(s)) return null;
  try {
    return sodium.from_base64(s, sodium.base64_variants.URLSAFE_NO_PADDING);
  } catch {
    return null;
  }
}

export function concat(...parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function u64be(n) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n));
  return out;
}

// ---------------------------------------------------------------- keys (§2, §9.1)

/** BLAKE2b keyed by ``secret`` over the ASCII ``purpose`` (crypto_generichash). */
export function kdf(secret, purpose, size = 32) {
  if (secret.length < 16) throw new Error('secret too short');
  return sodium.crypto_generichash(size, enc.encode(purpose), secret);
}

export function sessionKeys(session) {
  return {
    transferId: kdf(session, 'scanbeam v1 transfer id', 16),
    dataS2r: kdf(session, 'scanbeam v1 data s2r'),
    ctrlS2r: kdf(session, 'scanbeam v1 ctrl s2r'),
    ctrlR2s: kdf(session, 'scanbeam v1 ctrl r2s'),
  };
}

export function pairingKeys(master) {
  return {
    master,
    envS2r: kdf(master, 'scanbeam v1 envelope s2r'),
    envR2s: kdf(master, 'scanbeam v1 envelope r2s'),
    session: sessionKeys(kdf(master, 'scanbeam v1 session')),
    verifier: hex(kdf(master, 'scanbeam v1 verifier', 4)),
  };
}

export const linkMaster = (secret) => kdf(secret, 'scanbeam v1 link');

export const DEFAULT_OPS = 3;
export const DEFAULT_MEM = 64 * 1024 * 1024;
export const MAX_OPS = 16;
export const MAX_MEM = 1024 * 1024 * 1024;

/** Argon2id of a drop password (peer/proto/keys.py password_key). */
export function passwordKey(password, salt, ops, mem) {
  if (salt.length !== 16) throw new BeamError('protocol', 'salt size');
  if (!(Number.isInteger(ops) && ops >= 1 && ops <= MAX_OPS)) {
    throw new BeamError('protocol', 'Argon2id opslimit out of range');
  }
  if (!(Number.isInteger(mem) && mem >= 8192 && mem <= MAX_MEM)) {
    throw new BeamError('protocol', 'Argon2id memlimit out of range');
  }
  const pw = enc.encode(password.normalize('NFC'));
  return sodium.crypto_pwhash(32, pw, salt, ops, mem, sodium.crypto_pwhash_ALG_ARGON2ID13);
}

export function relayKeys(linkSecret, pwKey) {
  if (linkSecret.length !== 32) throw new Error('link secret must be 32 bytes');
  let master = kdf(linkSecret, 'scanbeam v1 relay master');
  if (pwKey) master = kdf(master, 'scanbeam v1 relay password ' + hex(pwKey));
  const session = kdf(master, 'scanbeam v1 relay session');
  const auth = kdf(master, 'scanbeam v1 relay auth');
  return {
    master,
    auth,
    verifier: hex(sodium.crypto_hash_sha256(auth)),
    transferId: kdf(session, 'scanbeam v1 transfer id', 16),
    data: kdf(session, 'scanbeam v1 relay data'),
    manifest: kdf(session, 'scanbeam v1 relay manifest'),
    fileEnd: kdf(session, 'scanbeam v1 relay file end'),
    index: kdf(session, 'scanbeam v1 relay index'),
  };
}

// ---------------------------------------------------------------- records (§5)

export const T = {
  MANIFEST: 1, CHUNK: 2, FILE_END: 3, ACCEPT: 4, DECLINE: 5, CREDIT: 6, RECEIPT: 7,
  ERROR: 8, CLOSE: 9, INDEX: 10,
};
const TYPE_NAMES = Object.fromEntries(Object.entries(T).map(([k, v]) => [v, k]));
export const LAST = 1;
export const COMPRESSED = 2;
export const CONTROL_FILE = 0xffffffff;
export const HEADER_SIZE = 15;
export const OVERHEAD = HEADER_SIZE + 16;
export const MAX_RECORD = 256 * 1024;
const ZERO16 = new Uint8Array(16);

export function sealRecord(key, transferId, type, body, { index, fileIx = CONTROL_FILE, prefix = ZERO16, flags = 0 }) {
  const hdr = new Uint8Array(HEADER_SIZE);
  const dv = new DataView(hdr.buffer);
  hdr[0] = 1;
  hdr[1] = type;
  hdr[2] = flags;
  dv.setUint32(3, fileIx);
  dv.setBigUint64(7, BigInt(index));
  const ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
    body, concat(hdr, transferId), null, concat(prefix, u64be(index)), key);
  return concat(hdr, ct);
}

export function parseHeader(data) {
  if (data.length < OVERHEAD) throw new BeamError('protocol', `record too short (${data.length} bytes)`);
  if (data.length > MAX_RECORD) throw new BeamError('protocol', `record too long (${data.length} bytes)`);
  const dv = new DataView(data.buffer, data.byteOffset, HEADER_SIZE);
  if (data[0] !== 1) throw new BeamError('version', `record version ${data[0]}`);
  const type = data[1];
  if (!TYPE_NAMES[type]) throw new BeamError('protocol', `unknown record type ${type}`);
  const flags = data[2];
  if (flags & ~3) throw new BeamError('protocol', `unknown record flags ${flags}`);
  const index = dv.getBigUint64(7);
  return { type, flags, fileIx: dv.getUint32(3), index: Number(index), bigIndex: index };
}

export function openRecord(key, transferId, data, hdr, prefix = ZERO16) {
  try {
    return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
      null, data.subarray(HEADER_SIZE), concat(data.subarray(0, HEADER_SIZE), transferId),
      concat(prefix, u64be(hdr.bigIndex)), key);
  } catch {
    throw new BeamError('integrity',
      `record ${TYPE_NAMES[hdr.type]} file=${hdr.fileIx} index=${hdr.index} failed authentication`);
  }
}

// ---------------------------------------------------------------- zstd (bounded)

/** Content size declared by a zstd frame header, -1 if none, null if not a frame. */
export function zstdFrameInfo(dat) {
  if (dat.length < 6 || dat[0] !== 0x28 || dat[1] !== 0xb5 || dat[2] !== 0x2f || dat[3] !== 0xfd) return null;
  const flg = dat[4];
  const ss = (flg >> 5) & 1;
  const df = flg & 3;
  const fcf = flg >> 6;
  let pos = 5 + (ss ? 0 : 1) + (df === 3 ? 4 : df);
  const fsb = fcf ? 1 << fcf : ss;
  let window = 0;
  if (!ss) {
    const wb = 2 ** (10 + (dat[5] >> 3));
    window = wb + (wb / 8) * (dat[5] & 7);
  }
  if (!fsb) return { size: -1, window };
  if (dat.length < pos + fsb) return null;
  let size = 0;
  for (let i = fsb - 1; i >= 0; i--) size = size * 256 + dat[pos + i];
  if (fsb === 2) size += 256;
  return { size, window };
}

/** Decompress one zstd frame whose output must be at most ``limit`` (exactly ``exact``). */
export function inflate(body, { limit, exact = null, code = 'protocol', what = 'data' }) {
  const info = zstdFrameInfo(body);
  if (!info) throw new BeamError(code, `${what} is not a zstd frame`);
  if (info.size > limit || (exact !== null && info.size !== -1 && info.size !== exact)) {
    throw new BeamError(code, `${what} declares ${info.size} bytes`);
  }
  if (info.size === -1 && info.window > Math.max(limit, 8 << 20)) {
    throw new BeamError(code, `${what} window too large`);
  }
  let out;
  try {
    out = decompress(body);
  } catch {
    throw new BeamError(code, `${what} does not decompress`);
  }
  if (out.length > limit || (exact !== null && out.length !== exact)) {
    throw new BeamError(code, `${what} has length ${out.length}`);
  }
  return out;
}

function unpackChunk(body, compressed, expected, code = 'integrity') {
  if (compressed) body = inflate(body, { limit: expected, exact: expected, code, what: 'chunk' });
  if (body.length !== expected) throw new BeamError(code, `chunk length ${body.length}, expected ${expected}`);
  return body;
}

function jsonBody(body, code = 'protocol') {
  let doc;
  try {
    doc = JSON.parse(dec.decode(body));
  } catch {
    throw new BeamError(code, 'control record is not JSON');
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw new BeamError(code, 'control record is not an object');
  return doc;
}

// ---------------------------------------------------------------- manifest (§5.1)

export const MIN_CHUNK = 1024;
export const MAX_CHUNK = 4 * 1024 * 1024;
export const MAX_FILE_SIZE = 2 ** 44;
const BAD_CHARS = /[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ufff9-\ufffb]/;
const BAD_CHARS_G = new RegExp(BAD_CHARS.source, 'g');
const RESERVED = /[\\:*?"<>|]/;
const DEVICES = new Set(['CON', 'PRN', 'AUX', 'NUL', 'CONIN$', 'CONOUT$', 'COM¹', 'COM²', 'COM³', 'LPT¹', 'LPT²', 'LPT³']);
for (let i = 0; i < 10; i++) DEVICES.add(`COM${i}`).add(`LPT${i}`);

export function cleanText(value, limit = 200) {
  let text = typeof value === 'string' ? value : String(value);
  text = text.replace(BAD_CHARS_G, '');
  return [...text].length <= limit ? text : [...text].slice(0, limit - 1).join('') + '…';
}

function unsafe(why) {
  return new BeamError('unsafe-manifest', why, `Refused the offer: ${why}.`);
}

const wellFormed = (s) => !/[\ud800-\udbff](?![\udc00-\udfff])|(?:[^\ud800-\udbff]|^)[\udc00-\udfff]/.test(s);

/** Same rules as peer/proto/manifest.py check_path. */
export function checkPath(path) {
  if (typeof path !== 'string' || !path) throw unsafe('a file name is empty or not text');
  const shown = JSON.stringify(cleanText(path, 80));
  if (!wellFormed(path)) throw unsafe(`the name ${shown} is not valid Unicode`);
  if (path.normalize('NFC') !== path) throw unsafe(`the name ${shown} is not in normalised Unicode form`);
  if (enc.encode(path).length > 1024) throw unsafe(`the name ${shown} is too long`);
  if (BAD_CHARS.test(path)) throw unsafe(`the name ${shown} contains control or invisible characters`);
  if (RESERVED.test(path)) throw unsafe(`the name ${shown} contains a reserved character such as \\ or :`);
  if (path.startsWith('/')) throw unsafe(`the name ${shown} is an absolute path`);
  const parts = path.split('/');
  if (parts.length > 32) throw unsafe(`the name ${shown} is nested too deeply`);
  for (const part of parts) {
    if (part === '' || part === '.' || part === '..') throw unsafe(`the name ${shown} contains an empty, '.' or '..' part`);
    if ('. '.includes(part[part.length - 1])) throw unsafe(`the name ${shown} has a part ending in a dot or space`);
    if (enc.encode(part).length > 255) throw unsafe(`the name ${shown} has a part that is too long`);
    if (DEVICES.has(part.split('.')[0].replace(/ +$/, '').toUpperCase())) throw unsafe(`the name ${shown} is a reserved device name`);
  }
  return path;
}

function cleanSummary(value, depth = 0) {
  if (depth > 6) return null;
  if (value === null || typeof value === 'boolean' || typeof value === 'number') return value;
  if (typeof value === 'string') return cleanText(value);
  if (Array.isArray(value)) return value.slice(0, 1000).map((v) => cleanSummary(v, depth + 1));
  const out = {};
  for (const [k, v] of Object.entries(value).slice(0, 100)) out[cleanText(k, 64)] = cleanSummary(v, depth + 1);
  return out;
}

const PNG_SIG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Series previews (INTERFACES.md 1): bad entries are dropped, never fatal. */
export function cleanPreviews(raw) {
  if (!Array.isArray(raw)) return [];
  const out = [];
  for (const p of raw.slice(0, 64)) {
    try {
      if (!p || p.mime !== 'image/png' || typeof p.data !== 'string' || typeof p.series !== 'string') continue;
      if (!Number.isInteger(p.w) || !Number.isInteger(p.h) || p.w < 1 || p.h < 1 || p.w > 256 || p.h > 256) continue;
      const bytes = unb64(p.data);
      if (bytes.length > 65536 || !PNG_SIG.every((b, i) => bytes[i] === b)) continue;
      out.push({ series: cleanText(p.series, 80), data: p.data, w: p.w, h: p.h });
    } catch {
      // display only
    }
  }
  return out;
}

function isInt(n) {
  return typeof n === 'number' && Number.isSafeInteger(n);
}

/** Parse and check a manifest (peer/proto/manifest.py decode_manifest). */
export function decodeManifest(data, { maxFiles = 200000, maxJson = 64 * 1024 * 1024 } = {}) {
  const info = zstdFrameInfo(data);
  if (!info) throw new BeamError('protocol', 'manifest is not a zstd frame');
  if (info.size > maxJson) throw new BeamError('unsafe-manifest', 'manifest too large', 'Refused the offer: its file list is too large.');
  const raw = inflate(data, { limit: maxJson, what: 'manifest' });
  let doc;
  try {
    doc = JSON.parse(dec.decode(raw));
  } catch {
    throw new BeamError('protocol', 'manifest is not JSON');
  }
  if (!doc || typeof doc !== 'object' || doc.v !== 1) throw new BeamError('protocol', 'manifest has no version 1');
  const cs = doc.chunk_size;
  if (!isInt(cs) || cs < MIN_CHUNK || cs > MAX_CHUNK) throw new BeamError('protocol', 'manifest chunk size out of range');
  if (!Array.isArray(doc.files)) throw new BeamError('protocol', 'manifest has no file list');
  if (doc.files.length > maxFiles) {
    throw new BeamError('unsafe-manifest', 'too many files',
      `Refused the offer: ${doc.files.length} files is more than the limit of ${maxFiles}.`);
  }
  const files = doc.files.map((item) => {
    if (!Array.isArray(item) || item.length !== 4) throw new BeamError('protocol', 'manifest file entry malformed');
    const [path, size, mtimeNs, prefix] = item;
    checkPath(path);
    if (!isInt(size) || typeof mtimeNs !== 'number') throw new BeamError('protocol', 'manifest number malformed');
    if (size < 0 || size > MAX_FILE_SIZE) throw new BeamError('unsafe-manifest', 'size', 'Refused the offer: a file size is impossible.');
    if (typeof prefix !== 'string' || !/^[0-9a-fA-F]{32}$/.test(prefix)) throw new BeamError('protocol', 'manifest nonce prefix malformed');
    return { path, size, mtimeNs, mtimeMs: Math.floor(mtimeNs / 1e6), prefix: unhex(prefix.toLowerCase()) };
  });
  checkCollisions(files.map((f) => f.path));
  const summary = doc.summary && typeof doc.summary === 'object' && !Array.isArray(doc.summary) ? cleanSummary(doc.summary) : {};
  return {
    files,
    chunkSize: cs,
    summary,
    previews: cleanPreviews(doc.previews),
    totalBytes: files.reduce((a, f) => a + f.size, 0),
  };
}

const fold = (s) => s.toUpperCase().toLowerCase();

function checkCollisions(paths) {
  const files = new Set();
  const dirs = new Set();
  for (const p of paths) {
    const key = fold(p);
    if (files.has(key) || dirs.has(key)) throw unsafe(`the name ${JSON.stringify(cleanText(p, 80))} appears twice (ignoring case)`);
    files.add(key);
    const parts = key.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  }
  for (const f of files) {
    if (dirs.has(f)) throw unsafe(`the name ${JSON.stringify(cleanText(f, 80))} is both a file and a folder`);
  }
}

export const nChunks = (file, cs) => Math.max(1, Math.ceil(file.size / cs));
export const chunkLength = (m, fileIx, chunkIx) => Math.max(0, Math.min(m.chunkSize, m.files[fileIx].size - chunkIx * m.chunkSize));

// ---------------------------------------------------------------- SHA-256 (streaming)

export class Sha256 {
  constructor() {
    this.state = sodium.crypto_hash_sha256_init();
  }
  update(data) {
    sodium.crypto_hash_sha256_update(this.state, data);
  }
  hexdigest() {
    return hex(sodium.crypto_hash_sha256_final(this.state));
  }
}

// ---------------------------------------------------------------- link-mode pairing (§4)

/** The receiver's half of link-mode pairing plus sealed envelopes (peer/proto/handshake.py).
 * With ``master`` (a reconnection round's master, §10.3) it pairs in mode ``rejoin``: no
 * {"t":"link"} body, and both sides send their hello at once. */
export class LinkHandshake {
  constructor(linkSecret, { master = null } = {}) {
    this.keys = pairingKeys(master || linkMaster(linkSecret));
    this.mode = master ? 'rejoin' : 'link';
    this.sendSeq = 0;
    this.recvSeq = 0;
    this.paired = false;
    this.version = 0;
  }

  /** Bodies to send first: {"t":"link"} (link mode only) then our hello. */
  start() {
    const hello = this.seal({ type: 'hello', versions: VERSIONS, role: 'r' });
    return this.mode === 'rejoin' ? [hello] : [JSON.stringify({ t: 'link' }), hello];
  }

  static ad(direction, seq) {
    return concat(enc.encode('scanbeam v1 env' + direction), u64be(seq));
  }

  seal(message) {
    const nonce = sodium.randombytes_buf(24);
    const ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
      enc.encode(JSON.stringify(message)), LinkHandshake.ad('r', this.sendSeq), null, nonce, this.keys.envR2s);
    const body = JSON.stringify({ t: 'env', s: this.sendSeq, c: b64(concat(nonce, ct)) });
    this.sendSeq += 1;
    return body;
  }

  /** Feed a body from the sender; returns an envelope message, or null (hello, pake). */
  receive(body) {
    if (body.length > 48 * 1024) throw new BeamError('protocol', 'signaling body too large');
    let msg;
    try {
      msg = JSON.parse(body);
    } catch {
      throw new BeamError('protocol', 'signaling body is not JSON');
    }
    if (!msg || typeof msg !== 'object') throw new BeamError('protocol', 'signaling body is not an object');
    if (msg.t === 'pake') return null; // a link receiver ignores the sender's PAKE
    if (msg.t !== 'env') throw new BeamError('protocol', 'unknown signaling body type');
    if (msg.s !== this.recvSeq) throw new BeamError('protocol', 'envelope out of sequence');
    const blob = unb64(msg.c);
    let plain;
    try {
      if (blob.length < 40) throw new Error('short');
      plain = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        null, blob.subarray(24), LinkHandshake.ad('s', this.recvSeq), blob.subarray(0, 24), this.keys.envS2r);
    } catch {
      if (!this.paired) throw new BeamError('wrong-code', 'key confirmation failed');
      throw new BeamError('integrity', 'envelope failed authentication');
    }
    this.recvSeq += 1;
    const message = jsonBody(plain);
    if (!this.paired) {
      if (message.type !== 'hello' || !Array.isArray(message.versions)) throw new BeamError('protocol', 'first envelope is not hello');
      const common = VERSIONS.filter((v) => message.versions.includes(v));
      if (!common.length) throw new BeamError('version', 'no common protocol version');
      this.paired = true;
      this.version = Math.max(...common);
      return null;
    }
    return message;
  }
}

/** Protocol versions the page speaks: v1, and v2 with exactly one lane, the data channel. */
export const VERSIONS = [1, 2];

// ---------------------------------------------------------------- protocol v2 (§10)

/** The signaling rendezvous id (32 hex) of reconnection round ``n`` ≥ 1 (§10.3). */
export function rendezvousId(master0, n) {
  if (!(n >= 1)) throw new Error('rounds count from 1');
  return hex(kdf(master0, `scanbeam v2 rendezvous ${n}`, 16));
}

/** The master of reconnection round ``n`` ≥ 1: every key of the round derives from it. */
export function roundMaster(master0, n) {
  if (!(n >= 1)) throw new Error('rounds count from 1');
  return kdf(master0, `scanbeam v2 round ${n}`);
}

/**
 * Lane markers on the page's only lane, the data channel (§10.4): START(0) comes first,
 * records follow; the sender has no other lane to move to, but END(g) then START(g+1) on
 * the same lane is still in order. strip(message) returns the record, or null for a marker;
 * a record before START, a marker out of order or a malformed marker is a protocol error.
 */
export class LaneMarkers {
  constructor() {
    this.gen = 0;
    this.open = false;
  }

  strip(data) {
    if (!data.length || data[0] !== 0) {
      if (!this.open) throw new BeamError('protocol', 'record before the lane START marker');
      return data;
    }
    if (data.length !== 6 || (data[1] !== 1 && data[1] !== 2)) throw new BeamError('protocol', 'malformed lane marker');
    const gen = ((data[2] << 24) >>> 0) + (data[3] << 16) + (data[4] << 8) + data[5];
    if (data[1] === 1 && !this.open && gen === this.gen) {
      this.open = true;
    } else if (data[1] === 2 && this.open && gen === this.gen) {
      this.open = false;
      this.gen += 1;
    } else {
      throw new BeamError('protocol', `lane marker out of order (${data[1] === 1 ? 'START' : 'END'} ${gen})`);
    }
    return null;
  }
}

/** Parse the fragment of a QR link: "<nameplate>.<b64url secret>". */
export function parseLinkFragment(frag) {
  const m = /^#?(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(frag || '');
  if (!m) return null;
  const secret = unb64url(m[2]);
  if (!secret || secret.length !== 32) return null;
  return { nameplate: m[1], secret };
}

// ---------------------------------------------------------------- receiver machine (§5.2)

/**
 * Receiving side of one direct transfer (peer/proto/receiver.py). Feed every channel
 * message to receive(); handle events(); call release(n) once n chunks were handed to
 * storage; finish() after everything is saved. Outgoing records: out().
 */
export class Receiver {
  constructor(keys, { window = 64, maxFiles = 200000 } = {}) {
    this.state = 'wait-manifest';
    this.keys = keys;
    this.window = window;
    this.maxFiles = maxFiles;
    this.manifest = null;
    this.error = null;
    this._parts = [];
    this._partsLen = 0;
    this._seq = 0;
    this._peerSeq = 0;
    this._file = 0;
    this._chunk = 0;
    this._received = 0;
    this._released = 0;
    this._granted = 0;
    this._receiptSent = false;
    this.digests = [];
    this._out = [];
    this._events = [];
  }

  out() {
    const o = this._out;
    this._out = [];
    return o;
  }

  events() {
    const e = this._events;
    this._events = [];
    return e;
  }

  receive(data) {
    if (['failed', 'done', 'declined'].includes(this.state)) return;
    try {
      this._dispatch(data);
    } catch (exc) {
      if (!(exc instanceof BeamError)) throw exc;
      this._fail(exc);
    }
  }

  accept(resume = null, hashes = null) {
    this._require('offered');
    const files = this.manifest.files;
    const cs = this.manifest.chunkSize;
    resume = resume || files.map(() => 0);
    if (resume.length !== files.length || resume.some((k, i) => k < 0 || k > nChunks(files[i], cs))) {
      throw new Error('resume points do not match the manifest');
    }
    this._resume = resume;
    this._hashes = hashes || files.map(() => new Sha256());
    this._granted = this.window;
    this._control(T.ACCEPT, enc.encode(JSON.stringify({ resume, credit: this._granted })));
    this.state = 'receiving';
    this._file = 0;
    if (files.length) this._startFile();
    else this._allDone();
  }

  decline() {
    this._require('offered');
    this._control(T.DECLINE, new Uint8Array(0));
    this.state = 'declined';
  }

  release(n) {
    if (this.state !== 'receiving') return;
    this._released += n;
    if (this._released > this._received) throw new Error('released more chunks than received');
    const target = this._released + this.window;
    if (target - this._granted >= Math.max(1, Math.floor(this.window / 4))) {
      this._granted = target;
      this._control(T.CREDIT, u64be(target));
    }
  }

  finish() {
    this._require('verified');
    const receipt = { files: this.digests.map((d) => ({ sha256: d })), bytes: this.manifest.totalBytes };
    this._control(T.RECEIPT, enc.encode(JSON.stringify(receipt)));
    this._receiptSent = true;
  }

  fail(error) {
    if (['failed', 'done', 'declined'].includes(this.state)) return;
    this._fail(error);
  }

  _dispatch(data) {
    const hdr = parseHeader(data);
    if (hdr.type === T.CHUNK) {
      this._onChunk(data, hdr);
      return;
    }
    if ([T.ACCEPT, T.DECLINE, T.CREDIT, T.RECEIPT, T.INDEX].includes(hdr.type)) {
      throw new BeamError('protocol', `sender sent a ${TYPE_NAMES[hdr.type]} record`);
    }
    if (hdr.index !== this._peerSeq) throw new BeamError('integrity', `control record out of sequence (${hdr.index})`);
    const body = openRecord(this.keys.ctrlS2r, this.keys.transferId, data, hdr);
    this._peerSeq += 1;
    if (hdr.type === T.ERROR) {
      let code = null;
      try {
        code = jsonBody(body).code;
      } catch {
        // unknown
      }
      const reason = typeof code === 'string' && MESSAGES[code] ? MESSAGES[code].replace(/\.$/, '') : null;
      this._fail(new BeamError('remote', `peer error ${code}`,
        reason ? `The sender stopped: ${reason}.` : 'The sender stopped the transfer.'), false);
      this.remoteCode = typeof code === 'string' ? code : null;
    } else if (hdr.type === T.MANIFEST) {
      this._onManifestPart(body, hdr.flags);
    } else if (hdr.type === T.FILE_END) {
      this._onFileEnd(body, hdr.fileIx);
    } else {
      if (!this._receiptSent) throw new BeamError('protocol', 'close before the receipt');
      this.state = 'done';
      this._events.push({ type: 'closed' });
    }
  }

  _onManifestPart(body, flags) {
    if (this.state !== 'wait-manifest') throw new BeamError('protocol', 'manifest sent twice');
    this._partsLen += body.length;
    if (this._partsLen > 32 * 1024 * 1024) throw new BeamError('protocol', 'manifest too large');
    this._parts.push(body);
    if (flags & LAST) {
      const blob = concat(...this._parts);
      this._parts = [];
      this.manifest = decodeManifest(blob, { maxFiles: this.maxFiles });
      this.state = 'offered';
      this._events.push({ type: 'offered', manifest: this.manifest });
    }
  }

  _startFile() {
    this._chunk = this._resume[this._file];
    this._hash = this._hashes[this._file];
  }

  _onChunk(data, hdr) {
    if (this.state !== 'receiving') throw new BeamError('protocol', `chunk while ${this.state}`);
    const m = this.manifest;
    if (hdr.fileIx === CONTROL_FILE || hdr.fileIx !== this._file || hdr.index !== this._chunk) {
      throw new BeamError('integrity', `unexpected chunk ${hdr.fileIx}/${hdr.index}, expected ${this._file}/${this._chunk}`);
    }
    const entry = m.files[this._file];
    const n = nChunks(entry, m.chunkSize);
    if (this._chunk >= n) throw new BeamError('integrity', 'chunk beyond the end of the file');
    if (this._received >= this._granted) throw new BeamError('protocol', 'sender exceeded its credit');
    let body = openRecord(this.keys.dataS2r, this.keys.transferId, data, hdr, entry.prefix);
    const last = this._chunk === n - 1;
    if (Boolean(hdr.flags & LAST) !== last) throw new BeamError('integrity', 'last-chunk flag wrong (truncated or extended file)');
    body = unpackChunk(body, Boolean(hdr.flags & COMPRESSED), chunkLength(m, this._file, this._chunk));
    this._hash.update(body);
    this._received += 1;
    this._events.push({ type: 'chunk', fileIx: this._file, chunkIx: this._chunk, data: body, last });
    this._chunk += 1;
  }

  _onFileEnd(body, fileIx) {
    if (this.state !== 'receiving') throw new BeamError('protocol', 'file end while not receiving');
    const m = this.manifest;
    const n = nChunks(m.files[this._file], m.chunkSize);
    if (fileIx !== this._file || this._chunk !== n) throw new BeamError('integrity', 'file ended early (truncated)');
    const claimed = jsonBody(body).sha256;
    const digest = this._hash.hexdigest();
    if (claimed !== digest) {
      throw new BeamError('integrity', `file ${fileIx} SHA-256 mismatch`,
        `The file ${m.files[fileIx].path} failed its SHA-256 check; it was not saved as complete.`);
    }
    this.digests.push(digest);
    this._events.push({ type: 'verified', fileIx, sha256: digest });
    this._file += 1;
    if (this._file === m.files.length) this._allDone();
    else this._startFile();
  }

  _allDone() {
    this.state = 'verified';
    this._events.push({ type: 'all-verified' });
  }

  _control(type, body) {
    this._out.push(sealRecord(this.keys.ctrlR2s, this.keys.transferId, type, body, { index: this._seq }));
    this._seq += 1;
  }

  _require(state) {
    if (this.state !== state) throw new Error(`receiver is ${this.state}, not ${state}`);
  }

  _fail(exc, notify = true) {
    if (notify) this._control(T.ERROR, enc.encode(JSON.stringify({ code: wireCode(exc.code) })));
    this.state = 'failed';
    this.error = exc;
    this._events.push({ type: 'failed', error: exc });
  }
}

// ---------------------------------------------------------------- relay drops (§9.3)

export const DROP_MAGIC = enc.encode('SBDROP1\n');
export const TRAILER_MAGIC = enc.encode('SBEND1\n\0');
export const TRAILER_SIZE = 20;
export const RELAY_CHUNK_SIZE = 1024 * 1024;
const MIN_FRAME = 4 + OVERHEAD;
const MAX_CHUNK_FRAME = MIN_FRAME + RELAY_CHUNK_SIZE;
const MAX_INDEX = 64 * 1024 * 1024;
const MAX_HEAD = 32 * 1024 * 1024 + (1 << 20);
export const WRONG_KEY_MESSAGE = 'Cannot open this drop: the link or the password is wrong (or the stored data is damaged).';
const DAMAGED = 'The drop is damaged or incomplete; nothing from it was saved as complete.';
const damaged = (detail) => new BeamError('integrity', detail, DAMAGED);

function compressBound(n) {
  return n + (n >> 8) + (n < 128 << 10 ? ((128 << 10) - n) >> 11 : 0);
}

/** Reads a drop blob piece by piece (peer/proto/drop.py DropReader). Methods throw BeamError. */
export class DropReader {
  constructor(keys, { maxFiles = 200000 } = {}) {
    this.keys = keys;
    this.maxFiles = maxFiles;
    this.manifest = null;
    this.index = null;
  }

  /** Returns [index_offset, index_length]. */
  parseTrailer(trailer, blobSize = null) {
    if (trailer.length !== TRAILER_SIZE) throw damaged(`trailer is ${trailer.length} bytes`);
    const dv = new DataView(trailer.buffer, trailer.byteOffset, TRAILER_SIZE);
    const offset = Number(dv.getBigUint64(0));
    const length = dv.getUint32(8);
    if (!TRAILER_MAGIC.every((b, i) => trailer[12 + i] === b)) throw damaged('no drop trailer');
    const maxIndexRaw = 4 + this.maxFiles * 16 + 4 * (MAX_INDEX / 4);
    if (length < MIN_FRAME || length > MIN_FRAME + compressBound(Math.min(MAX_INDEX, maxIndexRaw))) throw damaged(`index length ${length} out of range`);
    if (offset < DROP_MAGIC.length + MIN_FRAME) throw damaged(`index offset ${offset} out of range`);
    if (blobSize !== null && offset + length + TRAILER_SIZE !== blobSize) throw damaged('index does not end the blob');
    this.indexOffset = offset;
    this.indexLength = length;
    return [offset, length];
  }

  _recordAt(data, pos, frame) {
    if (pos + frame > data.length) throw damaged('record truncated');
    const length = new DataView(data.buffer, data.byteOffset + pos, 4).getUint32(0);
    if (length + 4 !== frame || length < OVERHEAD) throw damaged(`record at ${pos} has a bad length prefix ${length}`);
    return data.subarray(pos + 4, pos + frame);
  }

  _open(key, record, hdr, prefix = ZERO16) {
    try {
      return openRecord(key, this.keys.transferId, record, hdr, prefix);
    } catch (e) {
      throw damaged(e.message);
    }
  }

  static _expect(hdr, type, fileIx, index, flags) {
    if (hdr.type !== type || hdr.fileIx !== fileIx || hdr.index !== index || hdr.flags !== flags) {
      throw damaged(`expected ${TYPE_NAMES[type]} ${fileIx}/${index}, got ${TYPE_NAMES[hdr.type]} ${hdr.fileIx}/${hdr.index}`);
    }
  }

  readIndex(data) {
    if (data.length !== this.indexLength) throw damaged('index size');
    const record = this._recordAt(data, 0, data.length);
    const hdr = parseHeader(record.subarray(0, OVERHEAD));
    DropReader._expect(hdr, T.INDEX, CONTROL_FILE, 0, 0);
    let body;
    try {
      body = openRecord(this.keys.index, this.keys.transferId, record, hdr);
    } catch {
      throw new BeamError('wrong-key', 'index failed authentication', WRONG_KEY_MESSAGE);
    }
    const raw = inflate(body, { limit: MAX_INDEX, code: 'integrity', what: 'index' });
    this.index = this._parseIndex(raw);
  }

  _parseIndex(raw) {
    if (raw.length < 4) throw damaged('index truncated');
    const dv = new DataView(raw.buffer, raw.byteOffset, raw.length);
    const count = dv.getUint32(0);
    if (count > this.maxFiles) throw new BeamError('unsafe-manifest', 'files', `Refused the offer: ${count} files is more than the limit of ${this.maxFiles}.`);
    const offsets = [];
    const lengths = [];
    const ends = [];
    let pos = 4;
    let end = DROP_MAGIC.length + MIN_FRAME;
    for (let i = 0; i < count; i++) {
      if (pos + 12 > raw.length) throw damaged('index truncated');
      const offset = Number(dv.getBigUint64(pos));
      const n = dv.getUint32(pos + 8);
      pos += 12;
      if (n < 1 || pos + 4 * n + 4 > raw.length) throw damaged(`index entry of file ${i} malformed`);
      if ((i === 0 && offset < end) || (i > 0 && offset !== end)) throw damaged(`file ${i} starts at ${offset}`);
      const chunks = new Uint32Array(n);
      let sum = 0;
      for (let k = 0; k < n; k++) {
        const len = dv.getUint32(pos + 4 * k);
        if (len < MIN_FRAME || len > MAX_CHUNK_FRAME) throw damaged(`index has a chunk length out of range in file ${i}`);
        chunks[k] = len;
        sum += len;
      }
      pos += 4 * n;
      const endLen = dv.getUint32(pos);
      pos += 4;
      if (endLen < MIN_FRAME + 2 || endLen > MIN_FRAME + 1024) throw damaged(`index has a file end length out of range in file ${i}`);
      end = offset + sum + endLen;
      if (end > this.indexOffset) throw damaged(`file ${i} runs past the index`);
      offsets.push(offset);
      lengths.push(chunks);
      ends.push(endLen);
    }
    if (pos !== raw.length) throw damaged('index has trailing bytes');
    if (count && end !== this.indexOffset) throw damaged('the last file does not end at the index');
    offsets.push(this.indexOffset);
    if (offsets[0] - DROP_MAGIC.length > MAX_HEAD) throw damaged('manifest records too large');
    return { offsets, lengths, ends };
  }

  get manifestEnd() {
    return this.index.offsets[0];
  }

  /** data = blob bytes [0, manifestEnd). */
  readManifest(data) {
    const end = this.index.offsets[0];
    if (data.length !== end) throw damaged('manifest range size');
    if (!DROP_MAGIC.every((b, i) => data[i] === b)) throw damaged('not a ScanBeam drop (bad magic)');
    let pos = DROP_MAGIC.length;
    const parts = [];
    let flags = 0;
    while (!(flags & LAST)) {
      if (pos + 4 > data.length) throw damaged('manifest records truncated');
      const length = new DataView(data.buffer, data.byteOffset + pos, 4).getUint32(0);
      const record = this._recordAt(data, pos, 4 + length);
      pos += 4 + length;
      const hdr = parseHeader(record.subarray(0, OVERHEAD));
      flags = hdr.flags;
      DropReader._expect(hdr, T.MANIFEST, CONTROL_FILE, parts.length, flags & LAST);
      parts.push(this._open(this.keys.manifest, record, hdr));
    }
    if (pos !== data.length) throw damaged('bytes between the manifest and the first file');
    const m = decodeManifest(concat(...parts), { maxFiles: this.maxFiles });
    if (m.chunkSize !== RELAY_CHUNK_SIZE) throw damaged(`drop chunk size ${m.chunkSize}`);
    if (m.files.length !== this.index.ends.length) throw damaged('the manifest and the index list different numbers of files');
    m.files.forEach((f, i) => {
      const n = nChunks(f, m.chunkSize);
      if (this.index.lengths[i].length !== n) throw damaged(`file ${i} has ${n} chunks, the index lists ${this.index.lengths[i].length}`);
      if (this.index.lengths[i][n - 1] > MIN_FRAME + chunkLength(m, i, n - 1)) throw damaged(`the last chunk of file ${i} is too long`);
    });
    this.manifest = m;
    return m;
  }

  chunkOffset(fileIx, chunkIx) {
    let off = this.index.offsets[fileIx];
    const lens = this.index.lengths[fileIx];
    for (let k = 0; k < chunkIx; k++) off += lens[k];
    return off;
  }

  /** [start, end) of the blob bytes for file fileIx from chunk firstChunk on. */
  fileRange(fileIx, firstChunk) {
    return [this.chunkOffset(fileIx, firstChunk), this.index.offsets[fileIx + 1]];
  }

  startFile(fileIx, firstChunk, hasher) {
    this._file = fileIx;
    this._chunk = firstChunk;
    this._hash = hasher;
    this._buf = [];
    this._bufLen = 0;
    this.fileDone = false;
  }

  _frameLength() {
    const lens = this.index.lengths[this._file];
    return this._chunk < lens.length ? lens[this._chunk] : this.index.ends[this._file];
  }

  _take(n) {
    const out = new Uint8Array(n);
    let o = 0;
    while (o < n) {
      const head = this._buf[0];
      const k = Math.min(head.length, n - o);
      out.set(head.subarray(0, k), o);
      o += k;
      if (k === head.length) this._buf.shift();
      else this._buf[0] = head.subarray(k);
    }
    this._bufLen -= n;
    return out;
  }

  _peek4() {
    const b = new Uint8Array(4);
    let o = 0;
    for (const part of this._buf) {
      const k = Math.min(part.length, 4 - o);
      b.set(part.subarray(0, k), o);
      o += k;
      if (o === 4) break;
    }
    return new DataView(b.buffer).getUint32(0);
  }

  /** Feed blob bytes of the current file's range; returns events (chunk, verified). */
  feed(data) {
    if (this.fileDone) {
      if (data.length) throw new Error('bytes fed past the end of the file');
      return [];
    }
    const events = [];
    this._buf.push(data);
    this._bufLen += data.length;
    while (!this.fileDone && this._bufLen >= 4) {
      const frame = this._frameLength();
      if (4 + this._peek4() !== frame) throw damaged(`record ${this._file}/${this._chunk} has the wrong framed length`);
      if (this._bufLen < frame) break;
      const record = this._take(frame).subarray(4);
      events.push(this._onRecord(record));
    }
    if (this.fileDone && this._bufLen) throw new Error('bytes fed past the end of the file');
    return events;
  }

  _onRecord(record) {
    const m = this.manifest;
    const hdr = parseHeader(record.subarray(0, OVERHEAD));
    const fileIx = this._file;
    const chunkIx = this._chunk;
    const n = this.index.lengths[fileIx].length;
    if (chunkIx === n) {
      DropReader._expect(hdr, T.FILE_END, fileIx, fileIx, 0);
      const body = this._open(this.keys.fileEnd, record, hdr);
      const claimed = jsonBody(body, 'integrity').sha256;
      const digest = this._hash.hexdigest();
      if (claimed !== digest) {
        throw new BeamError('integrity', `file ${fileIx} SHA-256 mismatch`,
          `The file ${m.files[fileIx].path} failed its SHA-256 check; it was not saved as complete.`);
      }
      this.fileDone = true;
      return { type: 'verified', fileIx, sha256: digest };
    }
    if (hdr.type !== T.CHUNK || hdr.fileIx !== fileIx || hdr.index !== chunkIx) {
      throw damaged(`expected chunk ${chunkIx} of file ${fileIx}`);
    }
    let body = this._open(this.keys.data, record, hdr, m.files[fileIx].prefix);
    const last = chunkIx === n - 1;
    if (Boolean(hdr.flags & LAST) !== last) throw damaged('last-chunk flag wrong (truncated or extended file)');
    try {
      body = unpackChunk(body, Boolean(hdr.flags & COMPRESSED), chunkLength(m, fileIx, chunkIx));
    } catch (e) {
      throw damaged(e.message);
    }
    this._hash.update(body);
    this._chunk += 1;
    return { type: 'chunk', fileIx, chunkIx, data: body, last };
  }
}
