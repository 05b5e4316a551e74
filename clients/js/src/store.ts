/**
 * Durable local state: the outbox, channel positions and cached documents.
 * IndexedDB in browsers (the store name is the database name), memory for ":memory:"
 * or where IndexedDB does not exist (Node). The outbox is shared by the tabs of a store.
 */
import type { Document, OutboxEntry, Position } from "./types.js";

export interface Storage {
  readonly durable: boolean;
  add(entry: Omit<OutboxEntry, "seq" | "key">, clientId: string): Promise<OutboxEntry>;
  pending(limit?: number): Promise<OutboxEntry[]>;
  remove(seq: number): Promise<void>;
  replacePayload(seq: number, payload: any): Promise<void>;
  meta(key: string, make: () => string): Promise<string>;
  position(channel: string): Promise<Position | null>;
  /** Keeps the furthest position (tabs write concurrently); a new epoch replaces the old one. */
  setPosition(channel: string, pos: Position, force?: boolean): Promise<void>;
  putDocument(doc: Document): Promise<void>;
  dropDocument(collection: string, id: string): Promise<void>;
  documents(): Promise<Document[]>;
  close(): void;
}

export class MemoryStorage implements Storage {
  readonly durable = false;
  private seq = 0;
  private entries = new Map<number, OutboxEntry>();
  private metaMap = new Map<string, string>();
  private positions = new Map<string, Position>();
  private docs = new Map<string, Document>();

  async add(e: Omit<OutboxEntry, "seq" | "key">, clientId: string) {
    const seq = ++this.seq;
    const entry = { ...e, seq, key: `${clientId}-${seq}` } as OutboxEntry;
    this.entries.set(seq, entry);
    return entry;
  }
  async pending(limit = Infinity) {
    return [...this.entries.values()].sort((a, b) => a.seq - b.seq).slice(0, limit);
  }
  async remove(seq: number) {
    this.entries.delete(seq);
  }
  async replacePayload(seq: number, payload: any) {
    const e = this.entries.get(seq);
    if (e) e.payload = payload;
  }
  async meta(key: string, make: () => string) {
    if (!this.metaMap.has(key)) this.metaMap.set(key, make());
    return this.metaMap.get(key)!;
  }
  async position(channel: string) {
    return this.positions.get(channel) ?? null;
  }
  async setPosition(channel: string, pos: Position, force = false) {
    const old = this.positions.get(channel);
    if (force || !old || old.epoch !== pos.epoch || pos.offset > old.offset) this.positions.set(channel, pos);
  }
  async putDocument(doc: Document) {
    this.docs.set(`${doc.collection}/${doc.id}`, doc);
  }
  async dropDocument(collection: string, id: string) {
    this.docs.delete(`${collection}/${id}`);
  }
  async documents() {
    return [...this.docs.values()];
  }
  close() {}
}

const req = <T>(r: IDBRequest<T>) =>
  new Promise<T>((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });

export class IdbStorage implements Storage {
  readonly durable = true;
  private constructor(private db: IDBDatabase) {}

  static async open(name: string, idb: IDBFactory): Promise<IdbStorage> {
    const open = idb.open(name, 1);
    open.onupgradeneeded = () => {
      const db = open.result;
      db.createObjectStore("outbox", { keyPath: "seq", autoIncrement: true });
      db.createObjectStore("meta");
      db.createObjectStore("positions");
      db.createObjectStore("documents");
    };
    return new IdbStorage(await req(open));
  }

  /** One transaction; resolves when it has committed (strict durability: on disk). */
  private tx<T>(stores: string[], mode: IDBTransactionMode, body: (t: IDBTransaction) => Promise<T> | T): Promise<T> {
    const t = (this.db.transaction as any)(stores, mode, { durability: "strict" }) as IDBTransaction;
    const done = new Promise<void>((resolve, reject) => {
      t.oncomplete = () => resolve();
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error ?? new Error("IndexedDB transaction aborted"));
    });
    return Promise.resolve(body(t)).then(async (v) => {
      await done;
      return v;
    });
  }

  add(e: Omit<OutboxEntry, "seq" | "key">, clientId: string): Promise<OutboxEntry> {
    return this.tx(["outbox"], "readwrite", async (t) => {
      const s = t.objectStore("outbox");
      const seq = (await req(s.add({ ...e }))) as number;
      const entry = { ...e, seq, key: `${clientId}-${seq}` } as OutboxEntry;
      s.put(entry);
      return entry;
    });
  }
  pending(limit?: number): Promise<OutboxEntry[]> {
    return this.tx(["outbox"], "readonly", (t) => req(t.objectStore("outbox").getAll(null, limit)) as Promise<OutboxEntry[]>);
  }
  remove(seq: number): Promise<void> {
    return this.tx(["outbox"], "readwrite", (t) => void t.objectStore("outbox").delete(seq));
  }
  replacePayload(seq: number, payload: any): Promise<void> {
    return this.tx(["outbox"], "readwrite", async (t) => {
      const s = t.objectStore("outbox");
      const e = await req(s.get(seq));
      if (e) s.put({ ...e, payload });
    });
  }
  meta(key: string, make: () => string): Promise<string> {
    return this.tx(["meta"], "readwrite", async (t) => {
      const s = t.objectStore("meta");
      let v = (await req(s.get(key))) as string | undefined;
      if (v === undefined) {
        v = make();
        s.put(v, key);
      }
      return v;
    });
  }
  position(channel: string): Promise<Position | null> {
    return this.tx(["positions"], "readonly", async (t) => ((await req(t.objectStore("positions").get(channel))) as Position) ?? null);
  }
  setPosition(channel: string, pos: Position, force = false): Promise<void> {
    return this.tx(["positions"], "readwrite", async (t) => {
      const s = t.objectStore("positions");
      const old = (await req(s.get(channel))) as Position | undefined;
      if (force || !old || old.epoch !== pos.epoch || pos.offset > old.offset) s.put(pos, channel);
    });
  }
  putDocument(doc: Document): Promise<void> {
    return this.tx(["documents"], "readwrite", (t) => void t.objectStore("documents").put(doc, `${doc.collection}/${doc.id}`));
  }
  dropDocument(collection: string, id: string): Promise<void> {
    return this.tx(["documents"], "readwrite", (t) => void t.objectStore("documents").delete(`${collection}/${id}`));
  }
  documents(): Promise<Document[]> {
    return this.tx(["documents"], "readonly", (t) => req(t.objectStore("documents").getAll()) as Promise<Document[]>);
  }
  close() {
    this.db.close();
  }
}

export async function openStorage(name: string): Promise<Storage> {
  const idb = (globalThis as any).indexedDB as IDBFactory | undefined;
  if (name === ":memory:" || !idb) return new MemoryStorage();
  return IdbStorage.open(name, idb);
}
