// The ScanBeam receive page: /r#<nameplate>.<secret> (direct, WebRTC) and /d/<id>#<secret>
// (relay drop). The fragment secret is read here and never sent anywhere: browsers do not
// send fragments in requests, the page sends only ciphertext and derived auth keys.
import * as P from './proto.js';
import { Spool, offerStream, saveViaServiceWorker, prepareServiceWorker, canStreamDownload, canPickFolder, pickFolder, planFolder, saveToFolder } from './save.js';

const $ = (id) => document.getElementById(id);
const WINDOW = 64; // receive window in chunks (≈ 4 MiB direct)
const RELAY_HELD = 8; // relay chunks (1 MiB each) read ahead of the saving side
const ICE_GATHER_MS = 10000;
const PAIR_TIMEOUT_MS = 60000;
const IDLE_TIMEOUT_MS = 60000;
const CONNECT_TIMEOUT_MS = 45000; // direct connection, after the answer was sent
const HANDOFF_TIMEOUT_MS = 4 * 3600 * 1000; // waiting for the sender's relay upload (as the CLI)

// ---------------------------------------------------------------- view

function setState(state, text) {
  document.body.dataset.state = state;
  if (text !== undefined) $('status').textContent = text;
}

function show(id, on = true) {
  $(id).hidden = !on;
}

function fail(err) {
  const e = err instanceof P.BeamError ? err : new P.BeamError('internal', String(err && err.stack || err));
  if (document.body.dataset.state === 'error' || document.body.dataset.state === 'done') return;
  console.error('scanbeam:', e.code, e.message);
  document.body.dataset.error = e.code;
  $('error-text').textContent = e.userMessage;
  for (const id of ['offer', 'password', 'connecting']) show(id, false);
  show('error');
  setState('error', 'Stopped.');
  releaseWakeLock();
  if (state.cleanup) state.cleanup(e);
}

