/**
 * Versioned documents through the outbox, with an optimistic local view: the server's copy
 * with the pending writes replayed on top. A refused write leaves the outbox and the view rolls
 * back by itself; a 409 also stores the server's current document, so the view shows the truth.
 */
import type { Client } from "./client.js";
import { ServerError } from "./errors.js";
import type { Document, OutboxEntry, Write } from "./types.js";

export const docPath = (collection: string, id?: string) =>
  `/api/collections/${encodeURIComponent(collection)}/documents` + (id === undefined ? "" : `/${encodeURIComponent(id)}`);

/** The current document a 409 carries. */
export function conflictDocument(e: ServerError): Document | null {
  const d = e.data?.document ?? e.data?.current;
  return d && typeof d === "object" ? d : null;
}

const randomDocId = () => Array.from({ length: 8 }, () => Math.floor(Math.random() * 256).toString(16).padStart(2, "0")).join("");

export class Collection<D = any> {
  constructor(private client: Client, readonly name: string) {}

  /** The optimistic view of one document (no network); null when unknown or deleted. */
  local(id: string): Document<D> | null {
    let doc: Document<D> | null = (this.client.serverDocument(this.name, id) as Document<D>) ?? null;
    if (doc) doc = { ...doc };
    for (const e of this.client.pending(`${this.name}/${id}`)) {
      if (e.kind === "doc.create") doc = { id, collection: this.name, version: 0, data: e.payload.data, pending: true };
      else if (e.kind === "doc.update" && doc) doc = { ...doc, data: e.payload.data, pending: true };
      else if (e.kind === "doc.patch" && doc) doc = { ...doc, data: { ...(doc.data as any), ...e.payload.data }, pending: true };
      else if (e.kind === "doc.delete") doc = null;
    }
    return doc;
  }

  /** Every cached document of this collection, pending writes applied (no network). */
  list(): Document<D>[] {
    const ids = new Set(this.client.cachedDocuments(this.name).map((d) => d.id));
    for (const e of this.client.pending()) if (e.kind.startsWith("doc.") && e.target.startsWith(this.name + "/")) ids.add(e.target.slice(this.name.length + 1));
    return [...ids].map((id) => this.local(id)).filter((d): d is Document<D> => d !== null);
  }

  /** The local view; fetched first when nothing is cached and the client is online. */
  async get(id: string): Promise<Document<D> | null> {
    if (!this.local(id) && this.client.state === "connected") await this.fetch(id);
    return this.local(id);
  }

  /** Queues a create; the id is chosen here so the document is usable offline at once. */
  create(data: D, opts: { id?: string } = {}): Promise<Write<Document<D>>> {
    return this.client.queue("doc.create", `${this.name}/${opts.id ?? randomDocId()}`, { data });
  }

  /** Queues a replace; with `version` the server refuses it (409, rolled back) when the document moved on. */
  update(id: string, data: D, opts: { version?: number } = {}): Promise<Write<Document<D>>> {
    return this.client.queue("doc.update", `${this.name}/${id}`, { data, version: opts.version ?? null });
  }

  patch(id: string, data: Partial<D>): Promise<Write<Document<D>>> {
    return this.client.queue("doc.patch", `${this.name}/${id}`, { data });
  }

  delete(id: string): Promise<Write<{ id: string; deleted: true }>> {
    return this.client.queue("doc.delete", `${this.name}/${id}`, {});
  }

  /** Reads the server's copy into the cache. */
  async fetch(id: string): Promise<Document<D> | null> {
    try {
      const doc = await this.client.rest<Document<D>>("GET", docPath(this.name, id));
      this.client.putDocument({ ...doc, collection: this.name });
      return doc;
    } catch (e) {
      if (e instanceof ServerError && e.status === 404) {
        this.client.dropDocument(this.name, id);
        return null;
      }
      throw e;
    }
  }

  /** Fetches every document the caller may read into the cache. */
  async load(limit = 100): Promise<Document<D>[]> {
    let after: string | null = null;
    for (;;) {
      const q: string = `?limit=${limit}` + (after ? `&after=${encodeURIComponent(after)}` : "");
      const page: any = await this.client.rest("GET", docPath(this.name) + q);
      for (const d of page.documents ?? []) this.client.putDocument({ ...d, collection: this.name });
      after = page.next ?? null;
      if (!after) return this.list();
    }
  }

  /** Keeps the cache current from the collection's change events. */
  watch(handler?: (event: any) => void) {
    return this.client.subscribe(`collections.${this.name}`, (event) => {
      const data = event.data ?? {};
      const doc = data.document ?? data;
      if (doc && typeof doc === "object" && "id" in doc) {
        if (event.type === "DOCUMENT_DELETED") this.client.dropDocument(this.name, doc.id);
        else if (event.type === "DOCUMENT_CREATED" || event.type === "DOCUMENT_UPDATED") {
          const mine = this.client.serverDocument(this.name, doc.id);
          if (!mine || !(mine.version > doc.version)) this.client.putDocument({ ...doc, collection: this.name });
        }
      }
      return handler?.(event);
    });
  }
}

/** Sends one queued document write (by the leader); returns the server's document. */
export async function sendDocumentWrite(client: Client, entry: OutboxEntry): Promise<any> {
  const slash = entry.target.indexOf("/");
  const collection = entry.target.slice(0, slash);
  const id = entry.target.slice(slash + 1);
  const headers = { "Idempotency-Key": entry.key };
  const p = entry.payload;
  let doc: any;
  try {
    if (entry.kind === "doc.create") doc = await client.rest("POST", docPath(collection), { id, data: p.data }, { headers });
    else if (entry.kind === "doc.update") {
      const body: any = { data: p.data };
      if (p.version != null) body.version = p.version;
      doc = await client.rest("PUT", docPath(collection, id), body, { headers });
    } else if (entry.kind === "doc.patch") doc = await client.rest("PATCH", docPath(collection, id), { data: p.data }, { headers });
    else {
      await client.rest("DELETE", docPath(collection, id), undefined, { headers, allow: [404] });
      client.dropDocument(collection, id);
      return { id, deleted: true };
    }
  } catch (e) {
    const current = e instanceof ServerError && e.status === 409 ? conflictDocument(e) : null;
    if (!current) throw e;
    const cur = { ...current, collection };
    if (JSON.stringify(cur.data) === JSON.stringify(p.data) && (cur.updated_by ?? cur.created_by) === client.userId) {
      doc = cur; // our own write, whose answer was lost: it is applied
    } else {
      client.putDocument(cur); // the view rolls back to the server's truth
      throw e;
    }
  }
  doc = { ...doc, collection };
  const old = client.serverDocument(collection, id);
  client.putDocument(doc);
  // Later queued updates that expected the version we just replaced now expect ours:
  // one's own queued writes do not conflict with each other.
  const base = p.version ?? old?.version;
  if (base != null) {
    for (const later of await client.storage.pending()) {
      if (later.seq > entry.seq && later.kind === "doc.update" && later.target === entry.target && later.payload.version === base) {
        const payload = { ...later.payload, version: doc.version };
        await client.storage.replacePayload(later.seq, payload);
        client.post({ t: "rebased", seq: later.seq, payload });
      }
    }
  }
  return doc;
}
