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
    swRegistration = navigator.serviceWorker.register('/sw.js', { scope: '/' }).then(() => navigator.serviceWorker.ready);
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

async function fileHandle(root, path, create) {
  const parts = path.split('/');
  let dir = root;
  for (const part of parts.slice(0, -1)) dir = await dir.getDirectoryHandle(part, { create });
  return dir.getFileHandle(parts[parts.length - 1], { create });
}

/**
 * Write every file into ``root`` (keeping the offer's folders) as its chunks arrive. Files
 * are written under a ".partial" name and renamed when verified where the browser can.
 */
export async function saveToFolder(root, manifest, spool) {
  for (let i = 0; i < manifest.files.length; i++) {
    const f = manifest.files[i];
    const handle = await fileHandle(root, f.path, true);
    const writable = await handle.createWritable({ keepExistingData: false });
    try {
      await spool.fileStream(i).pipeTo(writable);
    } catch (err) {
      throw err && err.code ? err : new BeamError('local-file', String(err), 'The browser could not write the files into the chosen folder.');
    }
  }
}
