// ScanBeam service worker: turns a stream the page produces into a file download, so a
// transfer is written to disk as it arrives and never held whole in memory.
//
// The page posts {type: 'download', id, name, size, mime} with a MessagePort; then it
// navigates a hidden iframe to /dl/<id>/<name>. This worker answers that request with a
// ReadableStream that pulls each piece from the page through the port (backpressure: the
// page sends one piece per pull, so nothing piles up here).
const pending = new Map();

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('message', (event) => {
  const msg = event.data || {};
  if (msg.type === 'ping') return; // keeps this worker alive during a long download
  if (msg.type !== 'download' || !event.ports[0] || typeof msg.id !== 'string') return;
  const port = event.ports[0];
  const stream = new ReadableStream(
    {
      pull(controller) {
        return new Promise((resolve) => {
          port.onmessage = ({ data }) => {
            if (data.type === 'data') controller.enqueue(data.chunk);
            else if (data.type === 'end') controller.close();
            else controller.error(new Error(data.message || 'transfer failed'));
            resolve();
          };
          port.postMessage({ type: 'pull' });
        });
      },
      cancel() {
        port.postMessage({ type: 'cancel' });
      },
    },
    { highWaterMark: 8 },
  );
  pending.set(msg.id, { stream, name: msg.name, size: msg.size, mime: msg.mime });
  port.postMessage({ type: 'ready' });
});

function disposition(name) {
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, '_');
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`;
}

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin || !url.pathname.startsWith('/dl/')) return;
  const id = url.pathname.split('/')[2];
  const entry = pending.get(id);
  if (!entry) {
    event.respondWith(new Response('This download is no longer available.', { status: 404 }));
    return;
  }
  pending.delete(id);
  const headers = {
    'Content-Type': entry.mime || 'application/octet-stream',
    'Content-Disposition': disposition(entry.name),
    'X-Content-Type-Options': 'nosniff',
    'Cache-Control': 'no-store',
  };
  if (Number.isSafeInteger(entry.size)) headers['Content-Length'] = String(entry.size);
  event.respondWith(new Response(entry.stream, { headers }));
});
