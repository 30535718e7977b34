//! systemd readiness notification (`Type=notify`): sends `READY=1` once the listeners
//! serve and `STOPPING=1` when shutdown starts, as one datagram to `$NOTIFY_SOCKET`.
//!
//! Written against the documented protocol instead of linking libsystemd: a path, or
//! an abstract socket name when it starts with `@`. Without `$NOTIFY_SOCKET` (not run
//! by systemd) it does nothing.

use std::os::unix::net::UnixDatagram;

/// The service is up: every listener accepts connections.
pub(crate) const READY: &str = "READY=1";
/// The service began its graceful shutdown.
pub(crate) const STOPPING: &str = "STOPPING=1";

/// Sends `state` to the service manager, if there is one. A failure is logged and
/// otherwise ignored: the relay works without systemd.
pub(crate) fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&target, state) {
        tracing::warn!("cannot notify systemd ({state}) at {}: {e}", target.to_string_lossy());
    }
}

fn send(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        send_abstract(&socket, name, state)
    } else {
        socket.send_to(state.as_bytes(), target).map(|_| ())
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(socket: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_socket: &UnixDatagram, _name: &[u8], _state: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "abstract sockets exist only on Linux"))
}
