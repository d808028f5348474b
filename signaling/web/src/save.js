// Saving without holding a file in memory: the receiver pushes verified-in-order plaintext
// chunks into a Spool; ReadableStreams pull from it (one file at a time), optionally
// through a streamed ZIP (client-zip, stored entries, ZIP64 when needed), into a
// service-worker download or a folder picked with the File System Access API.
import { makeZip, predictLength } from 'client-zip';
import { BeamError } from './proto.js';

/**
 * Plaintext chunks between the receiver and the saving stream. ``onConsumed(n)`` is called
 * when the saving side took n chunks (the receiver grants credit then), so the number of
 * chunks held here never exceeds the sender's credit window.
 */
const COMMIT = Symbol('commit');

export class Spool {
  constructor(onConsumed) {
    this.items = [];
    this.onConsumed = onConsumed;
    this.verified = new Set();
    this.error = null;
    this._wake = null;
    this.bytesOut = 0;
  }

  push(item) {
    this.items.push(item);
    this._notify();
  }

  verify(fileIx) {
    this.verified.add(fileIx);
    this._notify();
  }

  fail(error) {
    if (!this.error) this.error = error;
    this._notify();
  }

  /** Ask the folder writer to commit what it wrote so far (the connection dropped: if the
   * page is closed while it reconnects, the next link resumes from the committed part). */
  requestCommit() {
    this.commitWanted = true;
    const w = this._commitWake;
    this._commitWake = null;
    if (w) w();
  }

  _commitSignal() {
    return new Promise((resolve) => {
      this._commitWake = () => resolve(COMMIT);
    });
  }

  /** Resolves once file ``fileIx`` was verified (for files already held in full). */
  async waitVerified(fileIx) {
    while (!this.verified.has(fileIx)) {
      if (this.error) throw this.error;
      await this._wait();
    }
  }

  _notify() {
    const w = this._wake;
    this._wake = null;
    if (w) w();
  }

  _wait() {
    return new Promise((resolve) => {
      this._wake = resolve;
    });
  }

  /**
   * A stream of file ``fileIx``'s bytes. It closes only once the file's SHA-256 matched,
   * so a download never completes with unverified content; it errors on any failure.
   */
  fileStream(fileIx) {
    let sawLast = false;
    return new ReadableStream(
      {
        pull: async (controller) => {
          for (;;) {
            if (this.error) {
              controller.error(this.error);
              return;
            }
            const head = this.items[0];
            if (head && head.fileIx === fileIx && !sawLast) {
              this.items.shift();
              if (head.data.length) {
                controller.enqueue(head.data);
                this.bytesOut += head.data.length;
              }
              if (head.last) sawLast = true;
              this.onConsumed(1);
              if (head.data.length) return;
              continue;
            }
            if (sawLast && this.verified.has(fileIx)) {
              controller.close();
              return;
            }
            await this._wait();
          }
        },
      },
      { highWaterMark: 0 },
    );
  }
}

/** A file name for the browser: the last path part (paths are checked already). */
export function baseName(path) {
  return path.split('/').pop();
}

/** One stream for the whole offer: the file itself, or a streamed ZIP of all files. */
export function offerStream(manifest, spool, zipName) {
  const files = manifest.files;
  if (files.length === 1) {
    return { stream: spool.fileStream(0), name: baseName(files[0].path), size: files[0].size, mime: 'application/octet-stream' };
  }
  const enc = new TextEncoder();
  const meta = files.map((f) => ({ name: enc.encode(f.path), size: f.size }));
  let size;
  try {
    size = Number(predictLength(meta));
  } catch {
    size = undefined;
  }
  async function* entries() {
    for (let i = 0; i < files.length; i++) {
      const f = files[i];
      yield { name: f.path, lastModified: new Date(f.mtimeMs), size: f.size, input: spool.fileStream(i) };
    }
  }
  const stream = makeZip(entries(), { length: size, buffersAreUTF8: false });
  return { stream, name: zipName, size, mime: 'application/zip' };
}

