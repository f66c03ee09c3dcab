// An async iterator fed by push(): the chunks of a streamed completion, produced by a callback (in-thread)
// or by messages from the worker, consumed with `for await`.

export class ChunkQueue {
  constructor(onCancel) {
    this.items = [];
    this.waiting = null;
    this.done = false;
    this.error = null;
    this.onCancel = onCancel;
  }

  push(item) {
    if (this.done) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = null;
      w.resolve({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  end(error = null) {
    if (this.done) return;
    this.done = true;
    this.error = error;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = null;
      if (error) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  next() {
    if (this.items.length) return Promise.resolve({ value: this.items.shift(), done: false });
    if (this.done) return this.error ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  // Leaving a `for await` early (break) stops the generation.
  return() {
    if (!this.done && this.onCancel) this.onCancel();
    this.done = true;
    this.items = [];
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}
