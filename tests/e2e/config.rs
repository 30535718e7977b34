//! Settings from flags, environment and the TOML config file, observed through
//! `--print-config` and a running server; refusals of bad keys and values; and the
//! systemd readiness notification.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::support::*;
use hyper::StatusCode;

fn print_config_table(out: &std::process::Output) -> toml::Table {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    stdout.parse().unwrap_or_else(|e| panic!("--print-config is not TOML ({e}): {stdout}"))
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn flags_win_over_env_which_wins_over_the_file_which_wins_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        r#"
        max_room_size = 7          # file only
        max_rooms = 11             # file, overridden by env
        max_connections = 5        # file, overridden by env and flag
        room_id_prefix = "1a2b3c4d"
        listen = ["127.0.0.1:7001", "127.0.0.1:7002"]
        log_format = "json"
        "#,
    );
    let defaults = print_config_table(&run_binary(&["--print-config"]).await.unwrap());
    let out = run_binary_with_env(
        &["--config", &file, "--max-connections", "7", "--print-config"],
        &[("RELAY_MAX_ROOMS", "22"), ("RELAY_MAX_CONNECTIONS", "6")],
    )
    .await
    .unwrap();
    let effective = print_config_table(&out);

    assert_eq!(effective["max_room_size"].as_integer(), Some(7), "file over default");
    assert_eq!(effective["max_rooms"].as_integer(), Some(22), "env over file");
    assert_eq!(effective["max_connections"].as_integer(), Some(7), "flag over env and file");
    assert_eq!(effective["room_id_prefix"].as_str(), Some("1a2b3c4d"));
    assert_eq!(effective["log_format"].as_str(), Some("json"));
    let listen: Vec<&str> =
        effective["listen"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(listen, ["127.0.0.1:7001", "127.0.0.1:7002"]);
    // Untouched settings keep their defaults.
    assert_eq!(effective["send_queue_frames"], defaults["send_queue_frames"]);
    assert_eq!(effective["header_read_timeout_secs"].as_integer(), Some(10));
    assert_eq!(defaults["max_connections"].as_integer(), Some(10_000));

    // The config file flag itself can come from the environment.
    let out = run_binary_with_env(&["--print-config"], &[("RELAY_CONFIG", &file)]).await.unwrap();
    assert_eq!(print_config_table(&out)["max_room_size"].as_integer(), Some(7));
}

#[tokio::test]
async fn print_config_output_is_a_valid_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(&["--print-config", "--max-room-size", "9", "--room-id-prefix", "0a1b2c3d"])
        .await
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let file = write_config(&dir, &printed);
    let again = run_binary(&["--config", &file, "--print-config"]).await.unwrap();
    assert_eq!(
        String::from_utf8(again.stdout).unwrap(),
        printed,
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[tokio::test]
async fn the_server_runs_with_settings_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(&dir, "insecure_api_keys_not_enforced = true\nlisten = [\"127.0.0.1:0\"]\n");
    let relay = RelayProcess::start(&["--config", &file]).await.unwrap();
    let resp = http_request(relay.addr, "GET", "/healthz", &[], b"").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_key_in_the_file_exits_2_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(&dir, "max_room_size = 4\nmax_romo_size = 5\n");
    let out = run_binary(&["--config", &file, "--insecure-api-keys-not-enforced"]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("max_romo_size") && stderr.contains(&file), "{stderr}");
}

#[tokio::test]
async fn bad_values_exit_2_naming_the_key_or_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("max_rooms = \"many\"", "max_rooms"),
        ("room_id_prefix = \"XYZ\"", "room_id_prefix"),
        ("max_room_size = [3, 4]", "max_room_size"),
        ("log_format = \"xml\"", "log_format"),
        ("insecure_api_keys_not_enforced = \"yes\"", "insecure_api_keys_not_enforced"),
        ("max_connections = 0", "max_connections"),
        ("busy_poll_us = 10001", "busy_poll_us"),
        ("max_rooms = ", "not valid TOML"),
    ] {
        let file = write_config(&dir, text);
        let out = run_binary(&["--config", &file]).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(key) && stderr.contains(&file), "{text}: {stderr}");
    }

    for (var, value) in [
        ("RELAY_MAX_ROOMS", "many"),
        ("RELAY_ROOM_ID_PREFIX", "XYZ"),
        ("RELAY_LOG_FORMAT", "xml"),
        ("RELAY_BUSY_POLL_US", "20000"),
    ] {
        let out = run_binary_with_env(&["--insecure-api-keys-not-enforced"], &[(var, value)]).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(stderr.contains(var), "{var}: {stderr}");
    }

    let missing = dir.path().join("absent.toml");
    let out = run_binary(&["--config", missing.to_str().unwrap()]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(missing.to_str().unwrap()));
}

/// Receives one datagram from `socket` within the step timeout.
async fn recv_notification(socket: &UnixDatagram) -> String {
    let socket = socket.try_clone().unwrap();
    let got = tokio::task::spawn_blocking(move || {
        socket.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification within the step timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    got.await.unwrap()
}

#[tokio::test]
async fn systemd_is_told_ready_after_listening_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut relay = RelayProcess::start_with_env(
        &["--insecure-api-keys-not-enforced"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    )
    .await
    .unwrap();
    assert_eq!(recv_notification(&socket).await, "READY=1");
    let resp = http_request(relay.addr, "GET", "/healthz", &[], b"").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    relay.signal(15);
    assert_eq!(recv_notification(&socket).await, "STOPPING=1");
    assert!(relay.wait_exit(Duration::from_secs(10)).await.unwrap().success());
}

#[tokio::test]
async fn systemd_abstract_notify_socket_is_supported() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("relay-e2e-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    let _relay = RelayProcess::start_with_env(
        &["--insecure-api-keys-not-enforced"],
        &[("NOTIFY_SOCKET", format!("@{name}").as_str())],
    )
    .await
    .unwrap();
    assert_eq!(recv_notification(&socket).await, "READY=1");
}

#[tokio::test]
async fn relay_toml_example_is_valid_and_lists_every_key() {
    let example_path = crate::support::repo_file("contrib/relay.toml.example");
    let example = std::fs::read_to_string(&example_path).unwrap();
    // Every key is commented out with its default; uncommented, the file must load.
    let uncommented: String = example
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                }) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(&dir, &uncommented);
    let out = run_binary(&["--config", &file, "--print-config"]).await.unwrap();
    let effective = print_config_table(&out);
    let example_keys: std::collections::BTreeSet<String> =
        uncommented.parse::<toml::Table>().unwrap().keys().cloned().collect();
    // --print-config lists every setting, set or not.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut all_keys: std::collections::BTreeSet<String> = effective.keys().cloned().collect();
    all_keys.extend(
        stdout.lines().filter_map(|l| l.strip_prefix("# ")?.strip_suffix(" is not set")).map(str::to_owned),
    );
    assert_eq!(example_keys, all_keys, "contrib/relay.toml.example must show every setting");
}