// ---------------------------------------------------------------- service-worker download

let swRegistration = null;

export function canStreamDownload() {
  return 'serviceWorker' in navigator && window.isSecureContext && typeof ReadableStream === 'function';
}

export async function prepareServiceWorker() {
  if (!canStreamDownload()) return null;
  if (!swRegistration) {
    const ready = navigator.serviceWorker.register('/sw.js', { scope: '/' }).then(() => navigator.serviceWorker.ready);
    const timeout = new Promise((resolve) => setTimeout(() => resolve(null), 10000));
    swRegistration = Promise.race([ready, timeout]).catch(() => null);
  }
  return swRegistration;
}

const randomId = () => Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * Stream ``stream`` to a download through the service worker. Resolves once the last byte
 * was handed to the browser's download; rejects if the stream fails or the user cancels.
 */
export async function saveViaServiceWorker({ stream, name, size, mime }) {
  const reg = await prepareServiceWorker();
  if (!reg || !reg.active) {
    throw new BeamError('no-save', 'no service worker',
      'This browser cannot save large files from this page (no service worker). Open the link in Chrome, Edge, Firefox or Safari 15.4+, over HTTPS.');
  }
  const id = randomId();
  const channel = new MessageChannel();
  const port = channel.port1;
  const reader = stream.getReader();
  const keepAlive = setInterval(() => reg.active && reg.active.postMessage({ type: 'ping' }), 10000);
  // the page goes away mid-download (closed, reloaded, another link opened while it was
  // reconnecting): fail the download now rather than leave it waiting for bytes forever
  const gone = () => port.postMessage({ type: 'error', message: 'the page was closed' });
  window.addEventListener('pagehide', gone);
  try {
    await new Promise((resolve, reject) => {
      port.onmessage = async ({ data }) => {
        if (data.type === 'ready') {
          const frame = document.createElement('iframe');
          frame.hidden = true;
          frame.src = `/dl/${id}/${encodeURIComponent(name)}`;
          document.body.appendChild(frame);
          setTimeout(() => frame.remove(), 60000);
        } else if (data.type === 'pull') {
          try {
            const { value, done } = await reader.read();
            if (done) {
              port.postMessage({ type: 'end' });
              resolve();
            } else {
              port.postMessage({ type: 'data', chunk: value });
            }
          } catch (err) {
            port.postMessage({ type: 'error', message: err.message || String(err) });
            reject(err);
          }
        } else if (data.type === 'cancel') {
          reader.cancel().catch(() => {});
          reject(new BeamError('cancelled', 'download cancelled', 'The download was cancelled in the browser; nothing was saved as complete.'));
        }
      };
      reg.active.postMessage({ type: 'download', id, name, size, mime }, [channel.port2]);
    });
  } finally {
    window.removeEventListener('pagehide', gone);
    clearInterval(keepAlive);
    port.close();
  }
}

// ---------------------------------------------------------------- File System Access (folder)

export function canPickFolder() {
  return typeof window.showDirectoryPicker === 'function';
}

/** Ask for a folder (must run inside a click handler). */
export async function pickFolder() {
  try {
    return await window.showDirectoryPicker({ id: 'scanbeam', mode: 'readwrite' });
  } catch (err) {
    if (err && err.name === 'AbortError') return null;
    throw err;
  }
}

const STAGING = '.scanbeam-partial';

async function dirOf(root, path, create) {
  let dir = root;
  for (const part of path.split('/').slice(0, -1)) dir = await dir.getDirectoryHandle(part, { create });
  return dir;
}

async function exists(dir, name) {
  try {
    return await dir.getFileHandle(name);
  } catch {
    return null;
  }
}

