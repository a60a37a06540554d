//! The unique-users sketches against a real Redis: every number and every
//! byte string must be what `redis-server` itself produces.
//!
//! Each test starts its own `redis-server` on a free loopback port (no
//! persistence) and kills it when done; the Redis on 6379, if any, is never
//! touched. `redis-server` must be on `PATH` (Debian/Ubuntu: `apt install
//! redis-server`); the checks were written against 7.0.
//!
//! The client is a minimal hand-written RESP one: commands are pipelined in
//! batches, so the ~3.5 million elements added below take a few seconds.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "test: Redis's integer replies here are small non-negative counts and lengths, and a hash is reinterpreted as signed on purpose"
)]

use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use impression_core::uniques::hll::REDIS_SPARSE_MAX_BYTES;
use impression_core::uniques::{EXACT_LIMIT, REDIS_HLL_SEED};
use impression_core::{Hll, UniqueSketch, murmur64a};

// ---------------------------------------------------------------- server --

/// A `redis-server` child process, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Self {
        for _attempt in 0..5 {
            // Another process may grab the port between this probe and
            // Redis's bind; Redis then exits and we try another one.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let spawned = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(std::env::temp_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                    "redis-server is not on PATH: these tests compare with a real \
                     Redis 7.0 (install it, e.g. `apt install redis-server`)"
                ),
                Err(e) => panic!("cannot start redis-server: {e}"),
            };
            let mut server = RedisServer { child, port };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Polls until our server answers; `false` if it exited (port taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = format!("process_id:{}", self.child.id());
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // Another test may have probed the same free port: the server
            // that answers must be our child, not one that won the bind.
            if let Ok(mut conn) = Conn::open(self.port)
                && let Reply::Bulk(Some(info)) = conn.cmd(&[b"INFO".as_slice(), b"server"])
            {
                if String::from_utf8_lossy(&info).lines().any(|l| l == pid) {
                    return true;
                }
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 20 s",
                self.port
            );
            // Polling a starting process, not timing a result.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn conn(&self) -> Conn {
        Conn::open(self.port).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ RESP --

#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    fn int(self) -> i64 {
        match self {
            Reply::Int(n) => n,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    fn bytes(self) -> Vec<u8> {
        match self {
            Reply::Bulk(Some(b)) => b,
            other => panic!("expected a bulk string, got {other:?}"),
        }
    }

    fn ok(self) {
        if let Reply::Error(e) = self {
            panic!("redis error: {e}");
        }
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    /// Commands sent and not yet answered.
    pending: usize,
}

impl Conn {
    fn open(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::with_capacity(1 << 16, stream),
            pending: 0,
        })
    }

    /// Queues a command (pipelined: nothing is read).
    fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        write!(self.writer, "*{}\r\n", args.len()).unwrap();
        for arg in args {
            let arg = arg.as_ref();
            write!(self.writer, "${}\r\n", arg.len()).unwrap();
            self.writer.write_all(arg).unwrap();
            self.writer.write_all(b"\r\n").unwrap();
        }
        self.pending += 1;
    }

    /// Answers to every queued command, in order.
    fn replies(&mut self) -> Vec<Reply> {
        self.writer.flush().unwrap();
        let n = std::mem::take(&mut self.pending);
        (0..n).map(|_| self.read()).collect()
    }

    fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        self.send(args);
        let mut replies = self.replies();
        replies.pop().unwrap()
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading from redis-server: {e}"));
        assert!(line.ends_with("\r\n"), "truncated RESP line {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    fn read(&mut self) -> Reply {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Reply::Simple(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let len: i64 = rest.parse().unwrap();
                if len < 0 {
                    return Reply::Bulk(None);
                }
                let mut buf = vec![0; len as usize + 2];
                self.reader.read_exact(&mut buf).unwrap();
                buf.truncate(len as usize);
                Reply::Bulk(Some(buf))
            }
            "*" => {
                let len: i64 = rest.parse().unwrap();
                Reply::Array((0..len.max(0)).map(|_| self.read()).collect())
            }
            _ => panic!("unexpected RESP line {line:?}"),
        }
    }
}

// ------------------------------------------------------------- test data --