function humanBytes(n) {
  if (!Number.isFinite(n)) return '?';
  const units = ['bytes', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return i === 0 ? `${n} bytes` : `${n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)} ${units[i]}`;
}

function humanTime(s) {
  if (!Number.isFinite(s) || s < 0) return '…';
  if (s < 60) return `${Math.ceil(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const state = { cleanup: null, wakeLock: null };

// ---------------------------------------------------------------- offer

function showOffer(manifest, onAccept, onDecline, { resumeNote = '' } = {}) {
  const m = manifest;
  const summary = m.summary || {};
  const dl = $('offer-summary');
  dl.replaceChildren();
  const row = (k, v) => dl.append(el('dt', {}, k), el('dd', {}, v));
  row('Files', `${m.files.length}`);
  row('Total size', humanBytes(m.totalBytes));
  const studies = Array.isArray(summary.studies) ? summary.studies : [];
  for (const st of studies.slice(0, 5)) {
    if (st.patient_name) row('Patient', `${st.patient_name}${st.patient_id ? ` (${st.patient_id})` : ''}`);
    if (st.patient_birth_date) row('Born', st.patient_birth_date);
    const what = [st.study_date, (st.modalities || []).join(' '), st.study_description].filter(Boolean).join(' · ');
    if (what) row('Study', what);
    row('Series', `${st.series_count ?? '?'} series, ${st.image_count ?? '?'} images`);
  }
  if (summary.other_files) row('Other files', `${summary.other_files}`);
  const series = $('offer-series');
  series.replaceChildren();
  const previews = new Map(m.previews.map((p) => [p.series, p]));
  for (const st of studies.slice(0, 5)) {
    for (const se of (st.series || []).slice(0, 200)) {
      const p = previews.get(se.series_uid);
      const li = el('li', { class: 'series' });
      if (p) li.append(el('img', { src: `data:image/png;base64,${p.data}`, width: String(p.w), height: String(p.h), alt: '' }));
      li.append(el('span', {}, `${se.number ?? ''} ${se.modality || ''} ${se.description || ''}`.trim()),
        el('span', { class: 'muted' }, `${se.images ?? '?'} images · ${humanBytes(se.bytes)}`));
      series.append(li);
    }
  }
  const list = $('offer-files');
  list.replaceChildren();
  for (const f of m.files.slice(0, 500)) list.append(el('li', {}, el('span', { class: 'path' }, f.path), el('span', { class: 'muted' }, humanBytes(f.size))));
  if (m.files.length > 500) list.append(el('li', { class: 'muted' }, `… and ${m.files.length - 500} more`));
  $('offer-note').textContent = resumeNote;
  const folder = $('save-folder');
  folder.hidden = !canPickFolder();
  if (!canStreamDownload() && !canPickFolder()) {
    $('accept').disabled = true;
    $('offer-note').textContent = 'This browser cannot save large files from this page. Open the link in Chrome, Edge, Firefox or Safari 15.4+, over HTTPS.';
  }
  $('accept').onclick = () => onAccept('download');
  folder.onclick = () => onAccept('folder');
  $('decline').onclick = onDecline;
  show('connecting', false);
  show('offer');
  setState('offer', m.files.length === 1 ? 'The sender offers one file.' : `The sender offers ${m.files.length} files.`);
}

// ---------------------------------------------------------------- progress

class Progress {
  constructor(total, start = 0) {
    this.total = total;
    this.bytes = start;
    this.samples = [];
    this.last = 0;
    this.started = performance.now();
  }

  add(n) {
    this.bytes += n;
    const now = performance.now();
    if (now - this.last < 250 && this.bytes < this.total) return;
    this.last = now;
    this.samples.push([now, this.bytes]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 3000) this.samples.shift();
    const [t0, b0] = this.samples[0];
    const rate = now > t0 ? ((this.bytes - b0) * 1000) / (now - t0) : 0;
    const pct = this.total ? (100 * this.bytes) / this.total : 100;
    $('bar').value = pct;
    $('bar').textContent = `${pct.toFixed(0)} %`;
    const speed = rate > 0 ? `${humanBytes(rate)}/s · ${humanTime((this.total - this.bytes) / rate)} left` : 'measuring speed…';
    $('progress-text').textContent = `${humanBytes(this.bytes)} of ${humanBytes(this.total)} · ${speed}`;
    document.body.dataset.bytes = String(this.bytes);
  }
}

function startReceivingView(total) {
  show('offer', false);
  show('progress');
  setState('receiving', 'Receiving and checking every piece…');
  holdWakeLock();
  return new Progress(total);
}

// ---------------------------------------------------------------- completeness (INTERFACES.md 4)

function completeness(manifest, verifiedCount) {
  const studies = Array.isArray(manifest.summary.studies) ? manifest.summary.studies : [];
  if (verifiedCount !== manifest.files.length) return `incomplete — ${manifest.files.length - verifiedCount} files missing`;
  if (!studies.length) return 'no DICOM images to check';
  const patients = new Set(studies.map((s) => `${s.patient_id}|${s.patient_name}`));
  if (studies.length > 1) return `conflicting — ${studies.length} studies in one transfer`;
  if (patients.size > 1) return 'conflicting — more than one patient';
  let images = 0;
  let series = 0;
  const problems = [];
  for (const se of studies[0].series || []) {
    series += 1;
    images += Number(se.images) || 0;
    if (Array.isArray(se.sop_uids)) {
      const unique = new Set(se.sop_uids);
      if (unique.size !== se.sop_uids.length) problems.push(`duplicate images in series ${se.number ?? '?'}`);
      else if (se.sop_uids.length < 1000 && unique.size !== se.images) problems.push(`series ${se.number ?? '?'} lists ${unique.size} of ${se.images} images`);
    }
  }
  if (problems.length) return `conflicting — ${problems[0]}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''}`;
  return `complete — ${series} series, ${images} image${images === 1 ? '' : 's'}`;
}

function showDone(manifest, digests, savedWhere) {
  show('progress', false);
  show('done');
  const list = $('done-files');
  list.replaceChildren();
  manifest.files.forEach((f, i) => {
    list.append(el('li', {}, el('span', { class: 'ok', 'aria-hidden': 'true' }, '✓ '), el('span', { class: 'path' }, f.path),
      el('span', { class: 'muted' }, ` ${humanBytes(f.size)} · SHA-256 ${digests[i].slice(0, 16)}…`)));
  });
  const line = completeness(manifest, digests.length);
  $('completeness').textContent = `Completeness: ${line}`;
  document.body.dataset.completeness = line.split(' ')[0];
  $('done-where').textContent = savedWhere;
  setState('done', `Verified: all ${manifest.files.length} file${manifest.files.length === 1 ? '' : 's'} arrived intact.`);
  releaseWakeLock();
}

// ---------------------------------------------------------------- wake lock

async function holdWakeLock() {
  show('keep-front');
  try {
    if ('wakeLock' in navigator) {
      state.wakeLock = await navigator.wakeLock.request('screen');
      document.addEventListener('visibilitychange', relock);
    }
  } catch {
    // not allowed here (battery saver, background): the notice stays
  }
}

async function relock() {
  if (document.visibilityState === 'visible' && state.wakeLock && state.wakeLock.released && document.body.dataset.state === 'receiving') {
    try {
      state.wakeLock = await navigator.wakeLock.request('screen');
    } catch {
      // ignore
    }
  }
}

function releaseWakeLock() {
  show('keep-front', false);
  document.removeEventListener('visibilitychange', relock);
  if (state.wakeLock) state.wakeLock.release().catch(() => {});
  state.wakeLock = null;
}

// ---------------------------------------------------------------- saving

function zipName(manifest) {
  const st = (manifest.summary.studies || [])[0];
  const stamp = new Date().toISOString().slice(0, 10);
  // no patient name or ID in the file name: it would stay in the browser's download history
  const base = st ? [st.study_date, (st.modalities || []).join('-')].filter(Boolean).join('_') : 'files';
  return `scanbeam_${base.replace(/[^A-Za-z0-9._-]+/g, '-') || 'files'}_${stamp}.zip`;
}

/** Starts saving; returns {done: Promise, where: text}. Runs inside the click handler. */
async function startSaving(mode, manifest, spool, { canResume = true } = {}) {
  if (mode === 'folder') {
    const root = await pickFolder();
    if (!root) return null;
    const plan = await planFolder(root, manifest, { fresh: !canResume, hasher: () => new P.Sha256() });
    return {
      done: saveToFolder(root, manifest, spool, plan),
      where: `Saved into the folder “${root.name}”.`,
      plan,
    };
  }
  const out = offerStream(manifest, spool, zipName(manifest));
  await prepareServiceWorker();
  return { done: saveViaServiceWorker(out), where: `Saved as “${out.name}” in your downloads.` };
}

// ---------------------------------------------------------------- direct (WebRTC)

/** ICE servers from the `joined` frame (INTERFACES.md 2), keeping only what a browser takes:
 * stun/stuns URLs, and turn/turns URLs with a text username and credential. */
function cleanIce(list) {
  const out = [];
  for (const s of list.slice(0, 8)) {
    if (!s || typeof s !== 'object') continue;
    const urls = (typeof s.urls === 'string' ? [s.urls] : Array.isArray(s.urls) ? s.urls : [])
      .filter((u) => typeof u === 'string' && /^(stuns?|turns?):[^\s]+$/.test(u)).slice(0, 8);
    const creds = typeof s.username === 'string' && typeof s.credential === 'string';
    const usable = urls.filter((u) => /^stuns?:/.test(u) || creds);
    if (!usable.length) continue;
    out.push(creds ? { urls: usable, username: s.username, credential: s.credential } : { urls: usable });
  }
  return out;
}

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/signal`;
}

