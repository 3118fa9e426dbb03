"""A client of StreamShield that shares no code with it.

Its stubs are generated at run time from `proto/` by grpcio-tools (its own
protoc), and it sends what an outsider may send: extreme integers, enum
values no version knows, requests far past the limits, bytes that are not
a message at all. Each case names the status it must get; the run ends by
checking that nothing the refused requests touched changed and that every
node still answers.

    python outsider.py --proto-dir proto/proto --endpoints H:P,H:P,H:P

With `--tls-dir` (a cluster made by `streamshield local up --tls`) it runs
the cases of authentication and authorization instead: no credentials, a
token the cluster never made, a token held to its grants, the Raft port.

Exit status 0 when every case got its status, 1 otherwise (each miss is
printed). `server/tests/outsider_client.rs` runs it against a real cluster.
"""

import argparse
import importlib
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

U32 = 2**32 - 1
U64 = 2**64 - 1


def generate(proto_dir, out):
    """Stubs for every `.proto` under proto_dir, importable from out."""
    files = []
    for root, _, names in os.walk(proto_dir):
        files += [os.path.join(root, n) for n in names if n.endswith(".proto")]
    args = ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + files) != 0:
        sys.exit(f"protoc failed on {proto_dir}")
    sys.path.insert(0, out)


