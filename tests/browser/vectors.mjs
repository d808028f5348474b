// Checks the page's protocol module (signaling/web/src/proto.js) against the golden vectors
// shared with the Python side. Run by tests/browser/test_vectors_js.py:
//   node tests/browser/vectors.mjs tests/vectors/v1.json tests/vectors/relay_v1.json [extra.json]
// Prints one "ok <name>" line per check and exits 1 on the first mismatch.
import { readFileSync } from 'node:fs';
import * as P from '../../signaling/web/src/proto.js';

await P.ready;
const [v1, relay, extra] = process.argv.slice(2).map((f) => JSON.parse(readFileSync(f, 'utf8')));
const H = P.hex;
const U = P.unhex;
let failures = 0;

function check(name, got, want) {
  if (got !== want) {
    console.log(`FAIL ${name}: got ${got} want ${want}`);
    failures += 1;
  } else {
    console.log(`ok ${name}`);
  }
}

function throws(name, fn, code) {
  try {
    fn();
    console.log(`FAIL ${name}: did not throw`);
    failures += 1;
  } catch (e) {
    check(name, e.code, code);
  }
}

// §2 keys
check('kdf', H(P.kdf(U(v1.kdf.secret), v1.kdf.purpose)), v1.kdf.out);
const pk = P.pairingKeys(U(v1.pairing_keys_from_master.master));
for (const [k, js] of [['env_s2r', pk.envS2r], ['env_r2s', pk.envR2s], ['transfer_id', pk.session.transferId],
  ['data_s2r', pk.session.dataS2r], ['ctrl_s2r', pk.session.ctrlS2r], ['ctrl_r2s', pk.session.ctrlR2s]]) {
  check(`pairing ${k}`, H(js), v1.pairing_keys_from_master[k]);
}
check('pairing verifier', pk.verifier, v1.pairing_keys_from_master.verifier);
check('link master', H(P.linkMaster(U(v1.link_master.link_secret))), v1.link_master.master);

// §5 records: sealing is deterministic (nonce = prefix || index), so bytes must match
const c = v1.chunk_record;
const sealed = P.sealRecord(U(c.key), U(c.transfer_id), P.T.CHUNK, U(c.plaintext),
  { index: c.chunk_ix, fileIx: c.file_ix, prefix: U(c.prefix), flags: c.flags });
check('chunk record seal', H(sealed), c.record);
const hdr = P.parseHeader(U(c.record));
check('chunk header', `${hdr.type}/${hdr.fileIx}/${hdr.index}/${hdr.flags}`, `2/${c.file_ix}/${c.chunk_ix}/${c.flags}`);
check('chunk record open', H(P.openRecord(U(c.key), U(c.transfer_id), U(c.record), hdr, U(c.prefix))), c.plaintext);
const tampered = U(c.record);
tampered[tampered.length - 1] ^= 1;
throws('chunk record tampered', () => P.openRecord(U(c.key), U(c.transfer_id), tampered, hdr, U(c.prefix)), 'integrity');
const cr = v1.credit_record;
const credit = new Uint8Array(8);
new DataView(credit.buffer).setBigUint64(0, BigInt(cr.credit));
check('credit record seal', H(P.sealRecord(U(cr.key), U(cr.transfer_id), P.T.CREDIT, credit, { index: cr.seq })), cr.record);

// §9.1 relay keys, Argon2id included
const pw = relay.password_key;
check('argon2id', H(P.passwordKey(pw.password, U(pw.salt), pw.ops, pw.mem)), pw.out);
for (const [name, pwKey] of [['keys_without_password', null], ['keys_with_password', U(relay.keys_with_password.password_key)]]) {
  const want = relay[name];
  const got = P.relayKeys(U(want.link_secret), pwKey);
  for (const [k, js] of [['master', got.master], ['auth', got.auth], ['transfer_id', got.transferId], ['data', got.data],
    ['manifest', got.manifest], ['file_end', got.fileEnd], ['index', got.index]]) {
    check(`${name} ${k}`, H(js), want[k]);
  }
  check(`${name} verifier`, got.verifier, want.verifier);
}

