//! The key store as a server uses it, against a real sled directory: create, verify,
//! expire, revoke, list, restarts, preconfigured keys, usage, the admin token, and what
//! is (and is not) written to disk.

use std::path::Path;
use std::sync::Arc;

use relay_keystore::{
    AdminToken, ApiKey, ApiKeyArgProblem, CreateOptions, KeyOrigin, KeyStatus, KeyStore, KeystoreError,
    PreconfiguredKey, Usage, VerifyError,
};

const NOW: u64 = 1_700_000_000;
const SEED_KEY: &str = "ABEiM0RVZneImaq7zN3u/w==";

fn open(dir: &Path) -> KeyStore {
    KeyStore::open(dir).expect("open key store")
}

fn never() -> CreateOptions {
    CreateOptions::default()
}

fn until(expires_at: u64) -> CreateOptions {
    CreateOptions { tenant: None, expires_at }
}

fn preconfigured(value: &str) -> PreconfiguredKey {
    PreconfiguredKey::parse(value).expect("valid --api-key value")
}

/// Every byte of every file under `dir`, one buffer per file.
fn files_under(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(std::fs::read(&path).expect("read file"));
        }
    }
    out
}

fn on_disk(dir: &Path, needle: &[u8]) -> bool {
    files_under(dir).iter().any(|file| file.windows(needle.len()).any(|w| w == needle))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn create_verify_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let (key, info) = store.create("backend", until(NOW + 60), NOW).await.expect("create");
    assert_eq!(key.to_base64().len(), 24);
    assert_eq!(info.name, "backend");
    assert_eq!(info.tenant, "backend");
    assert_eq!(info.created_at, NOW);
    assert_eq!(info.expires_at, NOW + 60);
    assert_eq!(info.revoked_at, None);
    assert_eq!(info.origin, KeyOrigin::Created);
    assert_eq!(info.status(NOW), KeyStatus::Active);

    let caller = store.verify(&key.to_base64(), NOW).expect("verify");
    assert_eq!((caller.name.as_str(), caller.tenant.as_str()), ("backend", "backend"));

    store.create("another", never(), NOW).await.expect("create");
    let names: Vec<String> = store.list().into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["another", "backend"]);
    assert_eq!(store.get("backend"), Some(info));
    assert_eq!(store.get("nobody"), None);
}

#[tokio::test]
async fn refusals_say_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let (key, _) = store.create("k", until(NOW + 10), NOW).await.expect("create");
    let text = key.to_base64();

    assert_eq!(store.verify("AAAAAAAAAAAAAAAAAAAAAA==", NOW), Err(VerifyError::Unknown));
    for malformed in ["", "nope", "ABEiM0RVZneImaq7zN3u/w", &format!(" {text}"), &"A".repeat(10_000)] {
        assert_eq!(store.verify(malformed, NOW), Err(VerifyError::Malformed), "{malformed:?}");
    }
    assert!(store.verify(&text, NOW + 9).is_ok(), "valid until the second before expiry");
    assert_eq!(store.verify(&text, NOW + 10), Err(VerifyError::Expired));
    assert_eq!(store.get("k").expect("k").status(NOW + 10), KeyStatus::Expired);

    let revoked = store.revoke("k", NOW + 5).await.expect("revoke");
    assert_eq!(revoked.revoked_at, Some(NOW + 5));
    assert_eq!(store.verify(&text, NOW + 6), Err(VerifyError::Revoked));
    assert_eq!(store.verify(&text, NOW + 60), Err(VerifyError::Revoked), "revoked wins");
    let again = store.revoke("k", NOW + 7).await.expect("revoking twice is fine");
    assert_eq!(again.revoked_at, Some(NOW + 5), "first revocation time kept");

    assert!(matches!(store.revoke("nobody", NOW).await, Err(KeystoreError::NotFound { .. })));
}