/// SplitMix64: a deterministic stream, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `n` distinct user ids of varied length (3 to ~30 bytes, so every
/// `MurmurHash` tail length occurs): a unique counter prefix, then random hex.
fn ids(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let r = rng.next();
            let hex = format!("{r:016x}");
            let take = (r >> 59) as usize % 17;
            format!("{i:x}-{}", &hex[..take]).into_bytes()
        })
        .collect()
}

/// `PFADD key` of all `ids`, many elements a command.
fn pfadd_all(conn: &mut Conn, key: &str, ids: &[Vec<u8>]) {
    for chunk in ids.chunks(1000) {
        let mut args: Vec<&[u8]> = vec![b"PFADD", key.as_bytes()];
        args.extend(chunk.iter().map(Vec::as_slice));
        conn.send(&args);
    }
    for reply in conn.replies() {
        reply.ok();
    }
}

/// Checks our string against `GET key` taken right after `PFCOUNT key`
/// (so both caches hold the count). The registers must always be equal.
/// The bytes must be equal when both chose the same encoding; Redis may
/// already be dense when the sparse string is within a few bytes of
/// `hll-sparse-max-bytes` (its check runs before merging opcodes, on a
/// string whose `VAL` split depends on insertion order), never otherwise.
/// Returns whether the encodings differed.
fn check_bytes(ours: &Hll, redis: &[u8], what: &str) -> bool {
    let parsed = Hll::from_redis_bytes(redis).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(&parsed, ours, "{what}: registers differ from Redis's");
    let bytes = ours.to_redis_bytes();
    if bytes[4] == redis[4] {
        assert!(bytes == redis, "{what}: HLL strings differ from GET");
        return false;
    }
    assert_eq!(
        (bytes[4], redis[4]),
        (1, 0),
        "{what}: Redis sparse while we are dense"
    );
    assert!(
        bytes.len() > REDIS_SPARSE_MAX_BYTES - 16,
        "{what}: Redis went dense with our sparse string at {} bytes",
        bytes.len()
    );
    true
}

// ----------------------------------------------------------------- tests --

/// Redis's registers for single elements of every length 0..=40, random
/// bytes included: checks MurmurHash64A and the register/rank split on
/// binary input.
#[test]
fn single_elements_set_the_same_register() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let mut rng = Rng(42);
    let mut elements = Vec::new();
    for len in 0..=40 {
        for _ in 0..25 {
            let e: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            elements.push(e);
        }
    }
    for (i, e) in elements.iter().enumerate() {
        let key = format!("one:{i}");
        conn.send(&[b"PFADD".as_slice(), key.as_bytes(), e]);
        conn.send(&[b"GET".as_slice(), key.as_bytes()]);
    }
    let replies = conn.replies();
    for (e, pair) in elements.iter().zip(replies.chunks(2)) {
        let redis = Hll::from_redis_bytes(&pair[1].clone().bytes()).unwrap();
        let mut ours = Hll::new();
        ours.insert(e);
        assert_eq!(redis, ours, "element {e:?}");
        let (index, rank) = impression_core::uniques::hll::pattern(murmur64a(e, REDIS_HLL_SEED));
        assert_eq!(redis.register(index), Some(rank), "element {e:?}");
    }
}

/// After each of the first 2,000 distinct ids (3 seeds): our count equals
/// `PFCOUNT`, the sketch is exact up to 128, and our HLL string equals
/// `GET` (sparse through the promotion, then dense).
#[test]
fn every_size_up_to_2000_matches_pfcount_and_get() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let mut encodings_differed = 0;
    for seed in [1, 2, 3] {
        let key = format!("grow:{seed}");
        let ids = ids(seed, 2000);
        for id in &ids {
            conn.send(&[b"PFADD".as_slice(), key.as_bytes(), id]);
            conn.send(&[b"PFCOUNT".as_slice(), key.as_bytes()]);
            conn.send(&[b"GET".as_slice(), key.as_bytes()]);
        }
        let replies = conn.replies();
        let mut hll = Hll::new();
        let mut sketch = UniqueSketch::new();
        for (n, (id, r)) in ids.iter().zip(replies.chunks(3)).enumerate() {
            let n = n + 1;
            let pfcount = r[1].clone().int() as u64;
            let changed = hll.insert(id);
            assert_eq!(
                r[0],
                Reply::Int(changed.into()),
                "seed {seed}, {n} ids: PFADD reply"
            );
            sketch.insert(id);
            assert_eq!(hll.count(), pfcount, "seed {seed}, {n} ids");
            let expected = if n <= EXACT_LIMIT { n as u64 } else { pfcount };
            assert_eq!(sketch.count(), expected, "seed {seed}, {n} ids: sketch");
            let what = format!("seed {seed}, {n} ids");
            if check_bytes(&hll, &r[2].clone().bytes(), &what) {
                encodings_differed += 1;
            }
        }
        assert!(hll.to_redis_bytes()[4] == 0, "2,000 ids are dense in Redis");
    }
    eprintln!("sizes where Redis was dense and we sparse: {encodings_differed}");
}