// §9.3 a whole drop blob: trailer, index, manifest, chunks, file ends
function readDrop(blob, keys) {
  const reader = new P.DropReader(keys);
  const [off, len] = reader.parseTrailer(blob.subarray(blob.length - P.TRAILER_SIZE), blob.length);
  reader.readIndex(blob.subarray(off, off + len));
  const m = reader.readManifest(blob.subarray(0, reader.manifestEnd));
  const files = [];
  m.files.forEach((f, i) => {
    reader.startFile(i, 0, new P.Sha256());
    const [s, e] = reader.fileRange(i, 0);
    const parts = [];
    let digest = null;
    // feed in awkward 7-byte pieces: framing must not depend on how bytes arrive
    for (let p = s; p < e; p += 7) {
      for (const ev of reader.feed(blob.subarray(p, Math.min(p + 7, e)))) {
        if (ev.type === 'chunk') parts.push(ev.data);
        else digest = ev.sha256;
      }
    }
    files.push({ path: f.path, content: H(P.concat(...parts)), digest });
  });
  return { m, files };
}
const d = relay.drop;
const dkeys = P.relayKeys(U(relay[d.keys].link_secret), U(relay[d.keys].password_key));
const blob = U(d.blob);
const got = readDrop(blob, dkeys);
check('drop file count', got.files.length, d.files.length);
d.files.forEach((f, i) => {
  check(`drop file ${i} path`, got.files[i].path, f.path);
  check(`drop file ${i} content`, got.files[i].content, f.content);
  check(`drop file ${i} prefix`, H(got.m.files[i].prefix), f.prefix);
  check(`drop file ${i} digest`, got.files[i].digest, d.digests[i]);
});
throws('drop wrong key', () => readDrop(blob, P.relayKeys(U(relay[d.keys].link_secret), null)), 'wrong-key');
const bad = U(d.blob);
bad[30] ^= 1; // inside the first MANIFEST record
throws('drop damaged manifest', () => readDrop(bad, dkeys), 'integrity');

// SHA-256 streaming
const s = new P.Sha256();
s.update(new TextEncoder().encode('ab'));
s.update(new TextEncoder().encode('c'));
check('sha256', s.hexdigest(), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');

// path rules (same verdicts as peer/proto/manifest.py)
for (const ok of ['a/b.dcm', 'CT_STUDY/SE001/IM0001.dcm', 'ä/ö.txt']) check(`path ok ${ok}`, P.checkPath(ok), ok);
for (const badPath of ['../x', '/abs', 'a//b', 'a\\b', 'c:x', 'CON', 'aux.txt', 'x.', 'a\u202eb', 'e\u0301']) {
  throws(`path refused ${JSON.stringify(badPath)}`, () => P.checkPath(badPath), 'unsafe-manifest');
}

// series previews (INTERFACES.md 1): bad entries are dropped, never fatal
const png = P.b64(P.concat(new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), new Uint8Array(100)));
const good = { series: '1.2.3', mime: 'image/png', data: png, w: 64, h: 48 };
const previews = P.cleanPreviews([
  good,
  { ...good, mime: 'image/svg+xml' },
  { ...good, data: P.b64(new Uint8Array(200)) }, // not a PNG
  { ...good, w: 257 },
  { ...good, data: P.b64(P.concat(P.unb64(png), new Uint8Array(65536))) }, // > 64 KiB
  { ...good, data: 'not base64!' },
  null,
]);
check('previews kept', JSON.stringify(previews.map((p) => p.series)), '["1.2.3"]');
check('previews capped', P.cleanPreviews(Array(80).fill(good)).length, 64);
check('previews not a list', P.cleanPreviews({}).length, 0);