#[tokio::test]
async fn create_refuses_taken_names_bad_names_and_past_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.create("taken", never(), NOW).await.expect("create");
    let err = store.create("taken", never(), NOW).await.expect_err("name taken");
    assert!(matches!(&err, KeystoreError::NameTaken { name } if name == "taken"), "{err:?}");
    store.revoke("taken", NOW).await.expect("revoke");
    assert!(
        matches!(store.create("taken", never(), NOW).await, Err(KeystoreError::NameTaken { .. })),
        "a revoked name stays taken"
    );

    for bad in ["", "has space", "a/b", &"x".repeat(65), "naïve"] {
        assert!(
            matches!(store.create(bad, never(), NOW).await, Err(KeystoreError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    let bad_tenant = CreateOptions { tenant: Some("a b".into()), expires_at: 0 };
    assert!(matches!(store.create("ok", bad_tenant, NOW).await, Err(KeystoreError::InvalidTenant { .. })));
    for past in [NOW - 1, NOW] {
        let err = store.create("late", until(past), NOW).await.expect_err("expiry in the past");
        assert!(matches!(err, KeystoreError::ExpiryInPast { .. }), "{err:?}");
    }
    assert_eq!(store.list().len(), 1, "refused creates leave nothing behind");
}

#[tokio::test]
async fn keys_of_one_tenant_share_its_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let shared = || CreateOptions { tenant: Some("wallet".into()), expires_at: 0 };
    let (phone, _) = store.create("wallet-phone", shared(), NOW).await.expect("create");
    let (backend, _) = store.create("wallet-backend", shared(), NOW).await.expect("create");
    let (other, _) = store.create("other", never(), NOW).await.expect("create");
    let tenant = |k: &ApiKey| store.verify(&k.to_base64(), NOW).expect("verify").tenant;
    assert_eq!(tenant(&phone), "wallet");
    assert_eq!(tenant(&backend), "wallet");
    assert_eq!(tenant(&other), "other");
}

#[tokio::test]
async fn restart_keeps_keys_expiry_revocation_and_usage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (kept, gone, expiring) = {
        let store = open(dir.path());
        let (kept, _) = store.create("kept", never(), NOW).await.expect("create");
        let (gone, _) = store.create("gone", never(), NOW).await.expect("create");
        let shared = CreateOptions { tenant: Some("team".into()), expires_at: NOW + 100 };
        let (expiring, _) = store.create("expiring", shared, NOW).await.expect("create");
        store.revoke("gone", NOW + 1).await.expect("revoke");
        store.record_usage("kept", 3, 300, 1).expect("usage");
        store.record_usage("kept", 2, 200, 0).expect("usage");
        assert_eq!(store.flush_usage().await.expect("flush usage"), 1);
        assert_eq!(store.flush_usage().await.expect("nothing new"), 0);
        (kept, gone, expiring)
    };

    let store = open(dir.path());
    assert_eq!(store.verify(&kept.to_base64(), NOW + 50).expect("kept").name, "kept");
    assert_eq!(store.verify(&gone.to_base64(), NOW + 50), Err(VerifyError::Revoked));
    assert_eq!(store.verify(&expiring.to_base64(), NOW + 50).expect("valid").tenant, "team");
    assert_eq!(store.verify(&expiring.to_base64(), NOW + 100), Err(VerifyError::Expired));
    assert_eq!(store.get("gone").expect("gone").revoked_at, Some(NOW + 1));
    assert_eq!(store.get("kept").expect("kept").usage, Usage { messages: 5, bytes: 500, rooms: 1 });
    assert_eq!(store.list().len(), 3);
}

#[tokio::test]
async fn usage_counts_in_memory_and_is_written_on_drop_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        store.create("k", never(), NOW).await.expect("create");
        store.record_usage("k", 1, 10, 0).expect("usage");
        assert_eq!(store.get("k").expect("k").usage.bytes, 10, "visible before a flush");
        assert!(matches!(store.record_usage("nobody", 1, 1, 1), Err(KeystoreError::NotFound { .. })));
        store.record_usage("k", u64::MAX, 0, 0).expect("saturates, no panic");
    }
    let store = open(dir.path());
    assert_eq!(store.get("k").expect("k").usage, Usage { messages: u64::MAX, bytes: 10, rooms: 0 });
}

#[tokio::test]
async fn preconfigured_keys_never_expire_and_follow_the_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = preconfigured(&format!("{SEED_KEY},AdminKey"));
    {
        let store = open(dir.path());
        let infos = store.preconfigure(std::slice::from_ref(&seed), NOW).await.expect("preconfigure");
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].origin, KeyOrigin::Preconfigured);
        assert_eq!(infos[0].expires_at, 0);
        let caller = store.verify(SEED_KEY, u64::MAX).expect("never expires");
        assert_eq!((caller.name.as_str(), caller.tenant.as_str()), ("AdminKey", "AdminKey"));
    }
    {
        // Restarted without the flag: the key is kept but refused.
        let store = open(dir.path());
        assert_eq!(store.verify(SEED_KEY, NOW), Err(VerifyError::Unknown));
        store.preconfigure(&[], NOW).await.expect("no flags");
        assert_eq!(store.verify(SEED_KEY, NOW), Err(VerifyError::Unknown));
        let info = store.get("AdminKey").expect("still listed");
        assert!(!info.configured);
        assert_eq!(info.status(NOW), KeyStatus::NotConfigured);
    }
    // Passed again: accepted again, with its first creation time.
    let store = open(dir.path());
    store.preconfigure(&[seed], NOW + 1000).await.expect("preconfigure");
    assert!(store.verify(SEED_KEY, NOW).is_ok());
    assert_eq!(store.get("AdminKey").expect("listed").created_at, NOW);
}