/// 10k, 100k and 1M distinct ids, 4 seeds: count equals `PFCOUNT`, strings
/// equal `GET`, and at 1M the estimate is within 3% of the truth.
#[test]
fn large_sizes_match_pfcount_and_stay_accurate() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let sizes = [10_000, 100_000, 1_000_000];
    for seed in [11, 12, 13, 14] {
        let key = format!("large:{seed}");
        let all = ids(seed, 1_000_000);
        let mut hll = Hll::new();
        let mut sketch = UniqueSketch::new();
        let mut done = 0;
        for n in sizes {
            pfadd_all(&mut conn, &key, &all[done..n]);
            for id in &all[done..n] {
                hll.insert(id);
                sketch.insert(id);
            }
            done = n;
            let pfcount = conn.cmd(&[b"PFCOUNT".as_slice(), key.as_bytes()]).int() as u64;
            assert_eq!(hll.count(), pfcount, "seed {seed}, {n} ids");
            assert_eq!(sketch.count(), pfcount, "seed {seed}, {n} ids: sketch");
            let get = conn.cmd(&[b"GET".as_slice(), key.as_bytes()]).bytes();
            check_bytes(&hll, &get, &format!("seed {seed}, {n} ids"));
        }
        let error = (hll.count() as f64 - 1e6).abs() / 1e6;
        assert!(error < 0.03, "seed {seed}: {:.2}% off at 1M", error * 100.0);
        eprintln!(
            "seed {seed}: 1M ids counted as {} ({:+.3}%)",
            hll.count(),
            (hll.count() as f64 / 1e6 - 1.0) * 100.0
        );
    }
}

/// Unions of 2 to 5 sketches (sparse and dense, overlapping) equal
/// `PFCOUNT k1 … kn`, and `merge_from` equals `PFMERGE`.
#[test]
fn unions_match_multi_key_pfcount_and_pfmerge() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    // (first id, count) of each part: overlapping ranges of one id stream.
    let shapes = [
        (0, 1),
        (0, 50),
        (30, 700),
        (500, 3_000),
        (2_000, 20_000),
        (0, 60_000),
    ];
    let all = ids(77, 60_000);
    let mut hlls = Vec::new();
    for (k, &(first, count)) in shapes.iter().enumerate() {
        pfadd_all(&mut conn, &format!("part:{k}"), &all[first..first + count]);
        let mut hll = Hll::new();
        for id in &all[first..first + count] {
            hll.insert(id);
        }
        hlls.push(hll);
    }
    let mut combos = 0;
    for mask in 0u32..1 << shapes.len() {
        let members: Vec<usize> = (0..shapes.len()).filter(|k| mask >> k & 1 == 1).collect();
        if !(2..=5).contains(&members.len()) {
            continue;
        }
        combos += 1;
        let keys: Vec<String> = members.iter().map(|k| format!("part:{k}")).collect();
        let mut pfcount: Vec<&[u8]> = vec![b"PFCOUNT"];
        pfcount.extend(keys.iter().map(String::as_bytes));
        let redis = conn.cmd(&pfcount).int() as u64;
        let parts: Vec<&Hll> = members.iter().map(|&k| &hlls[k]).collect();
        assert_eq!(
            Hll::union_count(parts.iter().copied()),
            redis,
            "parts {members:?}"
        );

        let dest = format!("merged:{mask}");
        let mut pfmerge: Vec<&[u8]> = vec![b"PFMERGE", dest.as_bytes()];
        pfmerge.extend(keys.iter().map(String::as_bytes));
        conn.cmd(&pfmerge).ok();
        let count = conn.cmd(&[b"PFCOUNT".as_slice(), dest.as_bytes()]).int() as u64;
        let get = conn.cmd(&[b"GET".as_slice(), dest.as_bytes()]).bytes();
        let mut merged = Hll::new();
        for p in &parts {
            merged.merge_from(p);
        }
        assert_eq!(merged.count(), count, "merge of {members:?}");
        assert_eq!(count, redis, "PFMERGE then PFCOUNT = multi-key PFCOUNT");
        // PFMERGE writes dense as soon as one input is dense, whatever the
        // size: compare registers, and bytes when the encodings agree.
        assert_eq!(
            Hll::from_redis_bytes(&get).unwrap(),
            merged,
            "merge of {members:?}"
        );
        if get[4] == 1 {
            assert_eq!(merged.to_redis_bytes(), get, "merge of {members:?}");
        }
    }
    assert_eq!(combos, 15 + 20 + 15 + 6);
}