class Outsider:
    def __init__(self, endpoints, credentials=None):
        self.m = {
            n: importlib.import_module(f"streamshield.v1.{n}_pb2")
            for n in ["admin", "state", "stream", "task", "errors", "auth", "raft"]
        }
        self.g = {
            n: importlib.import_module(f"streamshield.v1.{n}_pb2_grpc")
            for n in ["admin", "state", "stream", "task", "auth", "raft"]
        }
        self.endpoints = endpoints
        self.credentials = credentials
        self.misses = []
        self.channel = self.leader_channel()
        ch = self.channel
        self.admin = self.g["admin"].AdminStub(ch)
        self.state = self.g["state"].StateStub(ch)
        self.streams = self.g["stream"].StreamsStub(ch)
        self.tasks = self.g["task"].TasksStub(ch)

    def channel_to(self, endpoint, credentials=None):
        big = 64 << 20
        options = [("grpc.max_send_message_length", big), ("grpc.max_receive_message_length", big)]
        credentials = credentials or self.credentials
        if credentials is None:
            return grpc.insecure_channel(endpoint, options=options)
        return grpc.secure_channel(endpoint, credentials, options=options)

    def leader_channel(self):
        A = self.m["admin"]
        deadline = time.time() + 30
        while time.time() < deadline:
            for e in self.endpoints:
                ch = self.channel_to(e)
                try:
                    s = self.g["admin"].AdminStub(ch).Status(A.StatusRequest(), timeout=5)
                    if s.role == A.ROLE_LEADER:
                        self.channel_target = e
                        return ch
                except grpc.RpcError:
                    pass
                ch.close()
            time.sleep(0.1)
        sys.exit("no leader within 30 s")

    def detail(self, err):
        """The `ErrorDetail` of a refusal, decoded from its trailers."""
        for key, value in err.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                d = self.m["errors"].ErrorDetail()
                d.ParseFromString(value)
                return d
        return None

    def expect(self, name, method, request, code, check=None, within_s=10, metadata=None):
        """Calls method; a miss unless it ends with `code` (and check(detail
        or response) holds) within within_s seconds."""
        start = time.time()
        try:
            response = method(request, timeout=within_s, metadata=metadata)
            got, seen = grpc.StatusCode.OK, response
            message = ""
        except grpc.RpcError as err:
            got, seen, message = err.code(), self.detail(err), err.details()
        took = time.time() - start
        ok = got == code and (check is None or check(seen))
        print(f"{'ok  ' if ok else 'MISS'} {name}: {got.name} {message[:120]!r} ({took * 1000:.0f} ms)")
        if not ok:
            self.misses.append(f"{name}: expected {code.name}, got {got.name} {message[:200]!r} {repr(seen)[:200]}")
        return seen

    def raw(self, name, path, body, code):
        """Sends bytes that need not be a message at all to a unary method."""
        call = self.channel.unary_unary(
            path, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        self.expect(name, call, body, code)


def run(o):
    A, S, R, T = o.m["admin"], o.m["state"], o.m["stream"], o.m["task"]
    C = grpc.StatusCode
    put = lambda table, key=b"k", value=b"v": S.Op(state=table, key=key, put=S.Put(value=value))

    o.expect("create a job", o.admin.CreateJob, A.CreateJobRequest(job="outside", key_groups=16), C.OK)
    o.expect("a first write", o.state.Write, S.WriteRequest(job="outside", ops=[put("s")]), C.OK)
    o.expect("a stream", o.streams.CreateStream,
             R.CreateStreamRequest(job="outside", stream="out", partitions=2), C.OK)
    lease = o.expect("a lease", o.tasks.AcquireLease,
                     T.AcquireLeaseRequest(job="outside", task=0, key_group_start=0, key_group_end=16), C.OK)
    gen = lease.generation

    # Jobs and their tables.
    o.expect("key groups at u32::MAX", o.admin.CreateJob,
             A.CreateJobRequest(job="wide", key_groups=U32), C.INVALID_ARGUMENT)
    o.expect("100,000 tables in one job", o.admin.CreateJob,
             A.CreateJobRequest(job="wide", tables=[A.TableMode(state=f"t{i}") for i in range(100_000)]),
             C.INVALID_ARGUMENT, within_s=5)
    o.expect("a table declared twice", o.admin.CreateJob,
             A.CreateJobRequest(job="wide", tables=[A.TableMode(state="t"), A.TableMode(state="t", mode=1)]),
             C.INVALID_ARGUMENT)
    o.expect("a write mode no version knows", o.admin.CreateJob,
             A.CreateJobRequest(job="wide", tables=[A.TableMode(state="t", mode=99)]), C.INVALID_ARGUMENT)
    o.expect("a key placement no version knows", o.admin.CreateJob,
             A.CreateJobRequest(job="wide", tables=[A.TableMode(state="t", placement=-7)]), C.INVALID_ARGUMENT)
    o.expect("a job of its own for prefix-placed tables", o.admin.CreateJob,
             A.CreateJobRequest(job="placing", tables=[A.TableMode(state="whole")]), C.OK)
    o.expect("a prefix-placed table", o.admin.SetTableMode,
             A.SetTableModeRequest(job="placing", state="placed", mode=0, placement=1), C.OK)
    o.expect("an existing table placed anew", o.admin.SetTableMode,
             A.SetTableModeRequest(job="placing", state="whole", mode=0, placement=1), C.FAILED_PRECONDITION)
    for name, key in [("a placement length past the key", b"\xff\xffshort"), ("a one-byte key", b"\x01"),
                      ("an empty-bodied length", b"\x00")]:
        o.expect(f"prefix-placed write: {name}", o.state.Write,
                 S.WriteRequest(job="placing", ops=[put("placed", key=key)]), C.INVALID_ARGUMENT)
        o.expect(f"prefix-placed read: {name}", o.state.Get,
                 S.GetRequest(job="placing", state="placed", key=key), C.INVALID_ARGUMENT)
    o.expect("a placed write", o.state.Write,
             S.WriteRequest(job="placing", ops=[put("placed", key=b"\x00\x01uentry")]), C.OK)
    o.expect("the placing job deleted", o.admin.DeleteJob, A.DeleteJobRequest(job="placing"), C.OK)
    o.expect("a job name with a NUL", o.admin.CreateJob, A.CreateJobRequest(job="a\0b"), C.INVALID_ARGUMENT)
    o.expect("one write of 10,000 new tables", o.state.Write,
             S.WriteRequest(job="outside", ops=[put(f"t{i}") for i in range(10_000)]),
             C.RESOURCE_EXHAUSTED, within_s=5)

    # State.
    o.expect("shard u32::MAX", o.state.Get, S.GetRequest(shard=U32, job="outside", state="s", key=b"k"),
             C.NOT_FOUND, lambda d: d is not None and d.not_found.shard == U32)
    o.expect("a consistency no version knows", o.state.Get,
             S.GetRequest(job="outside", state="s", key=b"k", consistency=77), C.INVALID_ARGUMENT)
    o.expect("key groups past the job's", o.state.Scan,
             S.ScanRequest(job="outside", state="s", key_group_start=0, key_group_end=U32, limit=U32),
             C.INVALID_ARGUMENT)
    o.expect("a seq without a client id", o.state.Write,
             S.WriteRequest(job="outside", ops=[put("s", value=b"x")], seq=U64), C.INVALID_ARGUMENT)
    o.expect("a client id nobody handed out", o.state.Write,
             S.WriteRequest(job="outside", ops=[put("s", value=b"x")], client_id=U64, seq=1),
             C.FAILED_PRECONDITION)
    o.expect("100,001 ops and conditions", o.state.Write,
             S.WriteRequest(job="outside", ops=[put("s", value=b"x")],
                            conditions=[S.Condition(state="s", key=b"k", absent=True)] * 100_000),
             C.INVALID_ARGUMENT)

    # Streams.
    o.expect("partitions u32::MAX", o.streams.CreateStream,
             R.CreateStreamRequest(job="outside", stream="huge", partitions=U32), C.INVALID_ARGUMENT)
    o.expect("append to partition u32::MAX", o.streams.Append,
             R.AppendRequest(job="outside", stream="out", partition=U32, records=[R.Record(value=b"x")]),
             C.INVALID_ARGUMENT)
    o.expect("200,000 records in one append", o.streams.Append,
             R.AppendRequest(job="outside", stream="out", partition=0, records=[R.Record()] * 200_000),
             C.INVALID_ARGUMENT)
    o.expect("a read from offset u64::MAX", o.streams.Read,
             R.ReadRequest(job="outside", stream="out", partition=0, from_offset=U64, max_records=U32,
                           max_bytes=U64),
             C.OK, lambda r: len(r.records) == 0)

    # Tasks.
    o.expect("task index u32::MAX", o.tasks.AcquireLease,
             T.AcquireLeaseRequest(job="outside", task=U32, key_group_start=0, key_group_end=1),
             C.INVALID_ARGUMENT)
    o.expect("key groups past the job's, in a lease", o.tasks.AcquireLease,
             T.AcquireLeaseRequest(job="outside", task=1, key_group_start=U32 - 1, key_group_end=U32),
             C.INVALID_ARGUMENT)
    o.expect("generation u64::MAX", o.tasks.StageWrites,
             T.StageWritesRequest(job="outside", task=0, generation=U64, epoch=1, seq_from=1, ops=[put("s")]),
             C.FAILED_PRECONDITION, lambda d: d is not None and (d.stale_lease.held, d.stale_lease.current) == (U64, gen))
    o.expect("seqs past u64::MAX", o.tasks.StageWrites,
             T.StageWritesRequest(job="outside", task=0, generation=gen, epoch=1, seq_from=U64,
                                  ops=[put("s"), put("s")]),
             C.INVALID_ARGUMENT)
    o.expect("epoch u64::MAX", o.tasks.StageWrites,
             T.StageWritesRequest(job="outside", task=0, generation=gen, epoch=U64, seq_from=1, ops=[put("s")]),
             C.INVALID_ARGUMENT)
    o.expect("a staged write to a table past the limit", o.tasks.StageWrites,
             T.StageWritesRequest(job="outside", task=0, generation=gen, epoch=1, seq_from=1,
                                  ops=[put(f"t{i}") for i in range(2_000)]),
             C.RESOURCE_EXHAUSTED)
    o.expect("a commit of seqs up to u64::MAX", o.tasks.CommitEpoch,
             T.CommitEpochRequest(job="outside", task=0, generation=gen, epoch=1, last_seq=U64),
             C.FAILED_PRECONDITION,
             lambda d: d is not None and [(m.first, m.last) for m in d.missing_seqs.missing] == [(1, U64)])
    o.expect("a commit's tail before seq 1", o.tasks.CommitEpoch,
             T.CommitEpochRequest(job="outside", task=0, generation=gen, epoch=1, last_seq=1,
                                  ops=[put("s")] * 3),
             C.INVALID_ARGUMENT)

    # Jobs listed and deleted: a page past the bound, a name with a NUL, a
    # job whose task holds a lease (deleted only with force), one that is
    # not there.
    o.expect("a job list page of u32::MAX", o.admin.ListJobs, A.ListJobsRequest(limit=U32), C.INVALID_ARGUMENT)
    o.expect("a job list after a name with a NUL", o.admin.ListJobs,
             A.ListJobsRequest(start_after="a\0b"), C.INVALID_ARGUMENT)
    o.expect("the jobs", o.admin.ListJobs, A.ListJobsRequest(), C.OK,
             lambda r: [j.job for j in r.jobs] == ["outside"] and not r.more)
    o.expect("deleting a job whose task holds a lease", o.admin.DeleteJob,
             A.DeleteJobRequest(job="outside"), C.FAILED_PRECONDITION)
    o.expect("deleting a job that is not there", o.admin.DeleteJob,
             A.DeleteJobRequest(job="wide", force=True), C.NOT_FOUND)
    o.expect("deleting a job named with a NUL", o.admin.DeleteJob,
             A.DeleteJobRequest(job="a\0b", force=True), C.INVALID_ARGUMENT)
    save = lambda req, timeout=None, metadata=None: list(o.admin.SaveSnapshot(req, timeout=timeout, metadata=metadata))
    o.expect("a saved snapshot: a header, files, an end", save, A.SaveSnapshotRequest(), C.OK,
             lambda chunks: chunks[0].header.meta.last_log_id.index > 0 and chunks[-1].done
             and all(c.file and "/" not in c.file for c in chunks[1:-1]))
    o.expect("the tasks after task u32::MAX", o.tasks.ListTasks,
             T.ListTasksRequest(job="outside", start_after=U32), C.OK, lambda r: not r.tasks and not r.more)
    o.expect("the tasks", o.tasks.ListTasks, T.ListTasksRequest(job="outside"), C.OK,
             lambda r: [t.task for t in r.tasks] == [0] and not r.more)
    o.expect("the job's streams", o.streams.ListStreams, R.ListStreamsRequest(job="outside"), C.OK,
             lambda r: [x.name for x in r.streams] == ["out"])
    o.expect("the streams of shard u32::MAX", o.streams.ListStreams,
             R.ListStreamsRequest(shard=U32, job="outside"), C.NOT_FOUND)
    o.expect("deleting a stream that is not there", o.streams.DeleteStream,
             R.DeleteStreamRequest(job="outside", stream="nope"), C.NOT_FOUND)
    o.expect("deleting a stream of shard u32::MAX", o.streams.DeleteStream,
             R.DeleteStreamRequest(shard=U32, job="outside", stream="out"), C.NOT_FOUND)

    # Bytes that are not the message they claim to be: a string that is not
    # UTF-8, a field cut short. tonic refuses them as gRPC's status-code
    # table says a server refuses a request it cannot parse (INTERNAL),
    # before any handler runs. A field no version defines is skipped.
    get = "/streamshield.v1.State/Get"
    good = S.GetRequest(job="outside", state="s", key=b"k").SerializeToString()
    o.raw("a job name that is not UTF-8", get, b"\x12\x02\xff\xfe", C.INTERNAL)
    o.raw("a field cut short", get, b"\x12\x10out", C.INTERNAL)
    o.raw("a field no version defines", get, good + b"\xf8\x06\x01", C.OK)

    # Nothing a refusal touched changed.
    job = o.expect("the job", o.admin.DescribeJob, A.DescribeJobRequest(job="outside"), C.OK)
    tables = [t.name for t in job.job.states]
    if tables != ["s"]:
        o.misses.append(f"the job's tables changed: {tables[:5]}... ({len(tables)})")
    kv = o.expect("the key", o.state.Get, S.GetRequest(job="outside", state="s", key=b"k"), C.OK)
    if kv.kv.value != b"v" or kv.kv.version != 1:
        o.misses.append(f"the key changed: {repr(kv.kv)[:200]}")
    for name in ["wide", "a\0b"]:
        o.expect(f"no job {name!r}", o.admin.DescribeJob, A.DescribeJobRequest(job=name),
                 C.NOT_FOUND if name == "wide" else C.INVALID_ARGUMENT)
    for e in o.endpoints:
        o.expect(f"node at {e} answers", o.g["admin"].AdminStub(o.channel_to(e)).Status, A.StatusRequest(), C.OK)


def run_tls(o, tls_dir):
    """Authentication and authorization as an outsider meets them over TLS:
    o's channel carries the cluster's admin certificate; the others carry
    no certificate, and a bearer token or none."""
    A, S, U, R = o.m["admin"], o.m["state"], o.m["auth"], o.m["raft"]
    auth, raft = o.g["auth"].AuthStub(o.channel), o.g["raft"].RaftStub(o.channel)
    C = grpc.StatusCode
    ca = open(os.path.join(tls_dir, "ca.pem"), "rb").read()
    anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
    bare = o.channel_to(o.channel_target, anonymous)
    state, admin = o.g["state"].StateStub(bare), o.g["admin"].AdminStub(bare)
    bare_auth, bare_raft = o.g["auth"].AuthStub(bare), o.g["raft"].RaftStub(bare)
    put = S.WriteRequest(job="py", ops=[S.Op(state="s", key=b"k", put=S.Put(value=b"v"))])
    bearer = lambda token: [("authorization", f"Bearer {token}")]

    o.expect("a job, as admin", o.admin.CreateJob, A.CreateJobRequest(job="py", key_groups=4), C.OK)
    o.expect("another job, as admin", o.admin.CreateJob, A.CreateJobRequest(job="other", key_groups=4), C.OK)
    made = o.expect("a token, as admin", auth.CreateToken, U.CreateTokenRequest(principal="py-bot"), C.OK)
    token = made.token
    o.expect("no certificate and no token", state.Write, put, C.UNAUTHENTICATED)
    o.expect("a token the cluster never made", state.Write, put, C.UNAUTHENTICATED,
             metadata=bearer("not-a-token"))
    o.expect("a scheme other than Bearer", state.Write, put, C.UNAUTHENTICATED,
             metadata=[("authorization", f"Basic {token}")])
    o.expect("who a token is", bare_auth.WhoAmI, U.WhoAmIRequest(), C.OK,
             lambda r: (r.principal, r.authenticated_by, r.superuser) == ("py-bot", "token", False),
             metadata=bearer(token))
    o.expect("a token without a grant writes", state.Write, put, C.PERMISSION_DENIED, metadata=bearer(token))
    o.expect("a grant, as admin", auth.GrantRole,
             U.GrantRequest(grant=U.Grant(principal="py-bot", role=U.ACCESS_ROLE_WRITER, job="py")), C.OK)
    o.expect("the writer writes its job", state.Write, put, C.OK, metadata=bearer(token))
    o.expect("the writer writes another job", state.Write,
             S.WriteRequest(job="other", ops=[S.Op(state="s", key=b"k", put=S.Put(value=b"v"))]),
             C.PERMISSION_DENIED, metadata=bearer(token))
    o.expect("the writer makes a job", admin.CreateJob, A.CreateJobRequest(job="mine"), C.PERMISSION_DENIED,
             metadata=bearer(token))
    o.expect("the writer grants itself admin", bare_auth.GrantRole, U.GrantRequest(grant=U.Grant(principal="py-bot", role=U.ACCESS_ROLE_ADMIN)),
             C.PERMISSION_DENIED, metadata=bearer(token))
    o.expect("an admin certificate on the Raft port", raft.Vote, R.VoteRequest(), C.PERMISSION_DENIED)
    o.expect("a token on the Raft port", bare_raft.Vote, R.VoteRequest(), C.UNAUTHENTICATED, metadata=bearer(token))
    o.expect("the writer lists the jobs it may read", admin.ListJobs, A.ListJobsRequest(), C.OK,
             lambda r: [j.job for j in r.jobs] == ["py"], metadata=bearer(token))
    o.expect("the writer deletes its job", admin.DeleteJob, A.DeleteJobRequest(job="py", force=True),
             C.PERMISSION_DENIED, metadata=bearer(token))
    save = lambda req, timeout=None, metadata=None: list(admin.SaveSnapshot(req, timeout=timeout, metadata=metadata))
    o.expect("the writer saves the cluster's snapshot", save, A.SaveSnapshotRequest(), C.PERMISSION_DENIED,
             metadata=bearer(token))
    o.expect("no job made by the writer", o.admin.DescribeJob, A.DescribeJobRequest(job="mine"), C.NOT_FOUND)
    o.expect("nothing written to the other job", o.state.Get,
             S.GetRequest(job="other", state="s", key=b"k"), C.NOT_FOUND)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proto-dir", required=True)
    p.add_argument("--endpoints", required=True, help="host:port,host:port,...")
    p.add_argument("--tls-dir", help="a TLS cluster's ca.pem, admin.pem and admin-key.pem "
                   "(`streamshield local up --tls`): run the authentication cases instead")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        generate(args.proto_dir, out)
        if args.tls_dir:
            read = lambda name: open(os.path.join(args.tls_dir, name), "rb").read()
            admin = grpc.ssl_channel_credentials(
                root_certificates=read("ca.pem"), private_key=read("admin-key.pem"),
                certificate_chain=read("admin.pem"))
            o = Outsider(args.endpoints.split(","), admin)
            run_tls(o, args.tls_dir)
        else:
            o = Outsider(args.endpoints.split(","))
            run(o)
    if o.misses:
        print(f"{len(o.misses)} case(s) missed:", *o.misses, sep="\n  ")
        sys.exit(1)
    print("every case got its status")


if __name__ == "__main__":
    main()