const SIGNAL_ERRORS = {
  'unknown-nameplate': ['unknown-code', 'This link was already used, or it expired. Ask the sender for a new one.'],
  crowded: ['unknown-code', 'Someone else is already using this link.'],
  'rate-limited': ['rate-limited', 'Too many wrong links were tried from this network. Wait a minute and try again.'],
  busy: ['busy', 'The ScanBeam server is busy. Try again in a moment.'],
};

const RECONNECT_MS = 300000; // protocol v2 reconnection bound, counted from the first drop (§10.3)
const REJOIN_OPEN_MS = CONNECT_TIMEOUT_MS + ICE_GATHER_MS; // a met round must open its channel in this

const RECONNECTING = 'The connection to the sender was lost. Reconnecting…';

/** Shows the reconnecting state: what the page tries, and what happens to what it saved. */
function showReconnecting(saving) {
  setState('reconnecting', RECONNECTING);
  if (!saving) return;
  const bytes = Number(document.body.dataset.bytes || 0);
  const how = saving.plan
    ? 'What was verified is kept in the folder: if the sender stopped, run the same command again, open the new link and pick the same folder to resume.'
    : 'Keep this page open: the download continues where it stopped. If this page is closed or reloaded, the download starts from the beginning.';
  $('progress-text').textContent = `Paused at ${humanBytes(bytes)}. Trying to reach the sender again for up to 5 minutes. ${how}`;
}

/**
 * The direct path: link-mode pairing, WebRTC, and the receiver machine. Under protocol v2
 * (§10) the page has one lane (the data channel) and survives a drop in reconnection rounds:
 * it meets the sender again at the round's rendezvous, pairs with the round's master, and
 * resumes where it stopped, since the saving stream (download or folder) is still open in
 * this page: resume[i] = the chunks of file i already handed to it, with the SHA-256 state
 * kept, so nothing verified is sent again and the saved file is one seamless stream.
 */