#[tokio::test]
async fn revoked_preconfigured_key_stays_revoked_after_restart_and_preconfigure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = preconfigured(&format!("{SEED_KEY},AdminKey"));
    {
        let store = open(dir.path());
        store.preconfigure(std::slice::from_ref(&seed), NOW).await.expect("preconfigure");
        store.revoke("AdminKey", NOW + 1).await.expect("revoke");
    }
    for _restart in 0..2 {
        let store = open(dir.path());
        let infos = store.preconfigure(std::slice::from_ref(&seed), NOW + 2).await.expect("again");
        assert_eq!(infos[0].revoked_at, Some(NOW + 1));
        assert_eq!(store.verify(SEED_KEY, NOW + 3), Err(VerifyError::Revoked));
    }
    // A new key under the revoked name does not bring the name back either.
    let store = open(dir.path());
    let fresh = ApiKey::generate().expect("random");
    let rotated = PreconfiguredKey { key: fresh.clone(), name: "AdminKey".into() };
    store.preconfigure(&[rotated], NOW + 4).await.expect("accepted, stays revoked");
    assert_eq!(store.verify(&fresh.to_base64(), NOW + 5), Err(VerifyError::Unknown));
    assert_eq!(store.verify(SEED_KEY, NOW + 5), Err(VerifyError::Revoked));
}

#[tokio::test]
async fn preconfigured_key_rotation_replaces_the_old_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.preconfigure(&[preconfigured(&format!("{SEED_KEY},svc"))], NOW).await.expect("first");
    store.record_usage("svc", 1, 1, 1).expect("usage");
    let fresh = ApiKey::generate().expect("random");
    store
        .preconfigure(&[PreconfiguredKey { key: fresh.clone(), name: "svc".into() }], NOW)
        .await
        .expect("rotate");
    assert_eq!(store.verify(SEED_KEY, NOW), Err(VerifyError::Unknown));
    assert_eq!(store.verify(&fresh.to_base64(), NOW).expect("new key").name, "svc");
    drop(store);
    let store = open(dir.path());
    store
        .preconfigure(&[PreconfiguredKey { key: fresh.clone(), name: "svc".into() }], NOW)
        .await
        .expect("same again");
    assert!(store.verify(&fresh.to_base64(), NOW).is_ok());
    assert_eq!(store.get("svc").expect("svc").usage.rooms, 1, "usage kept across rotation");
}

#[tokio::test]
async fn preconfigure_refuses_clashes_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let (created, _) = store.create("web", never(), NOW).await.expect("create");

    let other = ApiKey::generate().expect("random");
    let err = store
        .preconfigure(&[PreconfiguredKey { key: other.clone(), name: "web".into() }], NOW)
        .await
        .expect_err("name of a created key");
    assert!(matches!(err, KeystoreError::PreconfiguredNameConflict { .. }), "{err:?}");

    let err = store
        .preconfigure(&[PreconfiguredKey { key: created.clone(), name: "alias".into() }], NOW)
        .await
        .expect_err("same key under another name");
    assert!(matches!(&err, KeystoreError::DuplicateKey { existing, .. } if existing == "web"));
    assert!(!format!("{err} {err:?}").contains(&created.to_base64()));

    let list = [
        PreconfiguredKey { key: ApiKey::generate().expect("random"), name: "a".into() },
        PreconfiguredKey { key: ApiKey::generate().expect("random"), name: "a".into() },
    ];
    let err = store.preconfigure(&list, NOW).await.expect_err("repeated name");
    assert!(matches!(
        err,
        KeystoreError::ApiKeyArgAt { position: 2, problem: ApiKeyArgProblem::RepeatedName { first: 1 } }
    ));

    // A good value before a clashing one is not written either.
    let good = PreconfiguredKey { key: ApiKey::generate().expect("random"), name: "good".into() };
    let bad = PreconfiguredKey { key: other, name: "web".into() };
    assert!(store.preconfigure(&[good, bad], NOW).await.is_err());
    assert_eq!(store.get("good"), None);
    assert_eq!(store.list().len(), 1);

    // The created key's own value under its own name is accepted.
    store
        .preconfigure(&[PreconfiguredKey { key: created.clone(), name: "web".into() }], NOW)
        .await
        .expect("same key, same name");
    assert!(store.verify(&created.to_base64(), NOW).is_ok());
}