/// Records users on the Redis side as the module documentation describes:
/// `PFADD` always; `SADD` of the hash (signed decimal) while the part is
/// exact, and past 128 members the set is dropped and a flag set.
const INSERT_LUA: &str = r"
for i = 1, #ARGV, 2 do
  redis.call('PFADD', KEYS[3], ARGV[i])
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('SADD', KEYS[1], ARGV[i + 1])
    if redis.call('SCARD', KEYS[1]) > 128 then
      redis.call('DEL', KEYS[1])
      redis.call('SET', KEYS[2], '1')
    end
  end
end
return 0
";

/// The union rule in Lua: KEYS are (set, flag, hll) triples.
const COUNT_LUA: &str = r"
local n = #KEYS / 3
local exact = true
for i = 0, n - 1 do
  if redis.call('EXISTS', KEYS[3 * i + 2]) == 1 then exact = false end
end
if exact then
  local sets = {}
  for i = 0, n - 1 do sets[#sets + 1] = KEYS[3 * i + 1] end
  local union = redis.call('SUNION', unpack(sets))
  if #union <= 128 then return #union end
end
local hlls = {}
for i = 0, n - 1 do hlls[#hlls + 1] = KEYS[3 * i + 3] end
return redis.call('PFCOUNT', unpack(hlls))
";

/// A Redis mirror following the documented rule (sets of hashes + HLLs,
/// in Lua) gives the same count as `UniqueSketch` for single sketches and
/// for unions of 1 to 4 of them, across the exact/HLL boundary.
#[test]
fn a_lua_mirror_of_the_rule_gives_the_same_counts() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let shapes = [
        (0, 0),
        (0, 40),
        (20, 60),
        (70, 58),
        (0, 128),
        (100, 29),
        (0, 129),
        (200, 1_000),
        (0, 5_000),
    ];
    let all = ids(99, 5_200);
    let mut sketches = Vec::new();
    for (k, &(first, count)) in shapes.iter().enumerate() {
        let part = &all[first..first + count];
        let keys = [format!("s:{k}"), format!("f:{k}"), format!("h:{k}")];
        for chunk in part.chunks(500) {
            let mut args: Vec<Vec<u8>> = vec![b"EVAL".to_vec(), INSERT_LUA.into(), b"3".to_vec()];
            args.extend(keys.iter().map(|k| k.clone().into_bytes()));
            for id in chunk {
                let hash = murmur64a(id, REDIS_HLL_SEED) as i64;
                args.push(id.clone());
                args.push(hash.to_string().into_bytes());
            }
            conn.send(&args);
        }
        for reply in conn.replies() {
            reply.ok();
        }
        let mut sketch = UniqueSketch::new();
        for id in part {
            sketch.insert(id);
        }
        sketches.push(sketch);
    }
    let n = shapes.len();
    let mut checked = 0;
    for a in 0..n {
        for b in a..=n {
            for c in b..=n {
                for d in c..=n {
                    // Index n means "no part", so 1 to 4 parts, repeats allowed.
                    let members: Vec<usize> = [a, b, c, d].into_iter().filter(|&k| k < n).collect();
                    let mut args: Vec<Vec<u8>> = vec![b"EVAL".to_vec(), COUNT_LUA.into()];
                    args.push((3 * members.len()).to_string().into_bytes());
                    for k in &members {
                        for prefix in ["s", "f", "h"] {
                            args.push(format!("{prefix}:{k}").into_bytes());
                        }
                    }
                    let redis = conn.cmd(&args).int() as u64;
                    let ours = UniqueSketch::union_count(members.iter().map(|&k| &sketches[k]));
                    assert_eq!(ours, redis, "parts {members:?}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 400);
}
