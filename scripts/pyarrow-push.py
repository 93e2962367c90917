# pyarrow-push.py HOST:PORT CLIENTS PARAMS: CLIENTS pyarrow Flight clients (threads of this
# process; pyarrow's C++ client releases the GIL while it writes) push a PARAMS-parameter f32
# update each to round 1 of a wattagg server, as `wattagg bench serve`'s Flight row does with
# gRPC-go clients, and print the aggregate rate as JSON. Client k's token is "py-k"; its update
# is one tensor "w" (a normal sample + k), sent in 1 MiB batches built before the clock starts.
# Run it in a Python with pyarrow (scripts/pyarrow-sid.sh): $WATTAGG_PYARROW - ... < this file.
import sys, json, time, threading, numpy as np, pyarrow as pa, pyarrow.flight as fl

addr, n, params = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = np.random.default_rng(7).standard_normal(params, dtype=np.float32)
schema = pa.schema([("tensor", pa.utf8()), ("offset", pa.int64()), ("data", pa.large_binary())],
                   metadata={"wattagg.layout": json.dumps([{"name": "w", "dtype": "F32", "shape": [params]}])})


def batches(k):
    raw = (base + np.float32(k)).view(np.uint8)
    out = []
    for lo in range(0, len(raw), 1 << 20):
        buf = pa.py_buffer(raw[lo:lo + (1 << 20)])
        offsets = pa.py_buffer(np.array([0, len(buf)], dtype=np.int64))
        data = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, buf])
        out.append(pa.record_batch([pa.array(["w"]), pa.array([lo // 4], pa.int64()), data], schema=schema))
    return out


updates = [batches(k) for k in range(n)]
acks = [None] * n
start = threading.Barrier(n + 1)


def push(k):
    client = fl.connect("grpc://" + addr)
    opts = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer py-{k}".encode())])
    start.wait()
    writer, meta = client.do_put(fl.FlightDescriptor.for_path("rounds", "1"), schema, options=opts)
    for b in updates[k]:
        writer.write_batch(b)
    writer.done_writing()
    buf = meta.read()
    writer.close()
    acks[k] = json.loads(buf.to_pybytes())


threads = [threading.Thread(target=push, args=(k,)) for k in range(n)]
for t in threads:
    t.start()
start.wait()
t0 = time.time()
for t in threads:
    t.join()
dt = time.time() - t0
print(json.dumps({"clients": n, "acks": sum(1 for a in acks if a), "seconds": dt, "GB/s": n * params * 4 / dt / 1e9}))