/** Staging key of an offer: the same files (paths, sizes, mtimes, chunk size) resume. */
async function stagingKey(manifest) {
  const doc = JSON.stringify([manifest.chunkSize, manifest.files.map((f) => [f.path, f.size, f.mtimeNs])]);
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(doc)));
  return Array.from(digest.slice(0, 16), (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Look in ``root`` for what an earlier, interrupted receive of the same offer left in
 * ``.scanbeam-partial/<key>/f<i>`` (docs/protocol.md §5.3, the page's variant): every whole
 * chunk written there was authenticated before it was written. Returns the ACCEPT resume
 * points, SHA-256 states over the held bytes, and the staging folder.
 */
export async function planFolder(root, manifest, { fresh = false, hasher }) {
  const cs = manifest.chunkSize;
  const staging = await (await root.getDirectoryHandle(STAGING, { create: true })).getDirectoryHandle(await stagingKey(manifest), { create: true });
  const resume = [];
  const hashes = [];
  let held = 0;
  for (let i = 0; i < manifest.files.length; i++) {
    const f = manifest.files[i];
    const n = Math.max(1, Math.ceil(f.size / cs));
    const h = hasher();
    let k = 0;
    const handle = fresh ? null : await exists(staging, `f${i}`);
    if (handle) {
      const file = await handle.getFile();
      k = file.size >= f.size ? n : Math.floor(file.size / cs);
      if (file.size > f.size) k = 0;
      const bytes = Math.min(k * cs, f.size);
      if (bytes) {
        const reader = file.slice(0, bytes).stream().getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          h.update(value);
        }
      }
      held += bytes;
    }
    resume.push(k);
    hashes.push(h);
  }
  return { resume, hashes, held, staging };
}

/**
 * Write every file into ``root`` (keeping the offer's folders) as its chunks arrive: into
 * the staging folder first, moved to its real name once its SHA-256 matched. On failure the
 * written part is kept (committed), so opening the sender's next link resumes from it.
 */
export async function saveToFolder(root, manifest, spool, plan) {
  const cs = manifest.chunkSize;
  for (let i = 0; i < manifest.files.length; i++) {
    const f = manifest.files[i];
    const n = Math.max(1, Math.ceil(f.size / cs));
    const staged = await plan.staging.getFileHandle(`f${i}`, { create: true });
    if (plan.resume[i] < n) {
      let writable = await staged.createWritable({ keepExistingData: true });
      const start = plan.resume[i] * cs;
      await writable.truncate(start);
      await writable.seek(start);
      const reader = spool.fileStream(i).getReader();
      let pos = start;
      try {
        let pending = reader.read();
        for (;;) {
          const got = await Promise.race([pending, spool._commitSignal()]);
          if (spool.commitWanted) {
            // commit what was written (a File System Access write lands only on close)
            spool.commitWanted = false;
            await writable.close();
            writable = await staged.createWritable({ keepExistingData: true });
            await writable.seek(pos);
          }
          if (got === COMMIT) continue;
          const { value, done } = got;
          if (done) break;
          await writable.write(value);
          pos += value.length;
          pending = reader.read();
        }
      } catch (err) {
        await writable.close().catch(() => {}); // keep the authenticated chunks for a resume
        throw err && err.code ? err : new BeamError('local-file', String(err), 'The browser could not write the files into the chosen folder.');
      }
      await writable.close();
    } else {
      await spool.waitVerified(i);
    }
    const dir = await dirOf(root, f.path, true);
    const name = baseName(f.path);
    if (await exists(dir, name)) await dir.removeEntry(name);
    if (typeof staged.move === 'function') {
      await staged.move(dir, name);
    } else {
      const target = await (await dir.getFileHandle(name, { create: true })).createWritable();
      await (await staged.getFile()).stream().pipeTo(target);
      await plan.staging.removeEntry(`f${i}`);
    }
  }
  const parent = await root.getDirectoryHandle(STAGING);
  await parent.removeEntry(plan.staging.name, { recursive: true });
  try {
    await root.removeEntry(STAGING); // only if empty
  } catch {
    // other interrupted offers are still staged there
  }
}
