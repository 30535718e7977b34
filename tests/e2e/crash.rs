//! Crash safety of the real binary: SIGKILL at random moments while a client streams
//! group writes (creates and deletes), then a restart on the same data dir, many
//! times over. After every restart each acknowledged create is there and each
//! acknowledged delete stays gone; a write cut off by the kill may land or not.
//! Storage that cannot be used (the data dir is a file, sits under a file, is locked
//! by a running relay, or is read-only where that can be enforced) stops the binary at
//! start with a clear error and no panic.
//!
//! The random moments come from a seed printed at the start; rerun one with
//! `CRASH_SEED=<seed> cargo nextest run -p relay-server -E 'binary(e2e) & test(/^crash::/)' --no-capture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{RelayProcess, STEP_TIMEOUT, http_request, post_json, run_binary};
use hyper::StatusCode;
use serde_json::{Value, json};

const OPEN: &str = "--insecure-api-keys-not-enforced";
const APP: &str = "crash-test";

/// A small xorshift generator: the test needs reproducible random delays, not quality.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        eprintln!("crash: CRASH_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the client knows was acknowledged, and what may or may not have landed.
#[derive(Default)]
struct Acked {
    /// Created and acknowledged, not (acknowledged or attempted) deleted since.
    present: BTreeSet<String>,
    /// Deleted and acknowledged, not created again since.
    deleted: BTreeSet<String>,
    /// Cut off by the kill: unknown either way until proven.
    unknown: BTreeSet<String>,
    /// Acknowledged writes, all cycles.
    writes: usize,
    /// Writes cut off by a kill that turned out to have landed, and that had not.
    cut_landed: usize,
    cut_lost: usize,
}

async fn start(data_dir: &Path) -> RelayProcess {
    RelayProcess::start(&[OPEN, "--data-dir", data_dir.to_str().unwrap(), "--group-ttl", "1h"])
        .await
        .expect("the relay restarts on the data dir it was killed on")
}