async function receiveDirect(fragment) {
  const link = P.parseLinkFragment(fragment);
  if (!link) throw new P.BeamError('bad-link', 'bad fragment', 'This link is damaged or incomplete: check that it was copied whole.');
  setState('connecting', 'Connecting to the sender…');
  prepareServiceWorker().catch(() => {});
  const master0 = P.linkMaster(link.secret);
  // shared by every round
  let cur = null; // the current round
  let finished = false;
  let spool = null;
  let saving = null;
  let progress = null;
  let accepted = null; // [paths, totalBytes] of the offer the user accepted
  let carry = null; // {resume, hashes}: what earlier rounds handed to the saving stream
  let carried = 0; // chunks of earlier rounds still in the spool (their release credits no round)
  let deadline = null; // reconnection bound (ms, performance.now())
  let finishedSaving = false;
  let closed = false;
  let lastMessage = performance.now();

  const cleanup = (err) => {
    finished = true;
    const r = cur;
    if (r) {
      r.timers.forEach(clearTimeout);
      closeWs(r, err ? 'error' : 'happy');
      if (err && r.rx) {
        r.rx.fail(err);
        if (r.channel && r.channel.readyState === 'open') for (const rec of r.rx.out()) r.channel.send(rec);
      }
      setTimeout(() => r.pc && r.pc.close(), 500);
    }
    if (err && spool) spool.fail(err);
  };
  state.cleanup = cleanup;

  function closeWs(r, mood) {
    if (r.ws.readyState === WebSocket.OPEN) r.ws.send(JSON.stringify({ v: 1, type: 'close', mood }));
    try {
      r.ws.close();
    } catch {
      // closed
    }
  }

  const idle = setInterval(() => {
    if (finished || ['error', 'done'].includes(document.body.dataset.state)) {
      clearInterval(idle);
      return;
    }
    const r = cur;
    if (document.body.dataset.state === 'receiving' && r && r.channelOpen && performance.now() - lastMessage > IDLE_TIMEOUT_MS) {
      if (r.version === 2) dropped(r, 'idle');
      else fail(new P.BeamError('timeout', 'idle', 'The sender stopped sending for a minute; the transfer was stopped.'));
    }
  }, 5000);

  // a page that was hidden (phone locked, other app) may come back with a dead connection
  document.addEventListener('visibilitychange', () => {
    const r = cur;
    if (document.visibilityState !== 'visible' || !r || !r.channelOpen || r.dead) return;
    const dead = (r.pc && ['failed', 'closed'].includes(r.pc.connectionState)) || (r.channel && r.channel.readyState !== 'open');
    if (dead) onClose(r);
  });

  // The round number (not secret) survives a reload of this tab, so a reloaded page can meet
  // the sender at its next rendezvous instead of the used-up nameplate (§9.5).
  const roundKey = `scanbeam-round:${link.nameplate}`;
  function remember(n) {
    try {
      if (n === null) sessionStorage.removeItem(roundKey);
      else sessionStorage.setItem(roundKey, String(n));
    } catch {
      // storage disabled: a reload cannot rejoin
    }
  }
  function remembered() {
    try {
      const v = sessionStorage.getItem(roundKey);
      return v !== null && /^\d{1,6}$/.test(v) ? Number(v) : null;
    } catch {
      return null;
    }
  }
  let reloaded = false;

  function startRound(n) {
    const r = {
      n, ws: new WebSocket(wsUrl()), pc: null, channel: null, channelOpen: false, rx: null,
      markers: null, version: 1, met: n === 0, dead: false, timers: [], waitingRelay: false, iceServers: [],
      hs: n === 0 ? new P.LinkHandshake(link.secret) : new P.LinkHandshake(null, { master: P.roundMaster(master0, n) }),
    };
    cur = r;
    document.body.dataset.round = String(n);
    const ws = r.ws;
    const send = (body) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify({ v: 1, type: 'msg', body }));
    r.send = send;
    if (n === 0) {
      const pairTimer = setTimeout(() => {
        if (!r.channelOpen && !finished) fail(new P.BeamError('timeout', 'pairing timeout', 'The sender did not answer in time: it may have stopped. Ask for a new link.'));
      }, PAIR_TIMEOUT_MS);
      r.timers.push(pairTimer);
      r.pairTimer = pairTimer;
    }
    ws.onerror = () => {
      if (r.dead || r.channelOpen) return;
      if (n === 0) fail(new P.BeamError('unreachable', 'ws error', 'Cannot reach the ScanBeam server. Check the connection and reload.'));
      else roundFailed(r, 'signaling unreachable');
    };
    ws.onclose = () => {
      if (r.dead || r.channelOpen || finished || document.body.dataset.state === 'error') return;
      if (n === 0) fail(new P.BeamError('peer-gone', 'signaling closed', 'The sender left before the transfer could start.'));
      else roundFailed(r, 'signaling closed');
    };
    ws.onopen = () => ws.send(JSON.stringify(n === 0
      ? { v: 1, type: 'join', nameplate: link.nameplate }
      : { v: 1, type: 'rendezvous', id: P.rendezvousId(master0, n) }));
    ws.onmessage = async (ev) => {
      if (r.dead) return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      try {
        if (frame.type === 'joined') {
          // ICE servers handed out by the server for this session (INTERFACES.md 2)
          if (Array.isArray(frame.ice)) r.iceServers = cleanIce(frame.ice);
          document.body.dataset.iceServers = String(r.iceServers.length);
          if (n === 0) for (const body of r.hs.start()) send(body);
        } else if (frame.type === 'peer-joined') {
          if (n > 0 && !r.met) {
            r.met = true; // a reconnection round: both send hello at once (mode rejoin)
            r.timers.push(setTimeout(() => {
              if (!r.channelOpen && !r.dead) roundFailed(r, 'no connection');
            }, REJOIN_OPEN_MS));
            for (const body of r.hs.start()) send(body);
          }
        } else if (frame.type === 'error') {
          if (n > 0) {
            roundFailed(r, frame.code);
            return;
          }
          const last = remembered();
          if (frame.code === 'unknown-nameplate' && last !== null && !reloaded) {
            // this tab was reloaded during a transfer: the sender waits at its next round
            reloaded = true;
            deadline = performance.now() + RECONNECT_MS;
            retire(r);
            nextRound(last + 1, 0);
            return;
          }
          const [code, text] = SIGNAL_ERRORS[frame.code] || ['connection', `The ScanBeam server refused the request (${String(frame.code).slice(0, 40)}).`];
          fail(new P.BeamError(code, frame.code, text));
        } else if (frame.type === 'peer-closed' || frame.type === 'peer-gone' || frame.type === 'expired') {
          if (r.channelOpen || finished) return;
          if (n > 0) {
            roundFailed(r, frame.type);
            return;
          }
          if (r.waitingRelay || (r.pc && frame.mood !== 'wrong-code')) fail(new P.BeamError('no-path', frame.type, 'No direct connection to the sender could be opened from this network, and the sender did not use the relay.'));
          else if (frame.mood === 'wrong-code') fail(new P.BeamError('wrong-code', 'wrong code'));
          else if (frame.type === 'expired') fail(new P.BeamError('unknown-code', 'expired', 'This link expired. Ask the sender for a new one.'));
          else fail(new P.BeamError('peer-gone', frame.type, 'The sender left before the transfer could start.'));
        } else if (frame.type === 'msg' && typeof frame.body === 'string') {
          const msg = r.hs.receive(frame.body);
          if (!msg) return;
          if (msg.type === 'offer' && typeof msg.sdp === 'string' && !r.pc) {
            clearTimeout(r.pairTimer);
            r.version = msg.version === 2 && r.hs.version === 2 ? 2 : 1;
            await answer(r, msg.sdp);
          } else if (msg.type === 'lanes') {
            // the sender's other paths (TCP lanes, relay pipe): a page has none of them
          } else if (msg.type === 'relay' && typeof msg.url === 'string' && n === 0) {
            finished = true;
            ws.close();
            if (r.pc) r.pc.close();
            const target = parseDropUrl(msg.url);
            if (!target) throw new P.BeamError('protocol', 'bad relay link');
            await receiveRelay(target.id, target.secret, 'No direct connection opened; the sender uploaded the files to the relay instead.');
          } else if (msg.type === 'error') {
            fail(new P.BeamError('peer-gone', 'peer error', 'The sender stopped.'));
          }
        }
      } catch (err) {
        if (err instanceof P.BeamError && err.code === 'wrong-code') {
          if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ v: 1, type: 'close', mood: 'wrong-code' }));
        }
        fail(err);
      }
    };
  }

  // no direct path: like the CLI, wait (bounded) for the sender's relay link (§4.2)
  function waitForRelay(r) {
    if (r.waitingRelay || r.channelOpen || finished || r.dead) return;
    if (r.n > 0) {
      roundFailed(r, 'no connection');
      return;
    }
    r.waitingRelay = true;
    setState('connecting', 'No direct connection: waiting for the sender to upload the files to the relay…');
    r.timers.push(setTimeout(() => {
      if (!r.channelOpen && !finished) fail(new P.BeamError('no-path', 'handoff timeout', 'No direct connection to the sender could be opened, and no relay link came.'));
    }, HANDOFF_TIMEOUT_MS));
  }

  async function answer(r, sdp) {
    if (r.n === 0) setState('connecting', 'Opening a direct connection…');
    let pc;
    try {
      pc = new RTCPeerConnection({ iceServers: r.iceServers });
    } catch {
      pc = new RTCPeerConnection({ iceServers: [] }); // a server list the browser refuses
      document.body.dataset.iceServers = '0';
    }
    r.pc = pc;
    pc.ondatachannel = (ev) => {
      if (ev.channel.label !== 'scanbeam' || r.dead) return;
      const channel = ev.channel;
      r.channel = channel;
      channel.binaryType = 'arraybuffer';
      channel.onopen = () => onOpen(r);
      channel.onmessage = (e) => onMessage(r, e);
      channel.onclose = () => onClose(r);
      if (channel.readyState === 'open') onOpen(r);
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState !== 'failed' || finished || r.dead) return;
      if (r.channelOpen) onClose(r);
      else waitForRelay(r);
    };
    await pc.setRemoteDescription({ type: 'offer', sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    // aiortc does not trickle: the answer carries every candidate (docs/protocol.md §4.2)
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      const t = setTimeout(resolve, ICE_GATHER_MS);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') {
          clearTimeout(t);
          resolve();
        }
      });
    });
    if (r.dead) return;
    r.send(r.hs.seal({ type: 'answer', sdp: pc.localDescription.sdp }));
    // v2: then our paths, as the CLI receiver does (§10.1); the page has only the data channel
    if (r.version === 2) r.send(r.hs.seal({ type: 'lanes', tcp: [], pipe: false }));
    r.timers.push(setTimeout(() => waitForRelay(r), CONNECT_TIMEOUT_MS));
  }

  function onOpen(r) {
    if (r.channelOpen || r.dead) return;
    r.channelOpen = true;
    remember(r.n);
    lastMessage = performance.now();
    closeWs(r, 'happy');
    if (r.n === 0) setState('connecting', 'Connected. Waiting for the list of files…');
    else setState(accepted ? 'receiving' : 'connecting', accepted ? 'Reconnected. Receiving and checking every piece…' : 'Reconnected. Waiting for the list of files…');
    r.rx = new P.Receiver(r.hs.keys.session, { window: WINDOW });
    if (r.version === 2) r.markers = new P.LaneMarkers();
  }

  function flush() {
    const r = cur;
    if (!r || r.dead || !r.rx || !r.channel || r.channel.readyState !== 'open') return;
    for (const rec of r.rx.out()) r.channel.send(rec);
  }

  /** The data channel or its ICE connection died, or nothing came for a minute. */
  function onClose(r) {
    if (r.dead || finished || document.body.dataset.state === 'done') return;
    if (r.rx && r.rx.state === 'done') return;
    // reconnect once the user accepted (mid-transfer); a drop before that ends, as in v1
    const live = accepted && (!r.rx || !['failed', 'declined'].includes(r.rx.state));
    if (r.version === 2 && live) {
      dropped(r, 'channel closed');
      return;
    }
    let text = 'The sender left before the transfer finished.';
    if (r.rx && r.rx.state === 'receiving') {
      text = saving && saving.plan
        ? 'The connection to the sender was lost. What was verified is kept in the folder: when the sender runs the same command again, open the new link and pick the same folder to resume.'
        : 'The connection to the sender was lost. When the sender runs the same command again, open the new link: the download starts from the beginning (a browser download cannot be continued; “Save into a folder” can).';
    }
    fail(new P.BeamError('peer-gone', 'channel closed', text));
  }

  /** End round r (its connection is gone) and remember what its receiver handed to saving. */
  function retire(r) {
    if (r.dead) return;
    r.dead = true;
    r.timers.forEach(clearTimeout);
    closeWs(r, 'error');
    if (r.pc) r.pc.close();
    const rx = r.rx;
    if (rx && accepted && ['receiving', 'verified'].includes(rx.state)) {
      const files = rx.manifest.files;
      const cs = rx.manifest.chunkSize;
      const resume = files.map((f, i) => (i < rx._file ? P.nChunks(f, cs) : i === rx._file ? rx._chunk : 0));
      const hashes = files.map((f, i) => {
        if (i < rx._file) {
          const digest = rx.digests[i];
          return { update() { throw new Error('file already verified'); }, hexdigest: () => digest };
        }
        return i === rx._file ? rx._hash : new P.Sha256();
      });
      carry = { resume, hashes };
      carried += rx._received - rx._released;
    }
  }

  /** The transfer's connection dropped: reconnect in rounds (§10.3), bounded by RECONNECT_MS. */
  function dropped(r, reason) {
    if (r.dead || finished) return;
    retire(r);
    if (saving && saving.plan && spool) spool.requestCommit(); // in case the page is closed now
    const now = performance.now();
    if (deadline === null) deadline = now + RECONNECT_MS;
    document.body.dataset.reconnects = String(Number(document.body.dataset.reconnects || 0) + 1);
    console.info('scanbeam: connection dropped:', reason);
    nextRound(r.n + 1, 0);
  }

  /** Round r failed: before meeting the sender it tries the same n again, after it the next. */
  function roundFailed(r, reason) {
    if (r.dead || finished) return;
    retire(r);
    console.info('scanbeam: reconnection round', r.n, 'failed:', reason);
    const delay = Math.min(5000, 500 * 2 ** Math.min(4, (r.tries || 0)));
    nextRound(r.met ? r.n + 1 : r.n, r.met ? 500 : delay, r.met ? 0 : (r.tries || 0) + 1);
  }

  function nextRound(n, delay, tries = 0) {
    const left = deadline - performance.now();
    if (left <= 0) {
      const text = saving && saving.plan
        ? 'The connection to the sender was lost and could not be made again in 5 minutes. What was verified is kept in the folder: when the sender runs the same command again, open the new link and pick the same folder to resume.'
        : 'The connection to the sender was lost and could not be made again in 5 minutes. When the sender runs the same command again, open the new link: the download starts from the beginning (a browser download cannot be continued; “Save into a folder” can).';
      fail(new P.BeamError('peer-gone', 'reconnect timed out', text));
      return;
    }
    showReconnecting(accepted ? saving : null);
    show('connecting', !accepted);
    setTimeout(() => {
      if (finished) return;
      startRound(n);
      cur.tries = tries;
    }, Math.min(delay, left));
  }

  function onMessage(r, ev) {
    if (r.dead || r !== cur) return;
    lastMessage = performance.now();
    const rx = r.rx;
    if (typeof ev.data === 'string') {
      rx.fail(new P.BeamError('protocol', 'text message on the data channel'));
    } else {
      let data = new Uint8Array(ev.data);
      if (r.markers) {
        try {
          data = r.markers.strip(data);
        } catch (err) {
          rx.fail(err);
          data = null;
        }
      }
      if (data) rx.receive(data);
    }
    for (const e of rx.events()) handle(r, e);
    flush();
  }

  function handle(r, e) {
    const rx = r.rx;
    if (e.type === 'offered') {
      const key = JSON.stringify([e.manifest.files.map((f) => f.path), e.manifest.totalBytes]);
      if (accepted) {
        // a reconnection round: the same files continue without asking again (§10.3)
        if (key !== accepted) {
          fail(new P.BeamError('protocol', 'different offer', 'After reconnecting, the sender offered different files; the transfer was stopped.'));
          return;
        }
        rx.accept(carry ? carry.resume : null, carry ? carry.hashes : null);
        setState('receiving', 'Reconnected. Receiving and checking every piece…');
        show('connecting', false);
        flush();
        for (const e2 of rx.events()) handle(r, e2);
        return;
      }
      const note = reloaded ? 'This page was reloaded, so the transfer starts again from the beginning (with “Save into a folder…” and the same folder, what was verified is kept).' : '';
      showOffer(e.manifest, (mode) => accept(r, mode, key), () => {
        rx.decline();
        flush();
        finished = true;
        setTimeout(() => r.pc.close(), 500);
        fail(new P.BeamError('declined', 'declined', 'You declined the transfer; nothing was saved.'));
      }, { resumeNote: note });
    } else if (e.type === 'chunk') {
      spool.push(e);
      progress.add(e.data.length);
    } else if (e.type === 'verified') {
      spool.verify(e.fileIx);
    } else if (e.type === 'all-verified') {
      saving.done.then(() => {
        if (r.dead || r.rx.state !== 'verified') return;
        r.rx.finish();
        flush();
        finishedSaving = true;
        maybeDone(r);
      }, fail);
    } else if (e.type === 'closed') {
      closed = true;
      maybeDone(r);
    } else if (e.type === 'failed') {
      fail(e.error);
    }
  }

  function maybeDone(r) {
    if (finishedSaving && closed) {
      finished = true;
      remember(null);
      showDone(r.rx.manifest, r.rx.digests, saving.where);
      setTimeout(() => r.pc.close(), 500);
    }
  }

  async function accept(r, mode, key) {
    const rx = r.rx;
    $('accept').disabled = true;
    spool = new Spool((n) => {
      const old = Math.min(n, carried); // chunks of an earlier round: no credit for this one
      carried -= old;
      if (n - old && cur && cur.rx && !cur.dead) cur.rx.release(n - old);
      flush();
    });
    try {
      saving = await startSaving(mode, rx.manifest, spool);
    } catch (err) {
      fail(err);
      return;
    }
    if (!saving) {
      $('accept').disabled = false;
      return;
    }
    saving.done.catch(fail);
    progress = startReceivingView(rx.manifest.totalBytes);
    accepted = key;
    if (saving.plan) {
      carry = { resume: saving.plan.resume, hashes: saving.plan.hashes };
      progress.add(saving.plan.held);
      if (saving.plan.held) $('progress-note').textContent = `Resumed: ${humanBytes(saving.plan.held)} were already in the folder and verified again.`;
    }
    if (r.dead || rx.state !== 'offered') {
      // the connection dropped while the user chose: the next round's offer continues
      showReconnecting(saving);
      return;
    }
    if (saving.plan) {
      rx.accept(saving.plan.resume, saving.plan.hashes);
    } else {
      rx.accept();
    }
    flush();
    if (!rx.manifest.files.length) for (const e of rx.events()) handle(r, e);
  }

  startRound(0);
}

