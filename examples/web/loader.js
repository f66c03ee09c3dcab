// The files of a model.omex/ folder a person picked or dropped, as [{path, file}] for omex.load (which
// finds the model's root among them, and fetches URLs itself).

/// Files from an <input type=file webkitdirectory>.
export function pickedFiles(fileList) {
  return Array.from(fileList).map((file) => ({ path: file.webkitRelativePath || file.name, file }));
}

/// Files from a drop: folders are walked (DataTransferItem.webkitGetAsEntry), loose files kept as they are.
export async function droppedFiles(dataTransfer) {
  const entries = Array.from(dataTransfer.items || [])
    .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
    .filter(Boolean);
  if (!entries.length) return Array.from(dataTransfer.files).map((file) => ({ path: file.name, file }));
  const out = [];
  async function walk(entry, path) {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      out.push({ path: path + entry.name, file });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, path + entry.name + "/");
      }
    }
  }
  for (const e of entries) await walk(e, "");
  return out;
}