/// The IDs of the test's groups the relay has now.
async fn stored_ids(relay: &RelayProcess) -> BTreeMap<String, Value> {
    let resp = http_request(relay.addr, "GET", &format!("/groups?app-id={APP}"), &[], b"").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let groups = resp.json();
    groups.as_object().expect("groups object").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Writes until the relay dies: creates new groups and deletes acknowledged ones,
/// recording each acknowledgement as it arrives.
async fn write_until_killed(addr: std::net::SocketAddr, cycle: usize, acked: Arc<Mutex<Acked>>) {
    for n in 0.. {
        let delete = {
            let a = acked.lock().unwrap();
            // Every third write deletes the oldest acknowledged group, if any.
            if n % 3 == 2 { a.present.iter().next().cloned() } else { None }
        };
        match delete {
            Some(id) => {
                {
                    let mut a = acked.lock().unwrap();
                    a.present.remove(&id);
                    a.unknown.insert(id.clone());
                }
                let Ok(resp) = http_request(addr, "DELETE", &format!("/groups/{id}"), &[], b"").await else {
                    return;
                };
                assert_eq!(resp.status, StatusCode::OK, "delete {id}: {}", resp.text());
                let mut a = acked.lock().unwrap();
                a.unknown.remove(&id);
                a.deleted.insert(id);
                a.writes += 1;
            }
            None => {
                let id = format!("c{cycle}-{n}");
                acked.lock().unwrap().unknown.insert(id.clone());
                let body = json!({"ID": id, "Name": "crash", "AppID": APP, "Peers": [{"NetAddr": "10.0.0.1:1", "PubKeyHex": "ab", "Moniker": "m"}]});
                let Ok(resp) = post_json(addr, "/group", &[], &body).await else { return };
                assert_eq!(resp.status, StatusCode::CREATED, "create {id}: {}", resp.text());
                let mut a = acked.lock().unwrap();
                a.unknown.remove(&id);
                a.present.insert(id);
                a.writes += 1;
            }
        }
    }
}

async fn kill_cycles(cycles: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::from_env();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let started = std::time::Instant::now();
    for cycle in 0..cycles {
        let mut relay = start(dir.path()).await;
        check(&relay, &acked).await;
        let writer = tokio::spawn(write_until_killed(relay.addr, cycle, acked.clone()));
        tokio::time::sleep(Duration::from_millis(20 + rng.below(300))).await;
        relay.signal(9);
        relay.wait_exit(STEP_TIMEOUT).await.unwrap();
        tokio::time::timeout(STEP_TIMEOUT, writer).await.expect("the writer stops with the relay").unwrap();
    }
    let relay = start(dir.path()).await;
    check(&relay, &acked).await;
    let a = acked.lock().unwrap();
    eprintln!(
        "crash: {cycles} kill -9 cycles in {:?}: {} acknowledged writes ({} groups present, {} deleted at the end); \
         {} writes cut off by a kill, of which {} had landed",
        started.elapsed(),
        a.writes,
        a.present.len(),
        a.deleted.len(),
        a.cut_landed + a.cut_lost,
        a.cut_landed
    );
    assert!(a.writes >= cycles, "too few writes ({}) to mean anything", a.writes);
}

/// Every acknowledged create is stored whole, every acknowledged delete stays gone;
/// writes cut off by the kill are settled by what the relay has now.
async fn check(relay: &RelayProcess, acked: &Mutex<Acked>) {
    let stored = stored_ids(relay).await;
    let mut a = acked.lock().unwrap();
    for id in &a.present {
        let group = stored.get(id).unwrap_or_else(|| panic!("acknowledged group {id} lost after kill -9"));
        assert_eq!(group["Peers"][0]["Moniker"], "m", "group {id} stored whole: {group}");
    }
    for id in &a.deleted {
        assert!(!stored.contains_key(id), "acknowledged delete of {id} undone after kill -9");
    }
    for id in std::mem::take(&mut a.unknown) {
        if stored.contains_key(&id) {
            a.cut_landed += 1;
            a.present.insert(id);
        } else {
            a.cut_lost += 1;
            a.deleted.insert(id);
        }
    }
    for id in stored.keys() {
        assert!(a.present.contains(id), "group {id} appeared without being written");
    }
}

/// 50 kill -9 cycles during a stream of group creates and deletes.
#[tokio::test]
async fn acknowledged_group_writes_survive_50_kill_9_cycles() {
    kill_cycles(50).await;
}

/// A data dir that cannot be used stops the binary at start: exit status non-zero, a
/// message naming the directory, and no panic.
#[tokio::test]
async fn unusable_data_dirs_stop_the_binary_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let under_file = file.join("data");
    let mut cases = vec![("a regular file", file.clone()), ("a path under a file", under_file)];

    // Read-only: only meaningful where permissions bind (not as root).
    let ro = tmp.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(&ro, perms).unwrap();
    if std::fs::write(ro.join("probe"), b"x").is_err() {
        cases.push(("a read-only directory", ro.join("data")));
    } else {
        eprintln!(
            "storage: running privileged, chmod 555 does not stop writes: read-only case not exercised"
        );
    }

    for (what, path) in cases {
        let out = run_binary(&[OPEN, "--listen", "127.0.0.1:0", "--data-dir", path.to_str().unwrap()])
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started on {what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(stderr.contains(path.to_str().unwrap()), "{what}: the error names the directory: {stderr}");
    }

    // Locked by a running relay: the second one refuses the directory; the first serves on.
    let shared = tmp.path().join("shared");
    let first = start(&shared).await;
    let out =
        run_binary(&[OPEN, "--listen", "127.0.0.1:0", "--data-dir", shared.to_str().unwrap()]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second relay started on a locked data dir: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(shared.to_str().unwrap()), "the error names the directory: {stderr}");
    let resp =
        post_json(first.addr, "/group", &[], &json!({"ID": "still-works", "AppID": APP})).await.unwrap();
    assert_eq!(resp.status, StatusCode::CREATED);
}

/// What the client knows of the keys it created and revoked.
#[derive(Default)]
struct KeysAcked {
    /// Created and acknowledged, with the key; not revoked (or attempted) since.
    active: BTreeMap<String, String>,
    /// Revoked and acknowledged, with the key.
    revoked: BTreeMap<String, String>,
    /// Cut off by the kill: (name, key if the create was answered), either way.
    unknown: BTreeMap<String, Option<String>>,
    writes: usize,
    cut: usize,
    /// Revoked since the last check: each restart checks these, the last one all.
    recent: BTreeSet<String>,
}

const ADMIN_TOKEN: &str = "crash-admin-token-Q1-0123456789abcdef";

async fn start_keyed(data_dir: &Path) -> RelayProcess {
    // The checks after each restart open a connection per key, thousands by the last
    // cycle, from one address: the per-address limits (sized for a public relay) are
    // not what this test is about.
    let args = [
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--secret-auth",
        ADMIN_TOKEN,
        "--rate-limit-connections-per-ip",
        "0",
        "--rate-limit-requests-per-ip",
        "0",
    ];
    RelayProcess::start(&args).await.expect("the relay restarts on the data dir it was killed on")
}

async fn key_status(addr: std::net::SocketAddr, key: &str) -> StatusCode {
    let auth = format!("Bearer {key}");
    http_request(addr, "GET", "/v1/key", &[("authorization", &auth)], b"").await.unwrap().status
}

/// Creates keys and revokes every second acknowledged one until the relay dies.
async fn key_writes_until_killed(addr: std::net::SocketAddr, cycle: usize, acked: Arc<Mutex<KeysAcked>>) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for n in 0.. {
        let revoke = if n % 2 == 1 { acked.lock().unwrap().active.pop_first() } else { None };
        match revoke {
            Some((name, key)) => {
                acked.lock().unwrap().unknown.insert(name.clone(), Some(key.clone()));
                let path = format!("/v1/admin/keys/{name}");
                let Ok(resp) = http_request(addr, "DELETE", &path, &[("authorization", &auth)], b"").await
                else {
                    return;
                };
                assert_eq!(resp.status, StatusCode::OK, "revoke {name}: {}", resp.text());
                let mut a = acked.lock().unwrap();
                a.unknown.remove(&name);
                a.recent.insert(name.clone());
                a.revoked.insert(name, key);
                a.writes += 1;
            }
            None => {
                let name = format!("k{cycle}-{n}");
                acked.lock().unwrap().unknown.insert(name.clone(), None);
                let body = json!({"name": name});
                let Ok(resp) = post_json(addr, "/v1/admin/keys", &[("authorization", &auth)], &body).await
                else {
                    return;
                };
                assert_eq!(resp.status, StatusCode::CREATED, "create {name}: {}", resp.text());
                let key = resp.json()["key"].as_str().unwrap().to_owned();
                let mut a = acked.lock().unwrap();
                a.unknown.remove(&name);
                a.active.insert(name, key);
                a.writes += 1;
            }
        }
    }
}