// ---------------------------------------------------------------- relay (§9)

function parseDropUrl(url) {
  let u;
  try {
    u = new URL(url, location.href);
  } catch {
    return null;
  }
  const m = /\/d\/([A-Za-z0-9_-]{22})$/.exec(u.pathname);
  if (!m || u.origin !== location.origin) return null;
  return { id: m[1], secret: u.hash.slice(1) };
}

const RELAY_ERRORS = {
  unknown: 'This link is unknown: it may be mistyped or deleted.',
  expired: 'This link has expired; the files were deleted from the relay. Ask the sender to send again.',
  'used-up': 'This link was already used as many times as the sender allowed; the files were deleted.',
  deleted: 'The sender deleted these files from the relay.',
  locked: 'This link was locked after too many wrong passwords; the files were deleted.',
  busy: 'This link is being downloaded elsewhere right now. Try again later.',
  'not-ready': 'The sender is still uploading these files. Try again in a few minutes.',
  'rate-limited': 'Too many requests from this network. Wait a minute and try again.',
};

async function relayError(resp) {
  let code = 'internal';
  try {
    code = (await resp.json()).code || code;
  } catch {
    // not JSON
  }
  return new P.BeamError(code === 'auth' ? 'wrong-password' : code, `relay ${resp.status} ${code}`,
    RELAY_ERRORS[code] || (code === 'auth' ? 'The password is wrong.' : `The relay refused the request (${String(code).slice(0, 40)}).`));
}

