//! Start-up checks of issue 15's small items, against the real binary: a short
//! `--secret-auth` and out-of-range TTL flags exit 2 naming the flag (never echoing a
//! secret), `--admin-token-file` gets the generated token with mode 0600 and is never
//! overwritten, and `--api-key` takes the key as 32 hex characters too.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use anyhow::Context;
use hyper::StatusCode;

use crate::support::{RelayProcess, STEP_TIMEOUT, http_request, run_binary};

/// The Sodot guide's example key, in hex and in base64: the same 16 bytes.
const HEX_KEY: &str = "00112233445566778899aabbccddeeff";
const B64_KEY: &str = "ABEiM0RVZneImaq7zN3u/w==";

#[tokio::test]
async fn a_secret_auth_shorter_than_32_characters_exits_2_naming_the_flag_not_the_token() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().context("utf-8")?;
    let short = "0123456789abcdefghij0123456789a"; // 31 characters
    let out =
        run_binary(&["--listen", "127.0.0.1:0", "--data-dir", data_dir, "--secret-auth", short]).await?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--secret-auth") && stderr.contains("32 characters"), "{stderr}");
    assert!(!stderr.contains(short) && !stdout.contains(short), "the token was echoed: {stderr}");
    // One more character is enough.
    let token = format!("{short}b");
    let relay = RelayProcess::start(&["--secret-auth", &token]).await?;
    let auth = format!("Bearer {token}");
    let keys = http_request(relay.addr, "GET", "/v1/admin/keys", &[("authorization", &auth)], b"").await?;
    assert_eq!(keys.status, StatusCode::OK, "{}", keys.text());
    Ok(())
}

#[tokio::test]
async fn ttl_flags_past_ten_years_exit_2_naming_the_flag() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().context("utf-8")?;
    let huge = u64::MAX.to_string();
    for flag in ["--max-mailbox-ttl-secs", "--room-ttl-secs", "--max-room-ttl-secs", "--reconnect-grace-secs"]
    {
        let out = run_binary(&["--listen", "127.0.0.1:0", "--data-dir", data_dir, flag, &huge]).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{flag} is named: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn the_generated_admin_token_goes_to_a_0600_file_never_overwritten() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().context("utf-8")?;
    let file = dir.path().join("admin-token");
    let file_arg = file.to_str().context("utf-8")?;
    let relay = RelayProcess::start(&["--data-dir", data_dir, "--admin-token-file", file_arg]).await?;
    let token = std::fs::read_to_string(&file)?.trim_end().to_owned();
    assert_eq!(token.len(), 43, "a generated token: {token:?}");
    assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
    assert!(!relay.output().contains(&token), "the token was printed too");
    let auth = format!("Bearer {token}");
    let keys = http_request(relay.addr, "GET", "/v1/admin/keys", &[("authorization", &auth)], b"").await?;
    assert_eq!(keys.status, StatusCode::OK, "{}", keys.text());
    drop(relay);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A later start on the same data dir keeps the token and leaves the file alone.
    let relay = RelayProcess::start(&["--data-dir", data_dir, "--admin-token-file", file_arg]).await?;
    let keys = http_request(relay.addr, "GET", "/v1/admin/keys", &[("authorization", &auth)], b"").await?;
    assert_eq!(keys.status, StatusCode::OK, "{}", keys.text());
    drop(relay);

    // A first start on a new data dir would have to overwrite the file: refused.
    let fresh = dir.path().join("fresh");
    let fresh = fresh.to_str().context("utf-8")?;
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        run_binary(&["--listen", "127.0.0.1:0", "--data-dir", fresh, "--admin-token-file", file_arg]),
    )
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--admin-token-file") && stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file)?.trim_end(), token, "the file is untouched");
    Ok(())
}

#[tokio::test]
async fn an_api_key_given_as_32_hex_characters_works_in_both_forms() -> anyhow::Result<()> {
    let relay = RelayProcess::start(&["--api-key", &format!("{HEX_KEY},backend")]).await?;
    for presented in [HEX_KEY, &HEX_KEY.to_uppercase(), B64_KEY] {
        let auth = format!("Bearer {presented}");
        let resp = http_request(relay.addr, "GET", "/v1/key", &[("authorization", &auth)], b"").await?;
        assert_eq!(resp.status, StatusCode::OK, "{presented}: {}", resp.text());
        assert_eq!(resp.json()["name"], "backend", "{}", resp.text());
    }
    Ok(())
}