#[tokio::test]
async fn only_digests_are_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = AdminToken::new("operator-chosen-admin-token").expect("token");
    let (created, generated_token) = {
        let store = open(dir.path());
        let (created, _) = store.create("created-key", never(), NOW).await.expect("create");
        store.preconfigure(&[preconfigured(&format!("{SEED_KEY},seed-key"))], NOW).await.expect("pre");
        store.set_admin_token(&token).await.expect("set admin token");
        store.record_usage("created-key", 1, 1, 1).expect("usage");
        store.flush_usage().await.expect("flush");
        let generated = AdminToken::generate().expect("random");
        store.set_admin_token(&generated).await.expect("set generated token");
        (created, generated)
    };
    let seed = ApiKey::parse(SEED_KEY).expect("seed key");
    for key in [&created, &seed] {
        assert!(!on_disk(dir.path(), key.as_bytes()), "raw key bytes on disk");
        assert!(!on_disk(dir.path(), key.to_base64().as_bytes()), "base64 key on disk");
        // The scan does see stored data: the digest is there.
        assert!(on_disk(dir.path(), sha256_hex(key.as_bytes()).as_bytes()), "digest missing");
    }
    for t in [&token, &generated_token] {
        assert!(!on_disk(dir.path(), t.as_str().as_bytes()), "admin token on disk");
    }
    use sha2::Digest as _;
    let generated_digest = sha2::Sha256::digest(generated_token.as_str().as_bytes());
    assert!(on_disk(dir.path(), &generated_digest[..]), "admin token digest missing");

    let store = open(dir.path());
    assert!(store.verify_admin_token(generated_token.as_str()));
    assert!(!store.verify_admin_token(token.as_str()), "replaced token no longer valid");
}

#[tokio::test]
async fn admin_token_start_up_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = {
        let store = open(dir.path());
        assert!(!store.has_admin_token());
        assert!(!store.verify_admin_token(""), "no token: nothing verifies");
        let first = store.ensure_admin_token(None).await.expect("ensure").expect("generated at first start");
        assert!(store.has_admin_token());
        assert!(store.verify_admin_token(first.as_str()));
        assert!(!store.verify_admin_token("wrong"));
        assert!(!store.verify_admin_token(&first.as_str()[1..]));
        first
    };
    {
        let store = open(dir.path());
        assert_eq!(store.ensure_admin_token(None).await.expect("ensure"), None, "printed only once");
        assert!(store.verify_admin_token(first.as_str()));
    }
    let chosen = AdminToken::new("my-secret-auth").expect("token");
    let store = open(dir.path());
    assert_eq!(store.ensure_admin_token(Some(&chosen)).await.expect("ensure"), None);
    assert!(store.verify_admin_token("my-secret-auth"));
    assert!(!store.verify_admin_token(first.as_str()));
}

#[tokio::test]
async fn second_open_of_a_data_dir_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let err = KeyStore::open(dir.path()).expect_err("already open");
    assert!(matches!(err, KeystoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("is a relay-server already running on this data dir"));
    drop(store);
    open(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_verifies_while_keys_are_created_and_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()));
    let mut keys: Vec<(String, String)> = Vec::new();
    for i in 0..20 {
        let name = format!("k{i}");
        let (key, _) = store.create(&name, never(), NOW).await.expect("create");
        keys.push((name, key.to_base64()));
    }
    let keys = Arc::new(keys);
    let verifiers: Vec<_> = (0..4)
        .map(|t| {
            let (store, keys) = (Arc::clone(&store), Arc::clone(&keys));
            std::thread::spawn(move || {
                for round in 0..500 {
                    let (name, key) = &keys[(t + round) % keys.len()];
                    match store.verify(key, NOW) {
                        Ok(caller) => assert_eq!(&caller.name, name),
                        // k0 is revoked concurrently below.
                        Err(VerifyError::Revoked) => assert_eq!(name, "k0"),
                        Err(other) => panic!("{name}: {other:?}"),
                    }
                    store.record_usage(name, 1, 2, 0).expect("usage");
                }
            })
        })
        .collect();
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..5 {
                store.create(&format!("new{i}"), never(), NOW).await.expect("create");
            }
            store.revoke("k0", NOW).await.expect("revoke");
        })
    };
    writer.await.expect("writer task");
    for handle in verifiers {
        handle.join().expect("verifier thread");
    }
    let total: u64 = store.list().iter().map(|k| k.usage.messages).sum();
    assert_eq!(total, 4 * 500);
    assert_eq!(store.list().len(), 25);
}