async function api(path, opts = {}) {
  let resp;
  try {
    resp = await fetch(path, { cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer', ...opts });
  } catch {
    throw new P.BeamError('unreachable', 'fetch failed', 'Cannot reach the ScanBeam server. Check the connection and reload.');
  }
  if (!resp.ok) throw await relayError(resp);
  return resp;
}

function askPassword(again) {
  show('connecting', false);
  show('password');
  $('password-error').textContent = again ? 'That password is wrong. Try again.' : '';
  setState('password', 'These files are protected by a password.');
  $('password-input').value = '';
  $('password-input').focus();
  return new Promise((resolve) => {
    $('password').onsubmit = (ev) => {
      ev.preventDefault();
      const pw = $('password-input').value;
      if (!pw) return;
      show('password', false);
      show('connecting');
      setState('connecting', 'Checking the password…');
      resolve(pw);
    };
  });
}

async function receiveRelay(id, secretText, note = '') {
  const secret = P.unb64url(secretText);
  if (!secret || secret.length !== 32) throw new P.BeamError('bad-link', 'bad fragment', 'This link is damaged or incomplete: check that it was copied whole.');
  setState('connecting', note || 'Opening the link…');
  prepareServiceWorker().catch(() => {});
  const base = `/v1/drops/${id}`;
  const info = await (await api(base)).json();
  if (info.state !== 'available') throw new P.BeamError('not-ready', 'uploading', RELAY_ERRORS['not-ready']);
  let keys;
  let claim;
  let again = false;
  for (let attempt = 0; attempt < 10; attempt++) {
    let pwKey = null;
    if (info.kdf) {
      const pw = await askPassword(again);
      await new Promise((r) => setTimeout(r, 30)); // let the page paint "Checking…"
      pwKey = P.passwordKey(pw, P.unb64(info.kdf.salt), info.kdf.ops, info.kdf.mem);
    }
    keys = P.relayKeys(secret, pwKey);
    try {
      claim = (await (await api(`${base}/claim`, { method: 'POST', headers: { Authorization: `Bearer ${P.b64url(keys.auth)}` } })).json()).claim;
      break;
    } catch (err) {
      if (err.code !== 'wrong-password' || !info.kdf) throw err.code === 'wrong-password' ? new P.BeamError('wrong-key', 'auth', P.WRONG_KEY_MESSAGE) : err;
      again = true;
    }
  }
  if (!claim) throw new P.BeamError('wrong-password', 'too many tries', 'Too many wrong passwords.');
  const headers = { Authorization: `Bearer ${P.b64url(keys.auth)}`, 'X-Claim': claim };
  const range = async (start, end) => {
    const resp = await api(`${base}/blob`, { headers: { ...headers, Range: `bytes=${start}-${end === null ? '' : end - 1}` } });
    if (resp.status !== 206) throw new P.BeamError('protocol', 'no range support', 'The relay did not answer a ranged request.');
    return resp;
  };
  const bytes = async (start, end) => new Uint8Array(await (await range(start, end)).arrayBuffer());
  setState('connecting', 'Reading the list of files…');
  const reader = new P.DropReader(keys);
  const [indexOffset, indexLength] = reader.parseTrailer(await bytes(info.size - P.TRAILER_SIZE, info.size), info.size);
  reader.readIndex(await bytes(indexOffset, indexOffset + indexLength));
  const manifest = reader.readManifest(await bytes(0, reader.manifestEnd));
  const mode = await new Promise((resolve) => {
    showOffer(manifest, resolve, () => resolve(null), { resumeNote: note });
  });
  if (!mode) {
    fail(new P.BeamError('declined', 'declined', 'You declined the download; nothing was saved. The link can still be used.'));
    return;
  }
  $('accept').disabled = true;
  let consumed = 0;
  let wake = null;
  const spool = new Spool((n) => {
    consumed += n;
    if (wake) wake();
  });
  const saving = await startSaving(mode, manifest, spool, { canResume: false });
  if (!saving) {
    $('accept').disabled = false;
    return receiveRelay(id, secretText, note);
  }
  saving.done.catch((err) => spool.fail(err));
  const progress = startReceivingView(manifest.totalBytes);
  state.cleanup = (err) => spool.fail(err);
  const digests = [];
  let pushed = 0;
  const hashes = manifest.files.map(() => new P.Sha256());
  // One streamed request from the first file to the end; the spool bounds what is held.
  // A broken response is resumed with a Range request from the exact byte reached.
  const files = manifest.files;
  let fileIx = 0;
  let pos = files.length ? reader.fileRange(0, 0)[0] : indexOffset;
  if (files.length) reader.startFile(0, 0, hashes[0]);
  let retries = 0;
  while (pos < indexOffset) {
    let body;
    try {
      body = (await range(pos, indexOffset)).body.getReader();
      for (;;) {
        const { value, done } = await body.read();
        if (done) break;
        retries = 0;
        let rest = value;
        while (rest.length) {
          if (fileIx >= files.length) throw new P.BeamError('integrity', 'extra bytes', 'The relay sent more data than expected; nothing was saved as complete.');
          const fileEnd = reader.index.offsets[fileIx + 1];
          const take = Math.min(rest.length, fileEnd - pos);
          for (const e of reader.feed(rest.subarray(0, take))) handleEvent(e);
          pos += take;
          rest = rest.subarray(take);
          if (pos === fileEnd) {
            fileIx += 1;
            if (fileIx < files.length) reader.startFile(fileIx, 0, hashes[fileIx]);
          }
        }
        // backpressure: the saving side must keep up before more is read from the network
        while (pushed - consumed > RELAY_HELD) {
          if (spool.error) throw spool.error;
          await new Promise((r) => {
            wake = r;
          });
        }
      }
    } catch (err) {
      if (err instanceof P.BeamError || retries >= 5) throw err instanceof P.BeamError ? err : new P.BeamError('connection', String(err), 'The download from the relay broke off several times; try again later.');
      retries += 1;
      setState('receiving', 'The connection dropped; resuming the download…');
      await new Promise((r) => setTimeout(r, 1000 * retries));
      continue;
    }
    if (pos < indexOffset && retries++ >= 5) throw new P.BeamError('connection', 'short body', 'The download from the relay broke off.');
  }
  if (digests.length !== files.length) throw new P.BeamError('integrity', 'truncated', 'The download ended early; nothing was saved as complete.');
  function handleEvent(e) {
    if (e.type === 'chunk') {
      spool.push(e);
      pushed += 1;
      progress.add(e.data.length);
    } else {
      digests.push(e.sha256);
      spool.verify(e.fileIx);
    }
  }
  await saving.done;
  await api(`${base}/complete`, { method: 'POST', headers });
  showDone(manifest, digests, saving.where);
}

// ---------------------------------------------------------------- start

async function main() {
  const hash = location.hash;
  await P.ready;
  if (location.pathname === '/r') {
    await receiveDirect(hash.slice(1));
  } else if (location.pathname.startsWith('/d/')) {
    const target = parseDropUrl(location.href);
    if (!target) throw new P.BeamError('bad-link', 'bad drop link', 'This link is damaged or incomplete: check that it was copied whole.');
    await receiveRelay(target.id, target.secret);
  } else {
    throw new P.BeamError('bad-link', 'no link', 'Open this page with the link the sender gave you.');
  }
}

window.addEventListener('unhandledrejection', (ev) => fail(ev.reason));
main().catch(fail);