// extra cases made by the pytest with the Python code (a whole transfer and envelopes);
// what the JS side produced is printed for the pytest to open with the Python code
if (extra) {
  const hs = new P.LinkHandshake(U(extra.link_secret));
  const [linkBody, helloBody] = hs.start();
  check('link body', linkBody, '{"t":"link"}');
  check('sender pake ignored', hs.receive(extra.sender_bodies[0]), null);
  check('sender hello', hs.receive(extra.sender_bodies[1]), null);
  check('paired', hs.paired, true);
  const offer = hs.receive(extra.sender_bodies[2]);
  check('offer envelope', JSON.stringify(offer), JSON.stringify(extra.offer));
  throws('replayed envelope', () => hs.receive(extra.sender_bodies[2]), 'protocol');
  const answer = hs.seal({ type: 'answer', sdp: 'v=0 answer' });
  console.log('js_bodies ' + JSON.stringify([linkBody, helloBody, answer]));
  const wrong = new P.LinkHandshake(new Uint8Array(32));
  wrong.start();
  throws('wrong link secret', () => wrong.receive(extra.sender_bodies[1]), 'wrong-code');
  // a whole transfer made by peer/proto/sender.py
  const sk = extra.session_keys;
  const keys = { transferId: U(sk.transfer_id), dataS2r: U(sk.data_s2r), ctrlS2r: U(sk.ctrl_s2r), ctrlR2s: U(sk.ctrl_r2s) };
  const rx = new P.Receiver(keys, { window: extra.window });
  const contents = [];
  const replies = [];
  for (const recHex of extra.records) {
    rx.receive(U(recHex));
    for (const ev of rx.events()) {
      if (ev.type === 'offered') rx.accept();
      else if (ev.type === 'chunk') {
        contents[ev.fileIx] = (contents[ev.fileIx] || '') + H(ev.data);
        rx.release(1);
      } else if (ev.type === 'all-verified') rx.finish();
      else if (ev.type === 'failed') check('transfer failed', ev.error.message, '');
    }
    for (const out of rx.out()) replies.push(H(out));
  }
  extra.contents.forEach((want, i) => check(`transfer file ${i}`, contents[i] || '', want));
  check('receiver state', rx.state, 'done');
  console.log('replies ' + JSON.stringify(replies));
  // a flipped bit in a chunk: integrity failure, ERROR record sent
  const rx2 = new P.Receiver(keys, { window: extra.window });
  let failed = null;
  for (const recHex of extra.records) {
    const rec = U(recHex);
    if (rec[1] === P.T.CHUNK) rec[rec.length - 1] ^= 1;
    rx2.receive(rec);
    for (const ev of rx2.events()) {
      if (ev.type === 'offered') rx2.accept();
      if (ev.type === 'failed') failed = ev.error.code;
    }
    if (failed) break;
  }
  check('tampered chunk', failed, 'integrity');
}

// protocol v2 (§10): round derivations, lane markers, a rejoin pairing
if (extra && extra.rounds) {
  const master0 = P.linkMaster(U(extra.link_secret));
  for (const [n, [rid, master]] of Object.entries(extra.rounds)) {
    check(`rendezvous id ${n}`, P.rendezvousId(master0, Number(n)), rid);
    check(`round master ${n}`, H(P.roundMaster(master0, Number(n))), master);
  }
  const hs = new P.LinkHandshake(null, { master: P.roundMaster(master0, 2) });
  const bodies = hs.start();
  check('rejoin sends only hello', bodies.length, 1);
  check('rejoin hello opens', hs.receive(extra.rejoin_bodies[0]), null);
  check('rejoin version', hs.version, 2);
  console.log('rejoin_bodies ' + JSON.stringify(bodies));
  const other = new P.LinkHandshake(null, { master: P.roundMaster(master0, 3) });
  throws('rejoin wrong round', () => other.receive(extra.rejoin_bodies[0]), 'wrong-code');
  const [start0, end0, start1] = extra.markers.map(U);
  const rec = U(extra.records[0]);
  const lane = new P.LaneMarkers();
  throws('record before START', () => new P.LaneMarkers().strip(rec), 'protocol');
  check('START(0) stripped', lane.strip(start0), null);
  check('record passes', lane.strip(rec), rec);
  throws('START twice', () => lane.strip(start0), 'protocol');
  const lane2 = new P.LaneMarkers();
  lane2.strip(start0);
  check('END(0) stripped', lane2.strip(end0), null);
  throws('record after END', () => lane2.strip(rec), 'protocol');
  check('START(1) stripped', lane2.strip(start1), null);
  throws('END(1) out of order', () => lane2.strip(end0), 'protocol');
  throws('malformed marker', () => new P.LaneMarkers().strip(new Uint8Array([0, 1, 0])), 'protocol');
  throws('START(1) first', () => new P.LaneMarkers().strip(start1), 'protocol');
}

console.log(failures ? `${failures} failed` : 'all ok');
process.exit(failures ? 1 : 0);