/// Every acknowledged key works, every acknowledged revocation holds (those since the
/// last check, or `all`); a revocation cut off by the kill is settled by whether the
/// key still works.
async fn check_keys(relay: &RelayProcess, acked: &Mutex<KeysAcked>, all: bool) {
    let (active, revoked, unknown) = {
        let mut a = acked.lock().unwrap();
        let recent = std::mem::take(&mut a.recent);
        let revoked: BTreeMap<String, String> = a
            .revoked
            .iter()
            .filter(|(n, _)| all || recent.contains(*n))
            .map(|(n, k)| (n.clone(), k.clone()))
            .collect();
        (a.active.clone(), revoked, a.unknown.clone())
    };
    for (name, key) in &active {
        assert_eq!(
            key_status(relay.addr, key).await,
            StatusCode::OK,
            "acknowledged key {name} lost after kill -9"
        );
    }
    for (name, key) in &revoked {
        assert_eq!(
            key_status(relay.addr, key).await,
            StatusCode::FORBIDDEN,
            "revoked key {name} works after kill -9"
        );
    }
    // A create cut off before its answer: the key was never seen, so it is lost to the
    // client either way; a cut revocation is settled by the key's status now.
    let mut settled = Vec::new();
    for (name, key) in unknown {
        let status = match &key {
            Some(k) => Some(key_status(relay.addr, k).await),
            None => None,
        };
        settled.push((name, key, status));
    }
    let mut a = acked.lock().unwrap();
    for (name, key, status) in settled {
        a.cut += 1;
        a.unknown.remove(&name);
        let (Some(key), Some(status)) = (key, status) else { continue };
        assert!(matches!(status, StatusCode::OK | StatusCode::FORBIDDEN), "{name}: {status}");
        if status == StatusCode::OK {
            a.active.insert(name, key);
        } else {
            a.revoked.insert(name, key);
        }
    }
}

async fn key_kill_cycles(cycles: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::from_env();
    let acked = Arc::new(Mutex::new(KeysAcked::default()));
    let started = std::time::Instant::now();
    for cycle in 0..cycles {
        let mut relay = start_keyed(dir.path()).await;
        check_keys(&relay, &acked, false).await;
        let writer = tokio::spawn(key_writes_until_killed(relay.addr, cycle, acked.clone()));
        tokio::time::sleep(Duration::from_millis(20 + rng.below(300))).await;
        relay.signal(9);
        relay.wait_exit(STEP_TIMEOUT).await.unwrap();
        tokio::time::timeout(STEP_TIMEOUT, writer).await.expect("the writer stops with the relay").unwrap();
    }
    let relay = start_keyed(dir.path()).await;
    check_keys(&relay, &acked, true).await;
    let a = acked.lock().unwrap();
    eprintln!(
        "crash: {cycles} kill -9 cycles of key writes in {:?}: {} acknowledged ({} keys active, {} revoked at the end), {} cut off",
        started.elapsed(),
        a.writes,
        a.active.len(),
        a.revoked.len(),
        a.cut
    );
    assert!(a.writes >= cycles, "too few writes ({}) to mean anything", a.writes);
}

/// 50 kill -9 cycles during a stream of key creations and revocations.
#[tokio::test]
async fn acknowledged_key_writes_survive_50_kill_9_cycles() {
    key_kill_cycles(50).await;
}
