// Package arrowio moves model updates (tensor.Set) as Apache Arrow data: IPC streams, for
// clients that push updates over a network (Arrow Flight DoPut or an HTTP body), and IPC files,
// that are mapped back without copying. It is built on github.com/apache/arrow-go/v18.
//
// # Schema
//
// An update is a table with one row per chunk, a run of consecutive elements of one tensor:
//
//	tensor  utf8 (or large_utf8, or a dictionary of either)  the tensor's name
//	offset  int64                                           element offset of the chunk in its tensor
//	data    binary or large_binary                          the chunk's elements, raw little-endian bytes
//
// Columns are matched by name, in any order, and may be declared nullable, but no value may be
// null. The schema's metadata carries what a .safetensors header carries, so that the whole
// layout is known from the schema message, before any tensor byte:
//
//	wattagg.layout  JSON array, in the Set's tensor order:
//	                [{"name": "fc.weight", "dtype": "F32", "shape": [512, 784]},
//	                 {"name": "fc.q", "dtype": "I8", "shape": [512], "scale": 0.0125}, ...]
//	                dtype as safetensors spells it: F32 F64 F16 BF16 I8 U32; "scale" only for
//	                I8 (finite, non-zero; default 1); no other keys
//	any other key   one entry of the Set's Metadata (num_examples, client id, ...)
//
// Chunks of one tensor come in order: the first at element 0, each where the previous one
// ended, a whole number of elements each, exactly covering the tensor, never overlapping. A
// batch may hold chunks of several tensors, in any order between tensors; tensors with no
// elements need no chunk. Record batches must be uncompressed, little-endian, with 8-byte
// aligned buffers (as every Arrow writer makes them).
//
// A pyarrow client (numpy arrays; for bfloat16 from torch, send t.view(torch.int16).numpy()
// with dtype "BF16"):
//
//	import json, numpy as np, pyarrow as pa
//
//	DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16", "int8": "I8", "uint32": "U32"}
//
//	def write_update(sink, tensors, metadata={}, chunk_bytes=4 << 20):
//	    """tensors: [(name, numpy array)] in model order."""
//	    layout = [{"name": n, "dtype": DTYPES[a.dtype.name], "shape": list(a.shape)} for n, a in tensors]
//	    schema = pa.schema([("tensor", pa.utf8()), ("offset", pa.int64()), ("data", pa.large_binary())],
//	                       metadata={"wattagg.layout": json.dumps(layout), **metadata})
//	    with pa.ipc.new_stream(sink, schema) as w:
//	        for name, a in tensors:
//	            raw = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
//	            step = max(chunk_bytes // a.itemsize, 1) * a.itemsize
//	            for lo in range(0, len(raw), step):
//	                w.write_batch(pa.record_batch(
//	                    [pa.array([name]), pa.array([lo // a.itemsize], pa.int64()),
//	                     pa.array([raw[lo:lo + step].tobytes()], pa.large_binary())], schema=schema))
//
// (pa.py_buffer(raw[lo:lo+step]) with pa.Array.from_buffers avoids the tobytes copy.)
//
// # Reading
//
// NewStreamReader is the decoder a server uses: Header (layout, I8 scales, metadata) is known
// once the schema message is read, before any batch, so an update can be checked against the
// round and refused before its body is read; Next then yields chunks one by one as batches
// arrive, each checked against the layout; at the end every tensor must be complete. Its
// memory is one batch: message bodies are read into a buffer that is reused batch after batch.
// ReadStream assembles a whole Set from a stream; ReadFile maps an IPC file and returns a Set
// whose tensors are views of the mapping where their bytes are contiguous and aligned (always,
// for files WriteFile wrote), copies otherwise.
//
// Hostile input costs bounded memory and time: limits (WithMaxMetadataBytes, WithMaxTensors,
// WithMaxBatchBytes, WithMaxTotalBytes) are checked before what they bound is allocated or
// read; every message's flatbuffer is checked (kind, body length, buffers inside the body and
// aligned, no compression) before Arrow decodes it; decoded columns are validated (offsets,
// nulls, dictionary indices) before use; Arrow's panics on malformed input become ErrFormat
// errors. Errors are one line naming the source, the tensor and the element offset, and wrap
// ErrFormat, ErrSchema, ErrChunk, ErrIncomplete or ErrLimit (layout errors also
// tensor.ErrDType, tensor.ErrShape or tensor.ErrDuplicateName).
//
// # Writing
//
// WriteSet writes a Set as a stream of record batches of about WithBatchBytes (default 4 MiB);
// NewWriter writes chunk by chunk; WriteFile writes an IPC file atomically. Tensor bytes are
// not copied where Arrow allows: a chunk of at least a quarter batch is its own record batch
// whose data buffer is the tensor's memory; only smaller chunks are copied, to share a batch.
package arrowio
