// Writes a wattagg update as an Arrow IPC stream with Arrow JS, in the schema of the README's
// "Arrow updates" section (one row per chunk: tensor utf8, offset int64, data binary; the layout
// as JSON under wattagg.layout in the schema metadata; every other key the update's metadata).
// It is the README's pyarrow write_update in JavaScript, run by tensor/arrowio's
// TestArrowJSWriter:  node write_update.mjs OUT.arrows
import { writeFileSync } from 'node:fs';
import {
  Binary, Field, Int64, RecordBatch, RecordBatchStreamWriter, Schema, Struct, Utf8, makeData, vectorFromArray,
} from 'apache-arrow';

// writeUpdate returns the stream of tensors ([{name, dtype, shape, values, scale?}], values a
// typed array) in chunks of at most chunkBytes bytes of whole elements.
export function writeUpdate(tensors, metadata = {}, chunkBytes = 4 << 20) {
  const layout = tensors.map(({ name, dtype, shape, scale }) =>
    scale === undefined ? { name, dtype, shape } : { name, dtype, shape, scale });
  const fields = [new Field('tensor', new Utf8()), new Field('offset', new Int64()), new Field('data', new Binary())];
  const schema = new Schema(fields, new Map([['wattagg.layout', JSON.stringify(layout)], ...Object.entries(metadata)]));
  const writer = new RecordBatchStreamWriter();
  writer.reset(undefined, schema);
  for (const { name, values } of tensors) {
    const size = values.BYTES_PER_ELEMENT;
    const raw = littleEndian(values);
    const step = Math.max(Math.floor(chunkBytes / size), 1) * size;
    for (let lo = 0; lo < raw.length; lo += step) {
      const cols = [
        vectorFromArray([name], new Utf8()),
        vectorFromArray([BigInt(lo / size)], new Int64()),
        vectorFromArray([raw.subarray(lo, lo + step)], new Binary()),
      ];
      const data = makeData({ type: new Struct(fields), length: 1, nullCount: 0, children: cols.map((v) => v.data[0]) });
      writer.write(new RecordBatch(schema, data));
    }
  }
  writer.finish();
  return writer.toUint8Array(true);
}

// littleEndian returns the values' bytes in little-endian order whatever the host's order.
function littleEndian(values) {
  const out = new Uint8Array(values.length * values.BYTES_PER_ELEMENT);
  const view = new DataView(out.buffer);
  const put = {
    Float32Array: (i, v) => view.setFloat32(4 * i, v, true),
    Float64Array: (i, v) => view.setFloat64(8 * i, v, true),
    Int8Array: (i, v) => view.setInt8(i, v),
    Uint32Array: (i, v) => view.setUint32(4 * i, v, true),
    Uint16Array: (i, v) => view.setUint16(2 * i, v, true), // F16 / BF16 bit patterns
  }[values.constructor.name];
  values.forEach((v, i) => put(i, v));
  return out;
}

// The update TestArrowJSWriter checks: every value is a function of its tensor and index.
const f32 = Float32Array.from({ length: 3 * 1000 }, (_, i) => i * 0.25 - 100);
const f64 = Float64Array.from({ length: 7 }, (_, i) => 1 / (i + 1));
const i8 = Int8Array.from({ length: 5 }, (_, i) => 2 * i - 4);
const bf16 = Uint16Array.from({ length: 4 }, (_, i) => 0x3f80 + i); // 1, 1.0078125, ...
const out = process.argv[2];
if (!out) {
  console.error('usage: node write_update.mjs OUT.arrows');
  process.exit(2);
}
writeFileSync(out, writeUpdate([
  { name: 'fc.weight', dtype: 'F32', shape: [3, 1000], values: f32 },
  { name: 'fc.bias', dtype: 'F64', shape: [7], values: f64 },
  { name: 'q', dtype: 'I8', shape: [5], values: i8, scale: 0.0125 },
  { name: 'emb', dtype: 'BF16', shape: [2, 2], values: bf16 },
], { num_examples: '42', client: 'js' }, 4096));
